#!/usr/bin/env python3
"""Two runs' training losses by step in one SVG (no dependencies beyond the standard library),
with the largest and mean relative gap printed: how `andes train` in f32 and in bf16-mixed
are compared.

usage: plot_loss_curves.py A/metrics.jsonl B/metrics.jsonl --labels "f32" "bf16-mixed" \
       --title TITLE --out curves.svg
"""
import argparse
import json


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--labels", nargs=2, default=["a", "b"])
    p.add_argument("--title", default="training loss by step")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    runs = [[json.loads(line) for line in open(path)] for path in (args.a, args.b)]
    gaps = [abs(x["loss"] - y["loss"]) / x["loss"] for x, y in zip(*runs)]
    print(f"{len(gaps)} steps: largest relative gap {max(gaps):.2e}, mean {sum(gaps) / len(gaps):.2e}")
    losses = [r["loss"] for run in runs for r in run]
    lo, hi = min(losses), max(losses)
    last = max(r["step"] for run in runs for r in run)
    width, height, pad = 640, 360, 50

    def point(step, loss):
        x = pad + (step - 1) / max(last - 1, 1) * (width - 2 * pad)
        y = height - pad - (loss - lo) / max(hi - lo, 1e-12) * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    def path(run):
        return " ".join(("M" if i == 0 else "L") + point(r["step"], r["loss"]) for i, r in enumerate(run))

    styles = ['stroke="#1f77b4" stroke-width="2"', 'stroke="#d62728" stroke-width="1.5" stroke-dasharray="4 3"']
    colors = ["#1f77b4", "#d62728"]
    lines = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle">{args.title}</text>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
        f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle">step (1-{last})</text>',
        f'<text x="{pad - 5}" y="{height - pad}" text-anchor="end">{lo:.2f}</text>',
        f'<text x="{pad - 5}" y="{pad + 4}" text-anchor="end">{hi:.2f}</text>',
    ]
    for i, run in enumerate(runs):
        lines.append(f'<path d="{path(run)}" fill="none" {styles[i]}/>')
        lines.append(f'<text x="{width - pad - 150}" y="{pad + 10 + 16 * i}" fill="{colors[i]}">{args.labels[i]}</text>')
    lines.append("</svg>")
    open(args.out, "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
