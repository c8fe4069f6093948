#!/usr/bin/env python3
"""One replayed step's GPU time from a kernel trace (scripts/gpu/kernel_trace/kernel_trace.c):
the replays of the run's largest CUDA graph are cut apart (a replay ends where a graph node
repeats), and the median replay is reported: its span on the device from first start to last
end, the time some kernel or copy was running, the idle gaps between them, and its time by
kind of kernel (the kinds of step_profile.py) and by kernel. Given two traces, the second
column is the other run's, with the kernels whose time differs most.

usage: kernel_trace.py NAME=TRACE.tsv[.gz] [NAME=TRACE.tsv[.gz]] [--top N]
"""
import argparse
import collections
import gzip
import statistics

from step_profile import kind_of


def records(path):
    """(kind, start, end, graph, node, what) of every record of a trace."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        for line in f:
            kind, start, end, _stream, graph, node, what = line.rstrip("\n").split("\t", 6)
            yield kind, int(start), int(end), int(graph), int(node), what


def replays(path):
    """The replays of the run's largest graph, each a list of records in start order."""
    by_graph = collections.defaultdict(list)
    for record in records(path):
        if record[3]:
            by_graph[record[3]].append(record)
    if not by_graph:
        return []
    graph = max(by_graph.values(), key=len)
    graph.sort(key=lambda r: r[1])
    cut, seen = [[]], set()
    for record in graph:
        if record[4] in seen:
            cut.append([])
            seen = set()
        seen.add(record[4])
        cut[-1].append(record)
    return cut


def busy_ns(replay):
    """Nanoseconds in which at least one of the replay's records was running."""
    total, until = 0, 0
    for _, start, end, *_ in replay:
        if end > until:
            total += end - max(start, until)
            until = end
    return total


def summary(path):
    runs = replays(path)
    if not runs:
        return None
    spans = [r[-1][2] - r[0][1] if r else 0 for r in runs]
    median = sorted(range(len(runs)), key=lambda i: spans[i])[len(runs) // 2]
    replay = runs[median]
    per_name = collections.defaultdict(lambda: [0, 0])
    for kind, start, end, _, _, what in replay:
        name = what if kind == "kernel" else kind
        per_name[name][0] += 1
        per_name[name][1] += end - start
    per_kind = collections.defaultdict(lambda: [0, 0])
    for name, (count, ns) in per_name.items():
        entry = per_kind[name if name in ("memcpy", "memset") else kind_of(name)]
        entry[0] += count
        entry[1] += ns
    span = max(end for _, _, end, *_ in replay) - replay[0][1]
    return {
        "replays": len(runs),
        "spans": spans,
        "records": len(replay),
        "span": span,
        "busy": busy_ns(replay),
        "kinds": per_kind,
        "names": per_name,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("traces", nargs="+", help="NAME=TRACE.tsv[.gz]")
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args()
    runs = {}
    for name, path in (t.split("=", 1) for t in a.traces):
        runs[name] = summary(path)
        if runs[name] is None:
            print(f"{name}: no record of {path} comes from a CUDA graph (an eager run); left out\n")
            del runs[name]
    names = list(runs)
    ms = lambda ns: f"{ns / 1e6:.2f}"
    print("| | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    rows = [
        ("replays in the trace", lambda s: str(s["replays"])),
        ("median replay: span on the device, ms", lambda s: ms(s["span"])),
        ("spans of all replays, ms", lambda s: ", ".join(ms(x) for x in s["spans"])),
        ("kernels, copies and fills", lambda s: str(s["records"])),
        ("some record running, ms", lambda s: ms(s["busy"])),
        ("idle between records, ms", lambda s: ms(s["span"] - s["busy"])),
    ]
    for label, cell in rows:
        print(f"| {label} | " + " | ".join(cell(runs[n]) for n in names) + " |")
    kinds = sorted({k for s in runs.values() for k in s["kinds"]}, key=lambda k: -runs[names[0]]["kinds"].get(k, [0, 0])[1])
    for kind in kinds:
        cells = [f"{ms(runs[n]['kinds'].get(kind, [0, 0])[1])} ({runs[n]['kinds'].get(kind, [0, 0])[0]})" for n in names]
        print(f"| {kind}, ms (records) | " + " | ".join(cells) + " |")
    if len(names) == 2:
        first, second = (runs[n]["names"] for n in names)
        diffs = sorted(set(first) | set(second), key=lambda k: -abs(second.get(k, [0, 0])[1] - first.get(k, [0, 0])[1]))
        print(f"\nKernels whose time differs most, {names[1]} minus {names[0]} (ms; counts):\n")
        for name in diffs[: a.top]:
            (c1, t1), (c2, t2) = first.get(name, [0, 0]), second.get(name, [0, 0])
            print(f"- `{name[:110]}`: {ms(t2 - t1)} ({ms(t1)} ×{c1} → {ms(t2)} ×{c2})")
    for name in names:
        total = runs[name]["span"]
        print(f"\nTop {a.top} kernels of {name}'s replay (count, ms, share of the span):\n")
        for kernel, (count, ns) in sorted(runs[name]["names"].items(), key=lambda i: -i[1][1])[: a.top]:
            print(f"- `{kernel[:110]}` ×{count}: {ms(ns)} ({100 * ns / total:.1f}%)")


if __name__ == "__main__":
    main()
