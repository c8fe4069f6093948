#!/usr/bin/env python3
"""Each kernel's GPU milliseconds a step in two Nsight Systems kernel summaries
(`nsys stats --report cuda_gpu_kern_sum --format csv`), side by side, largest difference
first, with the totals: where one run's step spends time the other's does not.

usage: nsys_kernels.py --steps N A.csv B.csv   (both runs executed N steps)
"""
import argparse
import csv
import io
import re


def kernels(path):
    """Kernel name (hashes and template noise cut) → (instances, total ns)."""
    with open(path) as f:
        text = f.read()
    start = text.find('"Time (%)"') if '"Time (%)"' in text else text.find("Time (%)")
    totals = {}
    for row in csv.DictReader(io.StringIO(text[start:])):
        name = re.sub(r"_[0-9a-f]{8}$", "", row["Name"])[:90]
        count, ns = totals.get(name, (0, 0.0))
        totals[name] = (count + int(row["Instances"]), ns + float(row["Total Time (ns)"]))
    return totals


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("a")
    parser.add_argument("b")
    args = parser.parse_args()
    a, b = kernels(args.a), kernels(args.b)
    ms = lambda t, name: t.get(name, (0, 0.0))[1] / 1e6 / args.steps
    count = lambda t, name: t.get(name, (0, 0.0))[0] / args.steps
    names = sorted(set(a) | set(b), key=lambda n: -abs(ms(a, n) - ms(b, n)))
    total = lambda t: sum(ns for _, ns in t.values()) / 1e6 / args.steps
    print(f"| kernel | A ms/step (count) | B ms/step (count) | A − B |")
    print("|---|---|---|---|")
    print(f"| **all** | {total(a):.2f} | {total(b):.2f} | {total(a) - total(b):+.2f} |")
    for name in names[:40]:
        print(f"| `{name}` | {ms(a, name):.2f} ({count(a, name):.0f}) | "
              f"{ms(b, name):.2f} ({count(b, name):.0f}) | {ms(a, name) - ms(b, name):+.2f} |")


if __name__ == "__main__":
    main()
