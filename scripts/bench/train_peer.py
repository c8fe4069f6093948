#!/usr/bin/env python3
"""Training-step throughput of transformers' Qwen3ForCausalLM (eager attention) with
torch.optim.AdamW: the peer of `andes bench train`. Same shape, tokens and step.

usage: train_peer.py --config CONFIG.json --device cuda --dtype bfloat16 --seq-len 1024 --batch 4
"""
import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import AutoConfig, Qwen3ForCausalLM


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--attn", default="eager")
    p.add_argument("--out")
    a = p.parse_args()
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(a.config)
    config._attn_implementation = a.attn
    dtype = getattr(torch, a.dtype)
    model = Qwen3ForCausalLM(config).to(dtype).to(a.device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    rows, seq = a.batch, a.seq_len
    ids = (torch.arange(rows * (seq + 1)) * 7919 + 13) % config.vocab_size
    ids = ids.view(rows, seq + 1).to(a.device)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    times = []
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(a.warmup + a.steps):
        if a.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        logits = model(inputs).logits.float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if a.device == "cuda":
            torch.cuda.synchronize()
        if step >= a.warmup:
            times.append(time.perf_counter() - start)
    t = statistics.median(times)
    tokens = rows * seq
    params = sum(p.numel() for p in model.parameters())
    flops = 6 * params * tokens + 12 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * seq * tokens
    report = {
        "peer": f"transformers-{a.attn}+torch.AdamW",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": a.device,
        "gpu_name": torch.cuda.get_device_name() if a.device == "cuda" else None,
        "dtype": a.dtype,
        "seq_len": seq,
        "batch": rows,
        "params": params,
        "step_ms_median": t * 1e3,
        "train_tokens_per_s": tokens / t,
        "model_tflops_per_s": flops / t / 1e12,
        "memory_reserved_bytes": torch.cuda.max_memory_reserved() if a.device == "cuda" else None,
    }
    line = json.dumps(report)
    if a.out:
        open(a.out, "w").write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
