#!/usr/bin/env bash
# packing_tiny.sh ANDES OUT [SEQ_LEN]: the tiny SFT recipe (configs/recipes/tiny/sft.toml,
# 100 steps; windows of SEQ_LEN tokens, default the recipe's 64) with each of data.packing = "stream", "padding_free" and "padded" (one conversation a
# row, each batch cut after its last counted target, as padding to the longest does), one
# after the other with the same binary; prints each run's counted targets a step, its median
# target tokens/s over steps 3-100 and its held-out loss, and keeps the runs in OUT.
set -euo pipefail
A=$1; OUT=$2; SEQ_LEN=${3:-64}
mkdir -p "$OUT"
for packing in stream padding_free padded; do
  rm -rf "${OUT:?}/$packing"
  "$A" train --config configs/recipes/tiny/sft.toml --out "$OUT/$packing" --quiet \
    --set "data.packing=\"$packing\"" --set "data.seq_len=$SEQ_LEN" > /dev/null
  python3 -c 'import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
targets = statistics.mean(r["tokens"] for r in rows)
speed = statistics.median(r["tokens_per_s"] for r in rows[2:])
print("%-13s targets a step %.0f  target tokens/s %.0f  held-out loss %.3f"
      % (sys.argv[2], targets, speed, rows[-1]["eval_loss"]))' "$OUT/$packing/metrics.jsonl" "$packing"
done
