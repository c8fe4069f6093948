#!/usr/bin/env python3
"""One training step's GPU time by kind of kernel, andes beside its PyTorch peer, from Nsight
Compute logs (`ncu --metrics gpu__time_duration.sum --csv`) of a run with one step and of a run
with two (scripts/gpu/train_step_ncu.sh makes them). The two-step run minus the one-step run is
a steady step: initialisation, first-use allocation and the first step's extra work cancel.

Kinds come from the kernel names: cubecl names its kernels after the operation
(`matmul_entry_…`, `reduce_kernel_…`, `elemwise_fuse_…`), PyTorch's are CUTLASS/cuBLAS GEMMs,
flash attention, and ATen's elementwise, reduction and optimizer kernels.

usage: step_profile.py --andes ONE.csv[.gz] TWO.csv[.gz] --peer ONE.csv[.gz] TWO.csv[.gz]
"""
import argparse
import collections
import csv
import gzip
import io
import re

KINDS = [
    ("attention", r"flash|fmha|attention|sdpa|softmax"),
    ("matmul", r"matmul|gemm|cutlass|sm90_xmma|sm80_xmma|cublas|nvjet|cmma"),
    ("cross-entropy / log-softmax", r"log_softmax|nll_loss|cross_entropy"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("reduction", r"reduce|sum|mean|norm"),
    ("copy / cast / layout", r"copy|cast|slice|cat|contiguous|into_contiguous|transpose|permute|gather|scatter|index"),
    ("elementwise (fused)", r"fuse|elemwise|fused"),
    ("elementwise", r"binop|unary|scalar|elementwise|mask|full|where|cmp|clamp|pow|exp|silu|mul|add"),
]


def kernels(path):
    """Kernel name → (count, total ns) of one ncu CSV log."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        lines = [line for line in f if line.startswith('"')]
    totals = collections.defaultdict(lambda: [0, 0.0])
    for row in csv.DictReader(io.StringIO("".join(lines))):
        if row["Metric Name"] != "gpu__time_duration.sum":
            continue
        ns = float(row["Metric Value"].replace(",", ""))
        scale = {"ns": 1, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6}.get(row["Metric Unit"], 1)
        entry = totals[row["Kernel Name"]]
        entry[0] += 1
        entry[1] += ns * scale
    return totals


def kind_of(name):
    lowered = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, lowered):
            return kind
    return "other"


def step(one, two):
    """Per-kernel (count, ns) of the second step: the two-step run minus the one-step run."""
    first, both = kernels(one), kernels(two)
    return {
        name: (count - first.get(name, [0, 0])[0], ns - first.get(name, [0, 0.0])[1])
        for name, (count, ns) in both.items()
        if count - first.get(name, [0, 0])[0] > 0
    }


def by_kind(kernels_of_step):
    kinds = collections.defaultdict(lambda: [0, 0.0])
    for name, (count, ns) in kernels_of_step.items():
        entry = kinds[kind_of(name)]
        entry[0] += count
        entry[1] += ns
    return kinds


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--andes", nargs=2, required=True)
    p.add_argument("--peer", nargs=2, required=True)
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args()
    systems = {"andes": step(*a.andes), "PyTorch": step(*a.peer)}
    kinds = {who: by_kind(k) for who, k in systems.items()}
    totals = {who: sum(ns for _, ns in k.values()) for who, k in systems.items()}
    print("| kind | andes kernels | andes ms | PyTorch kernels | PyTorch ms | andes ÷ PyTorch |")
    print("|---|---|---|---|---|---|")
    names = sorted(set(kinds["andes"]) | set(kinds["PyTorch"]), key=lambda k: -kinds["andes"].get(k, [0, 0])[1])
    for kind in names:
        (ac, ans), (pc, pns) = kinds["andes"].get(kind, [0, 0.0]), kinds["PyTorch"].get(kind, [0, 0.0])
        ratio = f"{ans / pns:.1f}×" if pns else "—"
        print(f"| {kind} | {ac} | {ans / 1e6:.1f} | {pc} | {pns / 1e6:.1f} | {ratio} |")
    ac = sum(c for c, _ in systems["andes"].values())
    pc = sum(c for c, _ in systems["PyTorch"].values())
    print(f"| **all kernels of one step** | {ac} | {totals['andes'] / 1e6:.1f} | {pc} | {totals['PyTorch'] / 1e6:.1f} | "
          f"{totals['andes'] / totals['PyTorch']:.1f}× |")
    for who, k in systems.items():
        print(f"\nTop {a.top} kernels of {who}'s step (count, ms, share):\n")
        for name, (count, ns) in sorted(k.items(), key=lambda item: -item[1][1])[: a.top]:
            print(f"- `{name[:110]}` ×{count}: {ns / 1e6:.2f} ms ({100 * ns / totals[who]:.1f}%)")


if __name__ == "__main__":
    main()
