#!/usr/bin/env bash
# GPU parity of the Qwen3 decoder, then matmul, forward and training throughput of andes
# against PyTorch in the same run (written for an H100; it runs on any NVIDIA GPU, and gpu.txt
# names the card: the forward's files are called andes-h100-DEV-DTYPE.json and
# peer-h100-DEV-DTYPE.json whatever it is). Without the parity binary, the fixtures' greedy
# continuations and perplexities are checked through `andes generate` and `andes eval`.
# FIXTURES=0 leaves out the fixtures' checks, MATMUL=0 the matmul benchmark, TRAIN=0 the
# training one; DTYPES (default "bf16
# f32") the forward's precisions, each decoded eagerly and by graph replay (--replay).
# ENV_TAR=FILE unpacks a kernel and autotune cache (target/environment, as an earlier run
# saved it) so the run starts warm.
#
# Needs: an NVIDIA GPU with its driver, Python with PyTorch and transformers (the peers), and
# prebuilt binaries, gzipped or xz-compressed, in .carry/: andes-DEV and optionally
# qwen3_parity-DEV (the parity test binary), built with --features DEV for each backend DEV of
# DEVICES (default "wgpu cuda"); for wgpu, NVIDIA's Vulkan loader packages (.deb) in .gl/,
# unpacked at start. Everything lands in the output folder (OUT, default ./out):
# results.tar.gz (unpack it and run `cargo xtask bench report DIR`), and this run's kernel
# cache as environment.tar.gz.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
export RUST_BACKTRACE=0
R=/tmp/results; mkdir -p /tmp/bin $R
# Compiled kernels and autotune results persist on disk (burn/persistence) for the next process.
printf '[compilation]\ncache = true\n\n[autotune]\nlevel = "minimal"\n' > cubecl.toml
[ -n "${ENV_TAR:-}" ] && mkdir -p target && tar -xzf "$ENV_TAR" -C target
for f in .carry/*; do b=/tmp/bin/$(basename "${f%.*}"); case "$f" in *.xz) xz -dc "$f";; *) gunzip -c "$f";; esac > "$b"; chmod +x "$b"; done
nvidia-smi --query-gpu=name,driver_version --format=csv > $R/gpu.txt
MODEL=configs/models/qwen3-0.6b.json
STEP_LIMIT=${STEP_LIMIT:-120}
DEVICES=${DEVICES:-"wgpu cuda"}
step() { # step NAME COMMAND...: stdout to $R/NAME, first stderr lines to $R/NAME.err
  local name=$1; shift
  timeout "$STEP_LIMIT" "$@" > "$R/$name" 2> "$R/$name.err"; echo "$name rc=$? $(head -c 400 "$R/$name")"
  grep -m3 -E "panicked|rror" "$R/$name.err" | cut -c1-300
}
for dev in $DEVICES; do
  [ -x /tmp/bin/andes-$dev ] || continue
  A=/tmp/bin/andes-$dev
  if [ "${FIXTURES:-1}" = 0 ]; then
    :
  elif [ -x /tmp/bin/qwen3_parity-$dev ]; then
    ANDES_TEST_DEVICE=$dev ANDES_FIXTURES=$PWD/fixtures timeout $STEP_LIMIT /tmp/bin/qwen3_parity-$dev --nocapture --test-threads 1 > $R/parity-$dev.log 2>&1
    grep -E "relative|test result" $R/parity-$dev.log
  else
    for fx in fixtures/qwen3-*/; do
      ref() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" $fx/reference.json $1; }
      prompt=$(ref prompt)
      timeout $STEP_LIMIT $A generate --model $fx --device $dev --prompt "$prompt" --max-new-tokens 20 --greedy --json > $R/greedy-$dev-$(basename $fx).json 2>> $R/greedy-$dev.err
      timeout $STEP_LIMIT $A eval --model $fx --device $dev --text $fx/eval.txt --window $(ref eval_window) --stride $(ref eval_stride) --json > $R/eval-$dev-$(basename $fx).json 2>> $R/greedy-$dev.err
      python3 - $fx $R/greedy-$dev-$(basename $fx).json $R/eval-$dev-$(basename $fx).json <<'PY' | tee -a $R/greedy-$dev.txt
import json, sys
ref = json.load(open(sys.argv[1] + "/reference.json"))
ids = json.load(open(sys.argv[2]))["token_ids"]
ppl = json.load(open(sys.argv[3]))["perplexity"]
want = ref["greedy_ids"][-ref["greedy_new_tokens"]:]
print(sys.argv[1], "greedy ids", "identical" if ids == want else f"differ at {next(i for i, (a, b) in enumerate(zip(ids + [None] * 99, want)) if a != b)}",
      "perplexity rel err", abs(ppl - ref["eval_perplexity"]) / ref["eval_perplexity"])
PY
    done
  fi
  [ "${MATMUL:-1}" = 1 ] && for dt in f32 bf16; do step andes-matmul-$dev-$dt.json $A bench matmul --size 8192 --device $dev --dtype $dt; done
  for dt in ${DTYPES:-bf16 f32}; do
    step andes-h100-$dev-$dt.json $A bench forward --config $MODEL --device $dev --dtype $dt --prompt-len 512 --decode-tokens 128 --warmup 1 --repeats 3
    step andes-replay-$dev-$dt.json $A bench forward --config $MODEL --device $dev --dtype $dt --prompt-len 512 --decode-tokens 128 --warmup 1 --repeats 3 --replay
  done
  [ "${TRAIN:-1}" = 1 ] && step andes-train-$dev.json $A bench train --config $MODEL --device $dev --precision bf16 --seq-len 1024 --batch 4 --warmup 2 --steps 5
done
[ "${MATMUL:-1}" = 1 ] && step peer-matmul.json python3 scripts/bench/matmul_peer.py --sizes 8192 --dtypes float32,float32-tf32,bfloat16
for dt in ${DTYPES:-bf16 f32}; do
  tdt=$([ $dt = bf16 ] && echo bfloat16 || echo float32)
  python3 scripts/bench/forward_peer.py --config $MODEL --device cuda --dtype $tdt --prompt-len 512 --decode-tokens 128 --warmup 1 --repeats 3 --out $R/peer.json > /dev/null 2>&1
  echo "peer forward $dt: $(cat $R/peer.json)"
  for dev in $DEVICES; do cp $R/peer.json $R/peer-h100-$dev-$dt.json; done
done
if [ "${TRAIN:-1}" = 1 ]; then
  python3 scripts/bench/train_peer.py --config $MODEL --device cuda --precision bf16 --attn eager --seq-len 1024 --batch 4 --warmup 2 --steps 5 > $R/peer-train.json 2>/dev/null
  for dev in $DEVICES; do cp $R/peer-train.json $R/peer-train-$dev.json; done
fi
rm -f $R/peer.json $R/peer-train.json
tar czf "$OUT/results.tar.gz" -C /tmp results
tar czf "$OUT/environment.tar.gz" -C target environment
