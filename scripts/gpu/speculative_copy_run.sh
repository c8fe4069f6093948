#!/usr/bin/env bash
# scripts/bench/speculative_copy.sh on the GPU machine: the Qwen3-0.6B shape with the GCIDE
# tokenizer (configs/models/qwen3-0.6b-gcide.json, drawn by `andes init`) pretrained on the GPU
# by configs/recipes/gpu/pretrain-0.6b.toml's settings (4 windows of 1,024 tokens a step) for
# STEPS steps (default 1000) on passages followed by their copy, then packaged at int4-g128 and
# decoded on this machine's CPU with THREADS threads (default 2), with and without prompt
# lookup. The work folder W (default runs/speculative-copy) is ignored by git, so a second call
# on the same warm machine goes on where the first stopped; LIMIT (default 500) seconds bound
# the benchmark so that what it measured comes back.
#
# Needs, in .carry/: andes-cublas.xz (scripts/gpu/build-cuda.sh) and gcide-large.txt.xz
# (scripts/datasets/make_gcide_sample.py --large-bytes 100000000, xz-compressed). Results:
# OUT/speculative-copy.tar.gz (default OUT ./out).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
W=${W:-runs/speculative-copy}; mkdir -p "$W"
R=$W . "$(dirname "$0")/cublas_lib.sh"
prepare_run "$W/gpu.txt"
gcide_model configs/models/qwen3-0.6b-gcide.json
start=$SECONDS
RECIPE=configs/recipes/gpu/pretrain-0.6b.toml INIT="$W/init" SEQ_LEN=1024 BATCH=4 \
  STEPS=${STEPS:-1000} DEVICE=cuda timeout "${LIMIT:-500}" \
  bash scripts/bench/speculative_copy.sh $A "$W" 2> "$W/stderr.txt"
echo "speculative_copy.sh rc=$? after $((SECONDS - start)) s"
grep -m5 -E "rror|panicked" "$W/stderr.txt" | cut -c1-300
tail -1 "$W/pretrain/metrics.jsonl" | cut -c1-300
tar czf "$OUT/speculative-copy.tar.gz" -C "$W" --ignore-failed-read table.md rows.jsonl \
  prompts.txt quantize.json gpu.txt stderr.txt library.txt pretrain/metrics.jsonl
