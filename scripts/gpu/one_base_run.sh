#!/usr/bin/env bash
# The GPU table of BENCHMARKS.md's "One quantized base per budget": scripts/bench/one_base.sh on
# the 25M-weight Qwen3 (configs/models/qwen3-gcide-medium.json, drawn by `andes init` and
# pretrained by configs/recipes/gpu/qalft-medium/pretrain.toml on GCIDE's prose), with
# llama.cpp's types on the same base. The work folder W (default runs/one-base-medium) is
# ignored by git, so a second call on the same warm machine goes on where the first stopped;
# BUDGETS (default 1.8 2 3 4) and JOBS (budgets at once, default 2) are passed through, as are
# LORA_INIT, QAT_VARIANTS, SENSITIVITY and ADAPTER_DISTILL; LLAMACPP= (empty) leaves llama.cpp's
# rows out.
#
# Needs, in .carry/: andes-cublas.xz (scripts/gpu/build-cuda.sh), gcide-large.txt.xz
# (scripts/datasets/make_gcide_sample.py --large-bytes 100000000, xz-compressed) and
# ggml_roundtrip (scripts/bench/llamacpp_peer, linked with -static). Results:
# OUT/one-base-medium.tar.gz (default OUT ./out).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
W=${W:-runs/one-base-medium}; mkdir -p "$W"
L=datasets/gcide/gcide-large.txt
[ -f $L ] || xz -dc .carry/gcide-large.txt.xz > $L
R=$W . "$(dirname "$0")/cublas_lib.sh"
prepare_run "$W/gpu.txt" $'\n[autotune]\nlevel = "minimal"\n'
start=$SECONDS
RECIPES=configs/recipes/gpu/qalft-medium INIT_CONFIG=configs/models/qwen3-gcide-medium.json \
  DEVICE=cuda WINDOW=256 JOBS=${JOBS:-2} LLAMACPP=${LLAMACPP-.carry/ggml_roundtrip} \
  timeout "${LIMIT:-540}" bash scripts/bench/one_base.sh $A "$W" ${BUDGETS:-1.8 2 3 4} 2> "$W/stderr.txt" \
  | tee "$W/table.md"
echo "one_base.sh rc=${PIPESTATUS[0]} after $((SECONDS - start)) s"
grep -m5 -E "rror|panicked" "$W/stderr.txt" | cut -c1-300
tail -2 "$W/pretrain/metrics.jsonl" | cut -c1-300
tar czf "$OUT/one-base-medium.tar.gz" -C "$W" table.md gpu.txt stderr.txt library.txt nll \
  $(cd "$W" && ls -d */metrics.jsonl gptq-*/bit_plan.json llamacpp-*.json 2>/dev/null)
