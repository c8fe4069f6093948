#!/usr/bin/env bash
# Training at 8,192 tokens a window on one NVIDIA GPU, andes beside PyTorch in one call: the
# training step of the Qwen3-0.6B shape (`andes bench train --seq-len 8192 --batch 1`,
# bf16-mixed) with and without activation checkpointing, PyTorch's step (transformers +
# bf16 autocast + SDPA, scripts/bench/train_peer.py) with and without its gradient
# checkpointing, then a real run of configs/recipes/gpu/long-8k.toml (`andes train`, 40 steps
# on GCIDE prose) for its loss and tokens/s. Each step is run through run_step.sh's `run`
# (STEP_LIMIT seconds, default 150); results land in OUT (default ./out) as results.tar.gz.
#
# Needs, in .carry/: andes-cublas.xz (scripts/gpu/build-cuda.sh) and gcide-large.txt.xz
# (scripts/datasets/make_gcide_sample.py --large-bytes 100000000, xz-compressed).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
R=${R:-/tmp/results}; mkdir -p $R
STEP_LIMIT=${STEP_LIMIT:-150}
MODEL=configs/models/qwen3-0.6b.json
L=datasets/gcide/gcide-large.txt
[ -f $L ] || xz -dc .carry/gcide-large.txt.xz > $L
. "$(dirname "$0")/cublas_lib.sh"
prepare_run "$R/gpu.txt"
. "$(dirname "$0")/run_step.sh"
summary() { python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(sys.argv[2], "step ms", round(d["step_ms_median"], 1), "tok/s", round(d["train_tokens_per_s"]), "reserved GB", round((d["memory_reserved_bytes"] or 0) / 1e9, 1))' "$R/$1.json" "$1" 2>&1 | tail -1; }
for checkpointing in on off; do
  flag=(); [ $checkpointing = on ] && flag=(--activation-checkpointing)
  run "andes-checkpointing-$checkpointing" $A bench train --config $MODEL --device cuda --seq-len 8192 \
    --batch 1 --precision bf16-mixed --warmup 2 --steps 5 "${flag[@]}"
  summary "andes-checkpointing-$checkpointing"
  flag=(); [ $checkpointing = on ] && flag=(--checkpointing)
  run "peer-checkpointing-$checkpointing" python3 scripts/bench/train_peer.py --config $MODEL \
    --device cuda --precision bf16-mixed --attn sdpa --seq-len 8192 --batch 1 "${flag[@]}"
  summary "peer-checkpointing-$checkpointing"
done
$A init --config $MODEL --tokenizer fixtures/tokenizer --out /tmp/q06 > /dev/null
STEP_LIMIT=${TRAIN_LIMIT:-240} run andes-train $A train --config configs/recipes/gpu/long-8k.toml \
  --out /tmp/long-8k --quiet --set model.checkpoint=/tmp/q06
cp /tmp/long-8k/metrics.jsonl "$R/andes-train-metrics.jsonl"
tar -czf "$OUT/results.tar.gz" -C "$R" .
python3 -c 'import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if "tokens_per_s" in l]
print("andes train: steps", len(rows), "loss", rows[0]["loss"], "->", rows[-1]["loss"],
      "median tok/s (steps 3+)", round(statistics.median(r["tokens_per_s"] for r in rows[2:])))' "$R/andes-train-metrics.jsonl"
