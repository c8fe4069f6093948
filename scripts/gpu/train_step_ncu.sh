#!/usr/bin/env bash
# Where one training step's GPU time goes, andes beside PyTorch on the same card: the device
# time of every kernel (Nsight Compute, gpu__time_duration, clocks left alone) of a run with one
# step and of a run with two, for `andes bench train` (bf16-mixed, the 0.6B shape, seq 1024,
# 4 windows) and for scripts/bench/train_peer.py at the same shape (bf16 autocast + SDPA, fused
# AdamW). The second run minus the first is one steady step, initialisation and first-use work
# cancelled; scripts/bench/step_profile.py groups it by kind of kernel. A plain timed run of
# each comes first (it also fills the kernel cache, so the profiled runs compile nothing).
#
# Needs: an NVIDIA GPU with its driver, Nsight Compute (`ncu`), Python with PyTorch and
# transformers, and the andes release binary xz-compressed at .carry/andes-cuda-untuned.xz
# (`scripts/gpu/build-cuda.sh` makes it). ROUTINES="NAME..." also times the step with each
# fused matrix-product routine the patched build can name (ANDES_FUSED_MATMUL;
# scripts/gpu/patches). PEER_NCU=DIR takes the peer's two logs from an earlier run instead of
# profiling it again; NCU=0 stops after the timed runs. Results in the output folder (OUT,
# default ./out):
# ncu-{andes,peer}-{1,2}.csv.gz, bench-*.json, profile.md.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
MODEL=${MODEL:-configs/models/qwen3-0.6b.json}
PRECISION=${PRECISION:-bf16-mixed}
A=/tmp/andes; [ -x $A ] || { xz -dc .carry/andes-cuda-untuned.xz > $A && chmod +x $A; }
export CUDA_CACHE_PATH=$PWD/target/environment/cuda-jit CUDA_CACHE_MAXSIZE=4294967296
mkdir -p "$CUDA_CACHE_PATH"
printf '[compilation]\ncache = true\n' > cubecl.toml
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
shape=(--seq-len 1024 --batch 4)
# REPLAY=1 profiles the step replayed as one CUDA graph (`bench train --replay`): the two-step
# run minus the one-step run is then one replay, the capture's steps cancelling.
andes=($A bench train --config "$MODEL" --device cuda --precision "$PRECISION" "${shape[@]}")
[ "${REPLAY:-0}" = 1 ] && andes+=(--replay)
peer=(python3 scripts/bench/train_peer.py --config "$MODEL" --device cuda --precision "$PRECISION" --attn sdpa "${shape[@]}")
timed() { # timed NAME LIMIT COMMAND...
  local name=$1 limit=$2; shift 2; local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.json" 2> "/tmp/$name.err"
  echo "$name rc=$? $((SECONDS - start)) s: $(head -c 400 "$OUT/$name.json")"; grep -m2 -E "panicked|rror" "/tmp/$name.err" | cut -c1-300
}
timed bench-andes "${ANDES_LIMIT:-240}" "${andes[@]}" --warmup 2 --steps 4
for routine in ${ROUTINES:-}; do
  ANDES_FUSED_MATMUL=$routine timed "bench-andes-$routine" "${ROUTINE_LIMIT:-90}" "${andes[@]}" --warmup 2 --steps 3
done
[ "${NCU:-1}" = 1 ] || exit 0
WHO="andes peer"
if [ -n "${PEER_NCU:-}" ]; then
  WHO=andes; cp "$PEER_NCU"/ncu-peer-{1,2}.csv.gz "$OUT/"
else
  timed bench-peer 120 "${peer[@]}" --warmup 3 --steps 6
fi
for steps in 1 2; do
  for who in $WHO; do
    start=$SECONDS; unset -n command; declare -n command=$who
    timeout "${NCU_LIMIT:-150}" ncu --clock-control none --metrics gpu__time_duration.sum --csv \
      --log-file "/tmp/ncu-$who-$steps.csv" "${command[@]}" --warmup 0 --steps $steps > /dev/null 2> "/tmp/ncu-$who-$steps.err"
    echo "ncu $who $steps step(s) rc=$? $((SECONDS - start)) s, $(grep -c gpu__time_duration "/tmp/ncu-$who-$steps.csv") kernels"
    gzip -c "/tmp/ncu-$who-$steps.csv" > "$OUT/ncu-$who-$steps.csv.gz"
    grep -m2 -E "panicked|rror" "/tmp/ncu-$who-$steps.err" | cut -c1-300
  done
done
python3 scripts/bench/step_profile.py --andes "$OUT"/ncu-andes-{1,2}.csv.gz --peer "$OUT"/ncu-peer-{1,2}.csv.gz \
  | tee "$OUT/profile.md"
