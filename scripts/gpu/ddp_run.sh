#!/usr/bin/env bash
# One device-tool call on a multi-GPU machine (nvidia-h100-x2 or larger) for issue 7's figures:
# `andes train --devices N` (Burn's cuda backend, gradients summed by Burn's collective
# all-reduce, NCCL underneath) against PyTorch DDP (torchrun, NCCL), same machine, same call.
#
# Strong scaling on one global batch: a step is 4 windows of 1024 tokens of a Qwen3-0.6B-shaped
# model (f32). andes runs configs/recipes/gpu/ddp-0.6b.toml with grad_accum 4 on 1 GPU and on
# N GPUs (4/N micro-batches each), so the two runs must also give the same losses (TF32
# noise aside); torch runs 1 GPU × 4 micro-batches and N GPUs × 4/N (DDP, no_sync until the
# last). The 1-GPU andes run goes first: it compiles every kernel (NVRTC) and autotunes, and
# cubecl's on-disk caches (burn/persistence; cubecl.toml below) let the N-GPU run read them
# (run the other way round on 2026-11-26, the N-GPU run compiled on both devices at once and
# had not finished its first step after 300 s; BENCHMARKS.md).
#
# The andes binary comes gzipped as .carry/andes-cuda.gz (cargo build --release -p andes-cli
# --features cuda, after scripts/gpu/setup-offline-cuda-build.sh). Results land in
# $OUT/results.tar.gz (the device tool returns at most 8 files).
set -uo pipefail
# NVLink multicast stays off (device README): it can take the host's shared GPUs down.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export RUST_BACKTRACE=1 PYTHONUNBUFFERED=1
R=/tmp/results; rm -rf $R; mkdir -p $R
A=/tmp/andes
[ -x $A ] || { gunzip -c .carry/andes-cuda.gz > $A && chmod +x $A; }
# cudarc opens libnccl.so by that name; PyTorch's wheel ships libnccl.so.2.
NCCL_DIR=$(python3 -c "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib'))")
mkdir -p /tmp/nccl && ln -sf "$NCCL_DIR/libnccl.so.2" /tmp/nccl/libnccl.so
export LD_LIBRARY_PATH=/tmp/nccl:${LD_LIBRARY_PATH:-}
# Compiled kernels and autotune results go to disk and are reused by the next process; the
# minimal autotune level keeps the first step's compilation inside the call's time limit.
printf '[compilation]\ncache = true\n\n[autotune]\nlevel = "minimal"\n' > cubecl.toml
N=${GPUS:-$(nvidia-smi -L | wc -l)}
MICRO=4
MODEL=configs/models/qwen3-0.6b.json
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $R/gpu.txt
nvidia-smi topo -m >> $R/gpu.txt 2>&1
$A init --config $MODEL --tokenizer fixtures/tokenizer --out /tmp/q06 > /dev/null
for n in 1 $N; do
  start=$(date +%s)
  timeout ${LIMIT:-300} $A train --config configs/recipes/gpu/ddp-0.6b.toml --out /tmp/run-$n --quiet \
    --set model.checkpoint=/tmp/q06 --set train.grad_accum=$MICRO --devices $n \
    > $R/andes-$n.json 2> $R/andes-$n.err
  echo "andes 0.6B on $n GPU(s) rc=$? in $(( $(date +%s) - start )) s: $(cat $R/andes-$n.json)"; tail -3 $R/andes-$n.err
  cp /tmp/run-$n/metrics.jsonl $R/andes-metrics-$n.jsonl 2>/dev/null
done
for n in 1 $N; do
  timeout 120 torchrun --standalone --nproc_per_node $n scripts/bench/ddp_peer.py --config $MODEL \
    --dtype float32 --seq-len 1024 --batch 1 --accum $((MICRO / n)) --warmup 3 --steps 8 \
    > $R/peer-$n.json 2> $R/peer-$n.err
  echo "torch DDP on $n GPU(s) rc=$? $(cat $R/peer-$n.json)"
done
tar czf $OUT/results.tar.gz -C $R .
