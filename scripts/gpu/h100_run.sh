#!/usr/bin/env bash
# One device-tool call on the H100: GPU parity of the Qwen3 decoder, then matmul and forward
# throughput of andes against PyTorch in the same call. Prebuilt binaries come gzipped in
# .carry/ (built here: cargo build --release -p andes-cli --features wgpu, and the parity test
# binary), Vulkan loaders in .gl/ (see the device README). Results land in $OUT.
set -uo pipefail
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
mkdir -p /tmp/bin
for f in .carry/*.gz; do gunzip -c "$f" > "/tmp/bin/$(basename "$f" .gz)"; chmod +x "/tmp/bin/$(basename "$f" .gz)"; done
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
MODEL=configs/models/qwen3-0.6b.json
STEP_LIMIT=${STEP_LIMIT:-150}
DEVICES=${DEVICES:-wgpu}

for dev in $DEVICES; do
  bin=/tmp/bin/andes; [ -x "/tmp/bin/andes-$dev" ] && bin="/tmp/bin/andes-$dev"
  parity=/tmp/bin/qwen3_parity; [ -x "/tmp/bin/qwen3_parity-$dev" ] && parity="/tmp/bin/qwen3_parity-$dev"
  echo "== parity $dev"
  ANDES_TEST_DEVICE=$dev ANDES_FIXTURES=$PWD/fixtures timeout $STEP_LIMIT "$parity" --nocapture --test-threads 1 2>&1 | tee "$OUT/parity-$dev.log" | grep -E "relative|test |result"
  echo "== matmul $dev"
  for dt in f32 bf16; do
    timeout $STEP_LIMIT "$bin" bench matmul --size 8192 --device "$dev" --dtype "$dt"
  done | tee "$OUT/andes-matmul-$dev.jsonl"
  echo "== forward $dev"
  for dt in bf16 f32; do
    timeout $STEP_LIMIT "$bin" bench forward --config $MODEL --device "$dev" --dtype "$dt" \
      --prompt-len 512 --decode-tokens 128 --warmup 1 --repeats 3 | tee "$OUT/andes-h100-$dev-$dt.json"
  done
  echo "== train $dev"
  timeout $STEP_LIMIT "$bin" bench train --config $MODEL --device "$dev" --dtype bf16 \
    --seq-len 1024 --batch 4 --warmup 2 --steps 5 | tee "$OUT/andes-train-$dev.jsonl"
done

echo "== peer"
python3 scripts/bench/matmul_peer.py --sizes 8192 --dtypes float32,float32-tf32,bfloat16 --out "$OUT/peer-matmul.json" | tail -4
for dt in bf16 f32; do
  tdt=$([ $dt = bf16 ] && echo bfloat16 || echo float32)
  python3 scripts/bench/forward_peer.py --config $MODEL --device cuda --dtype $tdt \
    --prompt-len 512 --decode-tokens 128 --warmup 1 --repeats 3 --out "$OUT/peer-h100-$dt.json" | tail -1
  for dev in $DEVICES; do cp "$OUT/peer-h100-$dt.json" "$OUT/peer-h100-$dev-$dt.json"; done
done
rm -f "$OUT"/peer-h100-bf16.json "$OUT"/peer-h100-f32.json
python3 scripts/bench/train_peer.py --config $MODEL --device cuda --dtype bfloat16 \
  --seq-len 1024 --batch 4 --warmup 2 --steps 5 --out "$OUT/peer-train.json"
