#!/usr/bin/env python3
"""Peer benchmark: torch square matmul throughput (TFLOP/s) per size and dtype.

Variants: float32 (TF32 off), float32-tf32 (TF32 on), bfloat16, float16. Inputs are random
normal n x n matrices; C = A @ B counts 2*n^3 flops. On cuda each timed iteration is bracketed
by CUDA events; on cpu (for smoke tests) by perf_counter. The median iteration time is reported.

Example:
  python3 scripts/bench/matmul_peer.py --sizes 4096,8192 --out matmul_peer.json
"""
import argparse
import json
import statistics
import sys
import time

import torch

VARIANTS = {
    # name: (torch dtype, tf32 allowed)
    "float32": (torch.float32, False),
    "float32-tf32": (torch.float32, True),
    "bfloat16": (torch.bfloat16, False),
    "float16": (torch.float16, False),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="4096,8192", help="comma-separated square sizes")
    p.add_argument("--dtypes", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    return p.parse_args()


def set_tf32(enabled):
    m = torch.backends.cuda.matmul
    if hasattr(m, "fp32_precision"):  # torch >= 2.9 API
        m.fp32_precision = "tf32" if enabled else "ieee"
    else:
        m.allow_tf32 = enabled


def time_matmul(a, b, c, device, warmup, iters):
    for _ in range(warmup):
        torch.matmul(a, b, out=c)
    times_ms = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        for _ in range(iters):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            torch.matmul(a, b, out=c)
            end.record()
            end.synchronize()
            times_ms.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            torch.matmul(a, b, out=c)
            times_ms.append((time.perf_counter() - t0) * 1e3)
    return times_ms


def main():
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda requested but torch.cuda.is_available() is False (use --device cpu for a smoke test)")
    if args.threads is not None and args.device == "cpu":
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    names = [d for d in args.dtypes.split(",") if d]
    for d in names:
        if d not in VARIANTS:
            sys.exit(f"unknown dtype variant {d!r}; choose from {list(VARIANTS)}")

    torch.manual_seed(args.seed)
    results = []
    for n in sizes:
        for name in names:
            dtype, tf32 = VARIANTS[name]
            if device.type == "cuda":
                set_tf32(tf32)
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            c = torch.empty(n, n, device=device, dtype=dtype)
            times = time_matmul(a, b, c, device, args.warmup, args.iters)
            med = statistics.median(times)
            tflops = 2.0 * n ** 3 / (med * 1e-3) / 1e12
            row = {"size": n, "dtype": name, "tf32": tf32 if device.type == "cuda" else None,
                   "tflops": tflops, "ms_median": med, "ms_min": min(times)}
            results.append(row)
            print(f"n={n:6d} {name:13s} {tflops:9.3f} TFLOP/s  (median {med:.3f} ms, min {min(times):.3f} ms)",
                  flush=True)
            del a, b, c
    if device.type == "cuda":
        set_tf32(False)

    out = {
        "peer": "torch-matmul",
        "torch": torch.__version__,
        "device": args.device,
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "warmup": args.warmup,
        "iters": args.iters,
        "results": results,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
