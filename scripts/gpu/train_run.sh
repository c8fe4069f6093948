#!/usr/bin/env bash
# The GPU training figures on an H100: the training step of a Qwen3-0.6B-shaped model (seq
# 1024) in PyTorch (transformers eager + torch.optim.AdamW, f32 and bf16, batch 1 and 4), then,
# in the same run, a real `andes train` run of that model on GCIDE prose
# (configs/recipes/gpu/pretrain-0.6b.toml, wgpu f32), its GPU memory sampled by nvidia-smi
# every second; andes' tokens/s are those of metrics.jsonl.
#
# Needs: an NVIDIA GPU with its driver, Python with PyTorch and transformers, the andes release
# binary built with `cargo build --release -p andes-cli --features wgpu`, gzipped at
# .carry/andes-wgpu.gz, and NVIDIA's Vulkan loader packages (.deb) in .gl/, unpacked at start.
# Results land in the output folder (OUT, default ./out).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export RUST_BACKTRACE=0
gunzip -c .carry/andes-wgpu.gz > /tmp/andes && chmod +x /tmp/andes
A=/tmp/andes; R=$OUT; MODEL=configs/models/qwen3-0.6b.json
nvidia-smi --query-gpu=name,driver_version --format=csv > $R/gpu.txt
TRAIN_SECONDS=${TRAIN_SECONDS:-520}
# PEERS=0 skips the PyTorch steps (when they were measured in an earlier run on this card).
[ "${PEERS:-1}" = 1 ] && for dt in f32 bf16; do for batch in 1 4; do
  python3 scripts/bench/train_peer.py --config $MODEL --device cuda --precision $dt --attn eager --seq-len 1024 --batch $batch --warmup 2 --steps 5 > $R/peer-train-$dt-b$batch.json 2> /dev/null
  echo "peer $dt batch $batch: $(cat $R/peer-train-$dt-b$batch.json)"
done; done
$A init --config $MODEL --tokenizer fixtures/tokenizer --out /tmp/q06 > /dev/null
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -lms 1000 > $R/memory-during-train.csv &
SMI=$!
timeout $TRAIN_SECONDS $A train --config configs/recipes/gpu/pretrain-0.6b.toml --out /tmp/run --quiet \
  --set model.checkpoint=/tmp/q06 --set 'train.device="wgpu"' --set train.batch_size=1 --set train.grad_accum=4 > $R/andes-train-run.json 2> $R/andes-train-run.err
echo "andes train rc=$? $(cat $R/andes-train-run.json)"
kill $SMI
cp /tmp/run/metrics.jsonl /tmp/run/loss.svg $R/ 2>/dev/null
nvidia-smi --query-gpu=memory.used --format=csv >> $R/gpu.txt
