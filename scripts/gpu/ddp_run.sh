#!/usr/bin/env bash
# Data-parallel training on a machine with two GPUs or more (BENCHMARKS.md, "Data-parallel
# training"):
# `andes train --devices N` (Burn's cuda backend, gradients summed by Burn's collective
# all-reduce, NCCL underneath) against PyTorch DDP (torchrun, NCCL), same machine, same run.
#
# Strong scaling on one global batch: a step is 4 windows of 1024 tokens of a Qwen3-0.6B-shaped
# model (f32). andes runs configs/recipes/gpu/ddp-0.6b.toml with grad_accum 4 on 1 GPU and on
# N GPUs (4/N micro-batches each), so the two runs must also give the same losses (TF32
# noise aside); torch runs 1 GPU × 4 micro-batches and N GPUs × 4/N (DDP, no_sync until the
# last). Kernels are compiled (NVRTC) and autotuned on first use and kept on disk
# (burn/persistence; cubecl.toml below): on a fresh machine run once with WARM=1, then again.
#
# Needs: NVIDIA GPUs with their driver (NVRTC), Python with PyTorch (torchrun, its NCCL wheel)
# and transformers, cuda-gdb (backtraces of runs still going at their limit), and the andes
# release binary built with `cargo build --release -p andes-cli --features cuda` (after
# scripts/gpu/setup-offline-cuda-build.sh), xz-compressed at .carry/andes-cuda.xz (or already
# unpacked at /tmp/andes). Results land in one archive, ddp-results.tar.gz, in the output
# folder (OUT, default ./out); progress goes to stdout as it happens, so a run cut short still
# shows how far it got.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
# NVLink multicast stays off: it can take the host's shared GPUs down.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export RUST_BACKTRACE=1 PYTHONUNBUFFERED=1
R=/tmp/results; rm -rf $R; mkdir -p $R
A=/tmp/andes
[ -x $A ] || { xz -dc .carry/andes-cuda.xz > $A && chmod +x $A; }
# cudarc opens libnccl.so by that name; PyTorch's wheel ships libnccl.so.2.
NCCL_DIR=$(python3 -c "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib'))")
mkdir -p /tmp/nccl && ln -sf "$NCCL_DIR/libnccl.so.2" /tmp/nccl/libnccl.so
export LD_LIBRARY_PATH=/tmp/nccl:${LD_LIBRARY_PATH:-}
# Compiled kernels and autotune results go to disk and are reused by the next process; the
# minimal autotune level keeps the first step's compilation inside the limits below.
printf '[compilation]\ncache = true\n\n[autotune]\nlevel = "minimal"\n' > cubecl.toml
N=${GPUS:-$(nvidia-smi -L | wc -l)}
# 1, 2, 4, ... GPUs, up to all of them.
COUNTS=1; c=2; while [ $c -le $N ]; do COUNTS="$COUNTS $c"; c=$((c * 2)); done
MICRO=4
MODEL=configs/models/qwen3-0.6b.json
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $R/gpu.txt
nvidia-smi topo -m >> $R/gpu.txt 2>&1
# GPU loss parity on the tiny recipe (TINY=1; its kernels compile separately, minutes on a
# fresh machine): the same 8 steps on 1 and N GPUs must give the same losses, as the CPU test
# data_parallel_training_matches_one_device_and_resumes_on_another_count does.
for n in $([ "${TINY:-0}" = 1 ] && echo 1 $N); do
  timeout ${LIMIT_TINY:-240} $A train --config configs/recipes/tiny/pretrain.toml --out /tmp/tiny-$n --quiet \
    --set train.device=cuda --set train.steps=8 --set train.eval_every=0 --devices $n \
    > $R/tiny-$n.json 2> $R/tiny-$n.err
  echo "tiny on $n GPU(s) rc=$?: $(cat $R/tiny-$n.json)"; tail -2 $R/tiny-$n.err
  cp /tmp/tiny-$n/metrics.jsonl $R/tiny-metrics-$n.jsonl 2>/dev/null
done
$A init --config $MODEL --tokenizer fixtures/tokenizer --out /tmp/q06 > /dev/null
# On a fresh machine the first process compiles for minutes (over 330 s for the 0.6B model on
# two GPUs at once, 2026-11-26): WARM=1 runs one step on one GPU first and nothing else, to be
# followed by a second run on the same machine, which reads the cached kernels.
if [ "${WARM:-0}" = 1 ]; then
  timeout ${LIMIT_WARM:-560} $A train --config configs/recipes/gpu/ddp-0.6b.toml --out /tmp/warm --quiet \
    --set model.checkpoint=/tmp/q06 --set train.steps=1 --devices 1
  echo "warm-up rc=$?"; exit 0
fi
for n in $COUNTS; do
  start=$(date +%s)
  limit=$([ $n = 1 ] && echo ${LIMIT1:-150} || echo ${LIMITN:-150})
  $A train --config configs/recipes/gpu/ddp-0.6b.toml --out /tmp/run-$n --quiet \
    --set model.checkpoint=/tmp/q06 --set train.grad_accum=$MICRO --devices $n \
    > $R/andes-$n.json 2> $R/andes-$n.err &
  P=$!
  while kill -0 $P 2>/dev/null && [ $(( $(date +%s) - start )) -lt $limit ]; do sleep 2; done
  if kill -0 $P 2>/dev/null; then
    # Still running at the limit: keep every thread's backtrace (debug-stripped binaries only
    # have frame names; a fully stripped one still shows the thread layout), then stop it.
    timeout 40 cuda-gdb -p $P -batch -ex "thread apply all bt 25" > $R/andes-$n.bt 2>&1
    kill -9 $P
  fi
  wait $P; rc=$?
  echo "andes 0.6B on $n GPU(s) rc=$rc in $(( $(date +%s) - start )) s: $(cat $R/andes-$n.json)"; tail -3 $R/andes-$n.err
  cp /tmp/run-$n/metrics.jsonl $R/andes-metrics-$n.jsonl 2>/dev/null
  cat $R/andes-metrics-$n.jsonl 2>/dev/null | cut -c1-150
done
for n in $COUNTS; do
  timeout ${LIMIT_PEER:-90} torchrun --standalone --nproc_per_node $n scripts/bench/ddp_peer.py --config $MODEL \
    --dtype float32 --seq-len 1024 --batch 1 --accum $((MICRO / n)) --warmup 3 --steps 8 \
    > $R/peer-$n.json 2> $R/peer-$n.err
  echo "torch DDP on $n GPU(s) rc=$? $(cat $R/peer-$n.json)"
done
tar czf $OUT/ddp-results.tar.gz -C $R .
