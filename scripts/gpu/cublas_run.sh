#!/usr/bin/env bash
# cuBLASLt matrix products on one NVIDIA GPU, checked and timed in one call, every row from
# the one binary scripts/gpu/build-cuda.sh makes (.carry/andes-cublas.xz):
#   1. numerics: every Qwen3 fixture's greedy continuation (KV-cached, replayed decoding) and
#      `andes eval` perplexity, on cuda with cuBLASLt in f32 and bf16 and with CubeCL's products
#      in f32 (ANDES_MATMUL=cubecl ANDES_FUSED_MATMUL=ordered-double, what shipped before),
#      against transformers' ids and perplexity in the fixture's reference.json;
#   2. speed: `andes bench train` of the 0.6B shape (seq 1024, 4 windows a step) in bf16-mixed
#      and f32 (TF32), cuBLASLt against CubeCL's products, then PyTorch (scripts/bench/
#      train_peer.py) in TF32 and bf16 autocast with SDPA, and (COMPILE=1) compiled;
#   3. (CURVES=1) the tiny recipe trained in f32 and bf16-mixed with cuBLASLt.
# FIXTURES, VARIANTS, PRECISIONS and PEER_SPECS choose the rows; CUBECL_TRAIN=0 leaves out the
# CubeCL timing rows (slow at the larger shapes); FORMS_AB=1 adds a row with the LM head's loss
# composed of Burn's operations (ANDES_HEAD=composed) and one with attention composed of Burn's
# operations (ANDES_ATTENTION=composed, what ran before); MODEL and BATCH (default 4) pick the
# shape timed; FORWARD=1 adds the bf16 forward (prefill, decode, replayed decode) of MODEL
# beside transformers bf16 (scripts/bench/forward_peer.py).
# libcublasLt is taken from the loader's path or, failing that, from PyTorch's CUDA wheels.
# Results land in OUT (default ./out) as results.tar.gz, kept up to date as the run goes.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
R=${R:-/tmp/results}; mkdir -p $R
STEP_LIMIT=${STEP_LIMIT:-240}
MODEL=${MODEL:-configs/models/qwen3-0.6b.json}
BATCH=${BATCH:-4}
A=/tmp/andes-cublas
xz -dc .carry/andes-cublas.xz > $A && chmod +x $A
. "$(dirname "$0")/cublas_lib.sh"
export CUDA_CACHE_PATH=$PWD/target/environment/cuda-jit CUDA_CACHE_MAXSIZE=4294967296
mkdir -p "$CUDA_CACHE_PATH"
printf '[compilation]\ncache = true\n' > cubecl.toml
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$R/gpu.txt"
CUBECL="ANDES_MATMUL=cubecl ANDES_FUSED_MATMUL=ordered-double"
. "$(dirname "$0")/run_step.sh"
for fixture in ${FIXTURES:-qwen3-tiny-untied-mha-f32 qwen3-tiny-tied-gqa-f32 qwen3-tiny-bf16-sharded}; do
  F=fixtures/$fixture
  ref() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$F/reference.json" "$1"; }
  for variant in ${VARIANTS:-cublas-f32 cublas-bf16 cubecl-f32}; do
    vars=(); [ "${variant%%-*}" = cubecl ] && vars=($CUBECL)
    dtype=${variant#*-}
    run "greedy-$fixture-$variant" env "${vars[@]}" $A generate --model "$F" --device cuda --dtype "$dtype" \
      --prompt "$(ref prompt)" --max-new-tokens "$(ref greedy_new_tokens)" --greedy --json
    run "eval-$fixture-$variant" env "${vars[@]}" $A eval --model "$F" --device cuda --dtype "$dtype" \
      --text "$F/eval.txt" --window "$(ref eval_window)" --stride "$(ref eval_stride)" --json
    python3 - "$F" "$R/greedy-$fixture-$variant.json" "$R/eval-$fixture-$variant.json" "$variant" <<'PY' | tee -a "$R/numerics.txt"
import json, sys
ref = json.load(open(sys.argv[1] + "/reference.json"))
try:
    ids = json.load(open(sys.argv[2]))["token_ids"]
    want = ref["greedy_ids"][-ref["greedy_new_tokens"]:]
    same = "identical" if ids == want else f"differ from token {next(i for i, (a, b) in enumerate(zip(ids + [None] * len(want), want)) if a != b)}"
    ppl = json.load(open(sys.argv[3]))["perplexity"]
    print(sys.argv[1], sys.argv[4], "greedy ids", same, "perplexity", ppl, "rel err vs transformers", abs(ppl - ref["eval_perplexity"]) / ref["eval_perplexity"])
except Exception as e:
    print(sys.argv[1], sys.argv[4], "no result:", e)
PY
  done
done
for precision in ${PRECISIONS:-bf16-mixed f32}; do
  # One traced step first (ANDES_MATMUL=trace: where each distinct product ran, and why), which
  # also fills the kernel cache for the timed runs.
  run "trace-cublas-$precision" env ANDES_MATMUL=trace $A bench train --config "$MODEL" --device cuda \
    --precision "$precision" --seq-len 1024 --batch $BATCH --warmup 0 --steps 1
  train_args=(bench train --config "$MODEL" --device cuda --precision "$precision" --seq-len 1024 --batch $BATCH --warmup 2 --steps 6)
  run "train-cublas-$precision" $A "${train_args[@]}"
  if [ "${FORMS_AB:-0}" = 1 ]; then
    run "train-cublas-composed-head-$precision" env ANDES_HEAD=composed $A "${train_args[@]}"
    run "train-cublas-composed-attention-$precision" env ANDES_ATTENTION=composed $A "${train_args[@]}"
  fi
  [ "${CUBECL_TRAIN:-1}" = 1 ] && run "train-cubecl-$precision" env $CUBECL $A "${train_args[@]}"
done
train_peers
if [ "${FORWARD:-0}" = 1 ]; then
  forward_args=(--config "$MODEL" --device cuda --prompt-len 512 --decode-tokens 128 --warmup 1 --repeats 3)
  run forward-andes-bf16 $A bench forward "${forward_args[@]}" --dtype bf16
  run forward-andes-bf16-replay $A bench forward "${forward_args[@]}" --dtype bf16 --replay
  run forward-peer-bf16-sdpa python3 scripts/bench/forward_peer.py "${forward_args[@]}" --dtype bfloat16 --attn sdpa
fi
if [ "${CURVES:-0}" = 1 ]; then
  for precision in f32 bf16-mixed; do
    run "curve-tiny-$precision" $A train --config configs/recipes/tiny/pretrain.toml --out "/tmp/tiny-$precision" \
      --quiet --set 'train.device="cuda"' --set "train.precision=\"$precision\""
    cp "/tmp/tiny-$precision/metrics.jsonl" "$R/curve-tiny-$precision.jsonl"
  done
fi
tar -czf "$OUT/results.tar.gz" -C $R .
