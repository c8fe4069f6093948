#!/usr/bin/env bash
# One training step replayed as a CUDA graph against the eager step, on one GPU, in one call:
# `andes bench train` of MODEL (default the Qwen3-0.6B shape, seq 1024, BATCH windows) eager
# and with --replay, for each of PRECISIONS (default bf16-mixed and f32) and of HEADS (the LM
# head's forms, ANDES_HEAD; default the build's own), then PyTorch (`train_peers` of
# run_step.sh: PEER_SPECS, COMPILE=1). Every andes run is seeded alike, so the replayed run's
# losses must equal the eager run's from its fourth step (burn's capture trains three warm-up
# steps first). Each run's output lands in OUT (default ./out) as results.tar.gz, kept up to
# date as the run goes; a summary line of each andes run is printed.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
R=${R:-/tmp/results}; mkdir -p $R
STEP_LIMIT=${STEP_LIMIT:-150}
MODEL=${MODEL:-configs/models/qwen3-0.6b.json}
BATCH=${BATCH:-4}
. "$(dirname "$0")/cublas_lib.sh"
prepare_run "$R/gpu.txt"
. "$(dirname "$0")/run_step.sh"
for precision in ${PRECISIONS:-bf16-mixed f32}; do
  for head in ${HEADS:-default}; do
    for mode in eager replay; do
      flag=(); [ $mode = replay ] && flag=(--replay)
      vars=(); [ "$head" != default ] && vars=(ANDES_HEAD=$head)
      name=$mode-$precision-$head
      run "$name" env "${vars[@]}" $A bench train --config "$MODEL" --device cuda --seq-len 1024 \
        --batch "$BATCH" --precision "$precision" --warmup 2 --steps 6 "${flag[@]}"
      python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(sys.argv[2], "step ms", round(d["step_ms_median"], 1), "replay", d["replay"], "reserved GB", round(d["memory_reserved_bytes"] / 1e9, 1), "host ms", d["host_ms"], "losses", [round(x, 4) for x in d["losses"]])' \
        "$R/$name.json" "$name" 2>&1 | tail -1
    done
  done
done
train_peers
