#!/usr/bin/env bash
# scripts/bench/okv_long.sh on the GPU: the 25M-weight Qwen3 of the QALFT table
# (configs/models/qwen3-gcide-medium.json, drawn by `andes init`) pretrained by
# configs/recipes/gpu/qalft-medium/pretrain.toml at 1,024 tokens a window (8 windows a step:
# the recipe's tokens a step) for STEPS steps (default 800), then read one token at a time on
# this machine's CPU with and without eviction. The work folder W (default runs/okv-long) is
# ignored by git, so a second call on the same warm machine goes on where the first stopped.
#
# Needs, in .carry/: andes-cublas.xz (scripts/gpu/build-cuda.sh) and gcide-large.txt.xz
# (scripts/datasets/make_gcide_sample.py --large-bytes 100000000, xz-compressed). Results:
# OUT/okv-long.tar.gz (default OUT ./out).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
W=${W:-runs/okv-long}; mkdir -p "$W"
R=$W . "$(dirname "$0")/cublas_lib.sh"
prepare_run "$W/gpu.txt"
gcide_model configs/models/qwen3-gcide-medium.json
start=$SECONDS
RECIPE=configs/recipes/gpu/qalft-medium/pretrain.toml INIT="$W/init" SEQ_LEN=1024 BATCH=8 \
  STEPS=${STEPS:-800} DEVICE=cuda bash scripts/bench/okv_long.sh $A "$W" 2> "$W/stderr.txt"
echo "okv_long.sh rc=$? after $((SECONDS - start)) s"
grep -m5 -E "rror|panicked" "$W/stderr.txt" | cut -c1-300
tail -1 "$W/pretrain/metrics.jsonl" | cut -c1-300
tar czf "$OUT/okv-long.tar.gz" -C "$W" table.md gpu.txt stderr.txt library.txt \
  pretrain/metrics.jsonl $(cd "$W" && ls eval-*.json)
