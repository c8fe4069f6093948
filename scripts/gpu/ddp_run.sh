#!/usr/bin/env bash
# Device-tool calls on a multi-GPU machine (nvidia-h100-x2 or larger) for issue 7's figures:
# `andes train --devices N` (Burn's cuda backend, gradients summed by Burn's collective
# all-reduce, NCCL underneath) against PyTorch DDP (torchrun, NCCL) on the same machine.
#
#   PHASE=check   the tiny recipe on 1 GPU and on N GPUs (losses must agree), the PyTorch DDP
#                 peer on 1 and N GPUs, and a first andes 0.6B run on 1 GPU that fills cubecl's
#                 on-disk PTX and autotune caches (its first step compiles every kernel)
#   PHASE=scale   andes 0.6B on 1 GPU and on N GPUs with warm caches (same warm machine)
#
# The andes binary comes gzipped as .carry/andes-cuda.gz (cargo build --release -p andes-cli
# --features cuda, after scripts/gpu/setup-offline-cuda-build.sh). Results land in
# $OUT/results-PHASE.tar.gz (the device tool returns at most 8 files).
set -uo pipefail
# NVLink multicast stays off (device README): it can take the host's shared GPUs down.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export RUST_BACKTRACE=1 PYTHONUNBUFFERED=1
R=/tmp/results-${PHASE:-check}; rm -rf $R; mkdir -p $R
A=/tmp/andes
[ -x $A ] || { gunzip -c .carry/andes-cuda.gz > $A && chmod +x $A; }
# cudarc opens libnccl.so by that name; PyTorch's wheel ships libnccl.so.2.
NCCL_DIR=$(python3 -c "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib'))")
mkdir -p /tmp/nccl && ln -sf "$NCCL_DIR/libnccl.so.2" /tmp/nccl/libnccl.so
export LD_LIBRARY_PATH=/tmp/nccl:${LD_LIBRARY_PATH:-}
N=$(nvidia-smi -L | wc -l)
MODEL=configs/models/qwen3-0.6b.json
[ -d /tmp/q06 ] || $A init --config $MODEL --tokenizer fixtures/tokenizer --out /tmp/q06 > /dev/null
run06() { # run06 GPUS TAG: the 0.6B recipe on GPUS GPUs, two windows per GPU per step
  local n=$1 tag=$2
  rm -rf /tmp/run-$tag
  timeout ${LIMIT:-400} $A train --config configs/recipes/gpu/ddp-0.6b.toml --out /tmp/run-$tag --quiet \
    --set model.checkpoint=/tmp/q06 --set train.grad_accum=$((2 * n)) --devices $n \
    > $R/andes-$tag.json 2> $R/andes-$tag.err
  echo "andes 0.6B $tag rc=$? $(cat $R/andes-$tag.json)"; tail -3 $R/andes-$tag.err
  cp /tmp/run-$tag/metrics.jsonl $R/metrics-$tag.jsonl 2>/dev/null
}
case "${PHASE:-check}" in
check)
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $R/gpu.txt
  nvidia-smi topo -m >> $R/gpu.txt 2>&1
  for n in 1 $N; do
    timeout 240 $A train --config configs/recipes/tiny/pretrain.toml --out /tmp/tiny-$n --quiet \
      --set train.device=cuda --set train.steps=24 --set train.grad_accum=$N --devices $n \
      > $R/tiny-$n.json 2> $R/tiny-$n.err
    echo "tiny on $n GPU(s) rc=$? $(cat $R/tiny-$n.json)"; tail -3 $R/tiny-$n.err
    cp /tmp/tiny-$n/metrics.jsonl $R/tiny-metrics-$n.jsonl 2>/dev/null
  done
  for n in 1 $N; do
    timeout 200 torchrun --standalone --nproc_per_node $n scripts/bench/ddp_peer.py --config $MODEL \
      --dtype float32 --seq-len 1024 --batch 1 --accum 2 --warmup 3 --steps 8 \
      > $R/peer-$n.json 2> $R/peer-$n.err
    echo "torch DDP on $n GPU(s) rc=$? $(cat $R/peer-$n.json)"
  done
  LIMIT=${LIMIT:-300} run06 1 warm1
  ;;
scale)
  run06 1 gpu1
  run06 $N gpu$N
  ;;
esac
tar czf $OUT/results-${PHASE:-check}.tar.gz -C $R .
