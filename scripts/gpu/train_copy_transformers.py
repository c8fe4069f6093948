#!/usr/bin/env python3
"""Pretrain a Qwen3 model in Hugging Face transformers and save it as a Hugging Face checkpoint
(config.json, model.safetensors, tokenizer.json) for `andes quantize` and the runtime to read.

scripts/bench/speculative_copy.sh runs this with TRAINER=transformers: the model whose prompt
lookup it measures then comes from the trainer users bring their checkpoints from, and the GPU
machine needs only the CPU build of andes (the CUDA build takes most of an hour on the 2-core
build machine). The data are read as `andes train` reads a `text` file (each line a document
ended by <|endoftext|>, the documents one stream cut into windows of SEQ_LEN + 1 tokens, drawn
in a seeded shuffled order), and the optimizer follows configs/recipes/gpu/pretrain-0.6b.toml
(AdamW with betas 0.9 and 0.95, lr 3e-4 warmed up over 20 steps then cosine to a tenth,
weight decay 0.1 on matrices, gradients clipped at 1.0), in bf16 autocast, on the GPU where
there is one. One JSON line a step goes to OUT/metrics.jsonl.

    train_copy_transformers.py --config CONFIG.json --tokenizer DIR --text FILE --out DIR
        [--steps 3000] [--batch 4] [--seq-len 1024] [--time-limit SECONDS]

--time-limit stops early (the schedule is the one for --steps) and still saves the model.
"""
import argparse
import json
import math
import os
import random
import shutil
import time

import torch
from tokenizers import Tokenizer
from transformers import Qwen3Config, Qwen3ForCausalLM


def windows(text, tokenizer, seq_len):
    """The file's lines as one stream of token ids, each ended by <|endoftext|>, cut into
    consecutive windows of seq_len + 1 ids."""
    end = tokenizer.token_to_id("<|endoftext|>")
    if end is None:
        raise SystemExit(f"{tokenizer}: the tokenizer has no <|endoftext|> token")
    with open(text, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    stream = []
    for encoding in tokenizer.encode_batch(lines, add_special_tokens=False):
        stream.extend(encoding.ids)
        stream.append(end)
    width = seq_len + 1
    count = len(stream) // width
    if count == 0:
        raise SystemExit(f"{text}: {len(stream)} tokens, fewer than one window of {width}")
    return torch.tensor(stream[: count * width], dtype=torch.long).view(count, width)


def learning_rate(step, steps, peak, warmup=20, floor=0.1):
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="a Hugging Face Qwen3 config.json")
    ap.add_argument("--tokenizer", required=True, help="folder with tokenizer.json")
    ap.add_argument("--text", required=True, help="training text, one document a line")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--time-limit", type=float, default=float("inf"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    tokenizer = Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
    data = windows(args.text, tokenizer, args.seq_len)
    config = Qwen3Config.from_json_file(args.config)
    if config.vocab_size < tokenizer.get_vocab_size():
        raise SystemExit(f"{args.config}: vocab_size {config.vocab_size} is smaller than the "
                         f"tokenizer's {tokenizer.get_vocab_size()}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = Qwen3ForCausalLM(config).to(device).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": rest, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95), fused=device == "cuda")
    order = []
    os.makedirs(args.out, exist_ok=True)
    metrics = open(os.path.join(args.out, "metrics.jsonl"), "w")
    start = time.time()
    done = 0
    for step in range(args.steps):
        if time.time() - start > args.time_limit:
            break
        if len(order) < args.batch:
            order += random.sample(range(len(data)), len(data))
        batch = data[[order.pop() for _ in range(args.batch)]].to(device, non_blocking=True)
        lr = learning_rate(step, args.steps, args.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if step % 10 == 0 or step == args.steps - 1:
            metrics.write(json.dumps({"step": done, "loss": loss.item(),
                                      "grad_norm": grad_norm.item(),
                                      "lr": lr, "seconds": time.time() - start}) + "\n")
            metrics.flush()
    elapsed = time.time() - start
    model.save_pretrained(args.out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(args.tokenizer, name)):
            shutil.copy(os.path.join(args.tokenizer, name), args.out)
    tokens = done * args.batch * args.seq_len
    summary = {"steps": done, "tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed,
               "windows": len(data),
               "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    json.dump(summary, open(os.path.join(args.out, "train.json"), "w"))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
