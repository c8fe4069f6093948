#!/usr/bin/env python3
"""Data-parallel training throughput of transformers' Qwen3ForCausalLM under PyTorch DDP
(NCCL), the peer of `andes train --devices N` (scripts/gpu/ddp_run.sh).

Each rank trains on micro-batches of `--batch` windows of `--seq-len` tokens, `--accum` of them
per optimizer step (DDP's `no_sync` on all but the last, so gradients are all-reduced once a
step, as andes does), with torch.optim.AdamW. Rank 0 prints one JSON line: median step time
after the warm-up steps, and tokens/s over all ranks.

usage: torchrun --nproc_per_node N ddp_peer.py --config CONFIG.json --dtype float32 \
           --seq-len 1024 --batch 1 --accum 2 --warmup 3 --steps 8
"""
import argparse
import contextlib
import json
import os
import statistics
import time

import torch
import torch.distributed as dist
import transformers
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoConfig, Qwen3ForCausalLM


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--accum", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--attn", default="eager")
    a = p.parse_args()
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(a.config)
    config._attn_implementation = a.attn
    model = Qwen3ForCausalLM(config).to(getattr(torch, a.dtype)).cuda()
    model.train()
    ddp = DistributedDataParallel(model, device_ids=[local])
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    rows, seq = a.batch, a.seq_len
    # Each rank and micro-batch gets its own deterministic token rows.
    def window(micro: int) -> torch.Tensor:
        offset = (rank * a.accum + micro) * rows * (seq + 1)
        ids = (torch.arange(offset, offset + rows * (seq + 1)) * 7919 + 13) % config.vocab_size
        return ids.view(rows, seq + 1).cuda()

    windows = [window(m) for m in range(a.accum)]
    times = []
    torch.cuda.reset_peak_memory_stats()
    for step in range(a.warmup + a.steps):
        torch.cuda.synchronize()
        dist.barrier()
        start = time.perf_counter()
        for micro, ids in enumerate(windows):
            last = micro == a.accum - 1
            with contextlib.nullcontext() if last else ddp.no_sync():
                logits = ddp(ids[:, :-1]).logits.float()
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
                ) / a.accum
                loss.backward()
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        dist.barrier()
        if step >= a.warmup:
            times.append(time.perf_counter() - start)
    t = statistics.median(times)
    tokens = world * a.accum * rows * seq
    if rank == 0:
        print(json.dumps({
            "peer": f"torch-DDP(nccl)+transformers-{a.attn}+AdamW",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "gpu_name": torch.cuda.get_device_name(),
            "gpus": world,
            "dtype": a.dtype,
            "seq_len": seq,
            "batch": rows,
            "accum": a.accum,
            "step_ms_median": t * 1e3,
            "tokens_per_step": tokens,
            "train_tokens_per_s": tokens / t,
            "memory_reserved_bytes": torch.cuda.max_memory_reserved(),
        }), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
