#!/usr/bin/env bash
# The GPU table of BENCHMARKS.md's "QALFT quality": `cargo xtask bench qalft` on a larger Qwen3
# (configs/models/qwen3-gcide-medium.json) pretrained on the GPU on all of GCIDE's prose but the
# held-out slice, then LoRA, RTN/GPTQ and QALFT rows, the runs spread over the GPUs (GPUS=1,2;
# JOBS runs at once). RESUME=1 goes on from what an earlier run on the same machine left
# (the bench's `--resume`: runs continue from their latest checkpoint).
#
# Needs: one or more NVIDIA GPUs with their driver (NVRTC), and, xz-compressed in .carry/:
# andes-cuda (cargo build --release -p andes-cli --features cuda), xtask (cargo build --release
# -p xtask), gcide-large.txt (scripts/datasets/make_gcide_sample.py --large-bytes 100000000;
# not read when datasets/gcide/gcide-large.txt exists). Results: qalft-medium.tar.gz in the
# output folder (OUT, default ./out); the rows are printed as they come.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export RUST_BACKTRACE=1
A=/tmp/andes; [ -x $A ] || { xz -dc .carry/andes-cuda.xz > $A && chmod +x $A; }
X=/tmp/xtask; [ -x $X ] || { xz -dc .carry/xtask.xz > $X && chmod +x $X; }
L=datasets/gcide/gcide-large.txt; [ -f $L ] || xz -dc .carry/gcide-large.txt.xz > $L
printf '[compilation]\ncache = true\n\n[autotune]\nlevel = "minimal"\n' > cubecl.toml
GPUS=${GPUS:-$(seq -s, 0 $(( $(nvidia-smi -L | wc -l) - 1 )))}
B=target/bench/qalft/qalft-medium
timeout ${LIMIT:-540} $X bench qalft --andes $A --device cuda --recipes configs/recipes/gpu/qalft-medium \
  --init-config configs/models/qwen3-gcide-medium.json --window 256 \
  --pretrain-steps ${PRETRAIN_STEPS:-600} --adapter-steps ${ADAPTER_STEPS:-300} \
  --jobs ${JOBS:-6} --gpus $GPUS $([ "${RESUME:-0}" = 1 ] && echo --resume)
echo "bench rc=$?"
tail -3 $B/pretrain/metrics.jsonl | cut -c1-200
tar czf $OUT/qalft-medium.tar.gz --ignore-failed-read -C $B table.md pretrain/metrics.jsonl \
  lora/metrics.jsonl $(cd $B 2>/dev/null && ls -d qalft-*/metrics.jsonl mixed-package/bit_plan.json 2>/dev/null)
