#!/usr/bin/env bash
# Mixed-precision training on one NVIDIA GPU, andes beside PyTorch in the same run: the
# training step (forward, next-token loss, backward, AdamW over every parameter) of a Qwen3
# shape with random weights, seq 1024 and 4 windows a step (the 0.6B shape by default), and
# the tiny fixture's shape first to time the start. andes runs `andes bench train` for every
# binary of BINS and precision of PRECISIONS, from the kernel cache as the run finds it (empty
# on a fresh machine, unless ENV_TAR unpacks one), its warm-up step times included (TINY_FIRST=0
# leaves out the tiny shape, CHECKPOINTED=0 the run with activation checkpointing); then
# PyTorch (scripts/bench/train_peer.py) in TF32, bf16 autocast with SDPA, the same compiled,
# and bf16 autocast with eager attention; and the loss curves of real `andes train` runs in
# f32 and bf16-mixed (the tiny recipe, and the start of the 0.6B one). cubecl's compilation logger names each kernel as it
# is compiled, each line stamped with the seconds since the run began (compile-BIN.log), so a
# stall names its kernel and its time. The CUDA driver's own cache of JIT-compiled kernels is
# kept beside cubecl's (target/environment), so a run from a carried cache skips both.
#
# Needs: an NVIDIA GPU with its driver, Python with PyTorch and transformers, and the andes
# release binaries, xz-compressed, at .carry/andes-BIN.xz for each BIN of BINS (default
# "cuda-untuned cuda": built with `cargo build --release -p andes-cli --features BIN` after
# scripts/gpu/setup-offline-cuda-build.sh). Results land in the output folder (OUT, default
# ./out) as results.tar.gz, with this run's kernel caches as environment.tar.gz (cut into parts of 15 MB,
# environment.tar.gz.part-*, when larger; `cat` them back together; SAVE_ENV=0 keeps them).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
R=/tmp/results; mkdir -p $R
export RUST_BACKTRACE=1
BINS=${BINS:-"cuda-untuned cuda"}
PRECISIONS=${PRECISIONS:-"bf16-mixed f32"}
MODEL=${MODEL:-configs/models/qwen3-0.6b.json}
TINY=fixtures/qwen3-tiny-untied-mha-f32/config.json
STEP_LIMIT=${STEP_LIMIT:-240}
PEERS=${PEERS:-1}
[ -n "${ENV_TAR:-}" ] && mkdir -p target && cat $ENV_TAR | tar -xz -C target
export CUDA_CACHE_PATH=$PWD/target/environment/cuda-jit CUDA_CACHE_MAXSIZE=4294967296
mkdir -p "$CUDA_CACHE_PATH"
mkdir -p /tmp/bin
for bin in $BINS; do xz -dc ".carry/andes-$bin.xz" > "/tmp/bin/andes-$bin" && chmod +x "/tmp/bin/andes-$bin"; done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$R/gpu.txt"
. "$(dirname "$0")/run_step.sh"
for bin in $BINS; do
  printf '[compilation]\ncache = true\n\n[compilation.logger]\nlevel = "basic"\nfile = "%s"\n\n[autotune]\nlevel = "minimal"\n' \
    "/tmp/compile-$bin.log" > cubecl.toml
  touch "/tmp/compile-$bin.log"
  tail -F -n +1 "/tmp/compile-$bin.log" 2>/dev/null | while read -r line; do echo "$SECONDS $line"; done > "$R/compile-$bin.log" &
  STAMPER=$!
  for precision in $PRECISIONS; do
    [ "${TINY_FIRST:-1}" = 1 ] && run "andes-$bin-tiny-$precision" "/tmp/bin/andes-$bin" bench train \
      --config $TINY --device cuda --precision "$precision" --seq-len 256 --batch 4 --warmup 2 --steps 5
    run "andes-$bin-model-$precision" "/tmp/bin/andes-$bin" bench train --config "$MODEL" --device cuda \
      --precision "$precision" --seq-len 1024 --batch 4 --warmup 2 --steps 6
  done
  [ "${CHECKPOINTED:-1}" = 1 ] && run "andes-$bin-model-bf16-mixed-checkpointed" "/tmp/bin/andes-$bin" bench train \
    --config "$MODEL" --device cuda --precision bf16-mixed --activation-checkpointing --seq-len 1024 --batch 4 \
    --warmup 2 --steps 6
  sleep 1; kill $STAMPER 2>/dev/null
  echo "$bin: $(grep -c . "$R/compile-$bin.log") kernels compiled, the last at $(tail -n1 "$R/compile-$bin.log" | cut -d' ' -f1) s"
done
# Loss curves of real runs in each precision: the tiny recipe, and CURVE_STEPS steps of the
# 0.6B recipe from one random initialisation (CURVES=0 leaves them out).
CURVE_BIN=${CURVE_BIN:-${BINS##* }}
if [ "${CURVES:-1}" = 1 ]; then
  A=/tmp/bin/andes-$CURVE_BIN
  $A init --config "$MODEL" --tokenizer fixtures/tokenizer --out /tmp/model-init > /dev/null
  for precision in f32 bf16-mixed; do
    run "curve-tiny-$precision" $A train --config configs/recipes/tiny/pretrain.toml --out "/tmp/tiny-$precision" \
      --quiet --set 'train.device="cuda"' --set "train.precision=\"$precision\""
    run "curve-model-$precision" $A train --config configs/recipes/gpu/pretrain-0.6b.toml --out "/tmp/model-$precision" \
      --quiet --set model.checkpoint=/tmp/model-init --set "train.steps=${CURVE_STEPS:-40}" --set train.eval_every=20 \
      --set "train.precision=\"$precision\""
    cp "/tmp/tiny-$precision/metrics.jsonl" "$R/curve-tiny-$precision.jsonl"
    cp "/tmp/model-$precision/metrics.jsonl" "$R/curve-model-$precision.jsonl"
  done
fi
# PEER_SPECS: "PRECISION ATTENTION [--compile]" entries, comma-separated; torch.compile
# gets COMPILE_LIMIT seconds (its first steps compile for minutes).
PEER_SPECS=${PEER_SPECS:-"tf32 sdpa,bf16-mixed sdpa,bf16-mixed sdpa --compile,bf16-mixed eager"}
if [ "$PEERS" = 1 ]; then
  IFS=, read -ra specs <<< "$PEER_SPECS"
  for spec in "${specs[@]}"; do
    set -- $spec
    name="peer-$1-$2${3:+-compile}"
    limit=$STEP_LIMIT; [ -n "${3:-}" ] && limit=${COMPILE_LIMIT:-360}
    STEP_LIMIT=$limit run "$name" python3 scripts/bench/train_peer.py \
      --config "$MODEL" --device cuda --precision "$1" --attn "$2" ${3:-} --seq-len 1024 --batch 4
  done
fi
# BIG=1: the 1.7B and 4B shapes in bf16-mixed (andes with and without activation
# checkpointing) beside PyTorch's autocast step.
if [ "${BIG:-0}" = 1 ]; then
  A=/tmp/bin/andes-$CURVE_BIN
  for big in qwen3-1.7b qwen3-4b; do
    for checkpointing in "" --activation-checkpointing; do
      run "andes-$CURVE_BIN-$big-bf16-mixed${checkpointing:+-checkpointed}" $A bench train \
        --config "configs/models/$big.json" --device cuda --precision bf16-mixed $checkpointing \
        --seq-len 1024 --batch 4 --warmup 2 --steps 4
    done
    run "peer-$big-bf16-mixed-sdpa" python3 scripts/bench/train_peer.py --config "configs/models/$big.json" \
      --device cuda --precision bf16-mixed --attn sdpa --seq-len 1024 --batch 4 --warmup 2 --steps 4
  done
fi
tar -czf "$OUT/results.tar.gz" -C $R .
if [ "${SAVE_ENV:-1}" = 1 ] && [ -d target/environment ]; then
  tar -czf /tmp/environment.tar.gz -C target environment
  if [ "$(stat -c %s /tmp/environment.tar.gz)" -gt 15000000 ]; then
    split -b 15000000 /tmp/environment.tar.gz "$OUT/environment.tar.gz.part-"
  else
    cp /tmp/environment.tar.gz "$OUT/"
  fi
fi
