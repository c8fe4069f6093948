#!/usr/bin/env python3
"""Training-step throughput of transformers' Qwen3ForCausalLM with torch.optim.AdamW: the peer
of `andes bench train`. Same shape, tokens and step (forward, cross-entropy in f32, backward,
AdamW over every parameter), at the same precision:

  f32         f32 parameters and matmuls (TF32 off)
  tf32        f32 parameters, TF32 matmuls allowed (what andes' cuda f32 runs)
  bf16-mixed  torch.autocast(bfloat16): f32 master weights and AdamW state, bf16 matmuls and
              attention, TF32 allowed for what autocast leaves in f32
  bf16        bf16 parameters throughout

--compile wraps the step's forward and loss in torch.compile (what users run for speed);
--attn picks transformers' attention (sdpa or eager); --checkpointing recomputes each decoder
layer in the backward pass (transformers' gradient_checkpointing_enable). AdamW is fused on cuda.

usage: train_peer.py --config CONFIG.json --device cuda --precision bf16-mixed --attn sdpa \
       --seq-len 1024 --batch 4 [--compile] [--checkpointing]
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
    p.add_argument("--precision", default="bf16-mixed", choices=["f32", "tf32", "bf16-mixed", "bf16"])
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--out")
    a = p.parse_args()
    torch.manual_seed(0)
    cuda = a.device == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = a.precision != "f32"
    torch.backends.cudnn.allow_tf32 = a.precision != "f32"
    config = AutoConfig.from_pretrained(a.config)
    config._attn_implementation = a.attn
    param_dtype = torch.bfloat16 if a.precision == "bf16" else torch.float32
    model = Qwen3ForCausalLM(config).to(param_dtype).to(a.device)
    if a.checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=cuda
    )
    rows, seq = a.batch, a.seq_len
    ids = (torch.arange(rows * (seq + 1)) * 7919 + 13) % config.vocab_size
    ids = ids.view(rows, seq + 1).to(a.device)
    inputs, targets = ids[:, :-1], ids[:, 1:]

    def loss_of(inputs, targets):
        logits = model(inputs).logits.float()
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    forward = torch.compile(loss_of) if a.compile else loss_of
    autocast = a.precision == "bf16-mixed"
    warmup_times, times, loss = [], [], None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for step in range(a.warmup + a.steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device_type=a.device, dtype=torch.bfloat16, enabled=autocast):
            loss = forward(inputs, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        (warmup_times if step < a.warmup else times).append(time.perf_counter() - start)
    t = statistics.median(times)
    tokens = rows * seq
    params = sum(p.numel() for p in model.parameters())
    flops = 6 * params * tokens + 12 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * seq * tokens
    report = {
        "peer": f"transformers-{a.attn}{'+compile' if a.compile else ''}"
        f"{'+checkpointing' if a.checkpointing else ''}+torch.AdamW(fused)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": a.device,
        "gpu_name": torch.cuda.get_device_name() if cuda else None,
        "precision": a.precision,
        "seq_len": seq,
        "batch": rows,
        "params": params,
        "warmup_step_s": warmup_times,
        "step_ms_median": t * 1e3,
        "train_tokens_per_s": tokens / t,
        "model_tflops_per_s": flops / t / 1e12,
        "memory_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
        "final_loss": loss.item(),
    }
    line = json.dumps(report)
    if a.out:
        open(a.out, "w").write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
