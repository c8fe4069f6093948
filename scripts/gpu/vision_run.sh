#!/usr/bin/env bash
# Vision-tower images/s of andes (wgpu on the GPU, and the CPU backend) against transformers
# in the same run, for the SigLIP2-base tower of the AndesVL-0.6B preset and the AIMv2-large
# tower of AndesVL-1B, at 512×512 and at a 1024×768 native-resolution image.
#
# Needs: an NVIDIA GPU with its driver, Python with PyTorch and transformers, the andes release
# binary built with `cargo build --release -p andes-cli --features wgpu`, gzipped at
# .carry/andes-wgpu.gz, and NVIDIA's Vulkan loader packages (.deb) in .gl/, unpacked at start.
# Results land in $OUT/vision/ (OUT: the output folder, default ./out); `cargo xtask bench
# report $OUT/vision` prints the ratio table.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export RUST_BACKTRACE=0
R=$OUT/vision; mkdir -p $R /tmp/bin
gunzip -c .carry/andes-wgpu.gz > /tmp/bin/andes; chmod +x /tmp/bin/andes
nvidia-smi --query-gpu=name,driver_version --format=csv > $R/gpu.txt
lscpu | grep -m1 "Model name" >> $R/gpu.txt
LIMIT=${STEP_LIMIT:-60}
step() { # step NAME COMMAND...
  local name=$1; shift
  timeout "$LIMIT" "$@" > "$R/$name" 2> "$R/$name.err"; echo "$name rc=$? $(tail -c 300 "$R/$name")"
  grep -m2 -E "panicked|rror" "$R/$name.err" | cut -c1-300
}
for preset in 0.6b 1b; do
  C=configs/models/andesvl-$preset/config.json
  for size in "512 512 8" "768 1024 2"; do
    set -- $size; H=$1; W=$2; B=$3
    # Patch 14 (AIMv2): the nearest multiples of 14 below the nominal size.
    if [ $preset = 1b ]; then H=$((H / 14 * 14)); W=$((W / 14 * 14)); fi
    tag=$preset-${H}x$W
    step andes-gpu-f32-$tag.json /tmp/bin/andes bench vision --config $C --device wgpu --dtype f32 --height $H --width $W --batch $B --warmup 2 --repeats 5
    step peer-gpu-f32-$tag.json python3 scripts/bench/vision_peer.py --config $C --device cuda --dtype float32 --attn sdpa --height $H --width $W --batch $B
    step andes-gpu-bf16-$tag.json /tmp/bin/andes bench vision --config $C --device wgpu --dtype bf16 --height $H --width $W --batch $B --warmup 2 --repeats 5
    step peer-gpu-bf16-$tag.json python3 scripts/bench/vision_peer.py --config $C --device cuda --dtype bfloat16 --attn sdpa --height $H --width $W --batch $B
    # CPU (16 cores): the SigLIP2 tower at 512×512 only, to keep the run short.
    if [ $tag = 0.6b-512x512 ]; then
      step andes-cpu-f32-$tag.json env RAYON_NUM_THREADS=16 /tmp/bin/andes bench vision --config $C --device cpu --dtype f32 --height $H --width $W --batch 1 --warmup 1 --repeats 3
      step peer-cpu-f32-$tag.json python3 scripts/bench/vision_peer.py --config $C --device cpu --dtype float32 --attn sdpa --threads 16 --height $H --width $W --batch 1 --warmup 1 --repeats 3
    fi
  done
done
