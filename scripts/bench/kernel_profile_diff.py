#!/usr/bin/env python3
"""Kernel time of one decode step from two cubecl profiling logs (scripts/gpu/decode_profile.sh).

cubecl's profiling logger writes one `| duration | kernel name` line per launch. The first log
comes from a run that only prefills, the second from one that also decodes; their difference,
divided by the decode steps, is one step's kernel time and launch count, by kernel name.

  python3 scripts/bench/kernel_profile_diff.py profile-prompt.log profile-decode.log --steps 32
"""
import argparse
import collections
import re

UNITS = {"ns": 1e-6, "µs": 1e-3, "ms": 1.0, "s": 1e3}


def load(path):
    """Milliseconds and launches by kernel name (the hash suffix of a variant dropped)."""
    time, launches = collections.Counter(), collections.Counter()
    for line in open(path, encoding="utf-8"):
        m = re.match(r"\|\s*([\d.]+)(ns|µs|ms|s)\s*\|\s*(.*)", line)
        if not m:
            continue
        name = re.sub(r"_[0-9a-f]{8}$", "", m.group(3).split("|")[0].strip())
        time[name] += float(m.group(1)) * UNITS[m.group(2)]
        launches[name] += 1
    return time, launches


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt_log")
    p.add_argument("decode_log")
    p.add_argument("--steps", type=int, required=True,
                   help="decode steps the second run made beyond the first (warm-up runs included)")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    t_prompt, n_prompt = load(args.prompt_log)
    t_decode, n_decode = load(args.decode_log)
    rows = [((t_decode[k] - t_prompt[k]) / args.steps, (n_decode[k] - n_prompt[k]) / args.steps, k)
            for k in set(t_decode) | set(t_prompt)]
    print(f"per decode step: kernel time {sum(r[0] for r in rows):.3f} ms, "
          f"kernels {sum(r[1] for r in rows):.1f}")
    for ms, count, name in sorted(rows, reverse=True)[: args.top]:
        print(f"{ms:8.3f} ms {count:7.1f} launches  {name}")


if __name__ == "__main__":
    main()
