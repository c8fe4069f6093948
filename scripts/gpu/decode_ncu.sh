#!/usr/bin/env bash
# The device time of every kernel of a Qwen3-0.6B prefill and one eager decode step on Burn's
# cuda backend, from Nsight Compute (gpu__time_duration, clocks left alone), to say which
# kernels a decode token's time goes to. cubecl's own profiling logger waits for every launch
# and its durations are not usable for this. ENV_TAR=FILE starts from a kernel cache an
# earlier run saved (the environment.tar.gz of h100_run.sh or bf16_forward_run.sh; a cold
# start compiles for minutes).
#
# Needs: an NVIDIA GPU with its driver (NVRTC), Nsight Compute (`ncu`), and the andes release
# binary built with `cargo build --release -p andes-cli --features cuda`, xz-compressed at
# .carry/andes-cuda.xz (or already unpacked at /tmp/andes). Result in the output folder (OUT,
# default ./out): ncu.csv (one row per kernel, in launch order), with gpu.txt and bench.json.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
A=/tmp/andes; [ -x $A ] || { xz -dc .carry/andes-cuda.xz > $A && chmod +x $A; }
[ -n "${ENV_TAR:-}" ] && mkdir -p target && tar -xzf "$ENV_TAR" -C target
printf '[compilation]\ncache = true\n\n[autotune]\nlevel = "minimal"\n' > cubecl.toml
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
timeout ${LIMIT:-300} ncu --clock-control none --metrics gpu__time_duration.sum --csv \
  --log-file $OUT/ncu.csv $A bench forward --config configs/models/qwen3-0.6b.json --device cuda \
  --dtype f32 --prompt-len 512 --decode-tokens 1 --warmup 0 --repeats 1 > $OUT/bench.json 2> $OUT/bench.err
echo "ncu rc=$? rows $(grep -c gpu__time_duration $OUT/ncu.csv)"; head -c 300 $OUT/bench.err
