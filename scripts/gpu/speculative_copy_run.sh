#!/usr/bin/env bash
# scripts/bench/speculative_copy.sh on the GPU machine: the Qwen3-0.6B shape with the GCIDE
# tokenizer (configs/models/qwen3-0.6b-gcide.json) pretrained on the GPU on passages followed by
# their copy, then packaged at int4-g128 and decoded on this machine's CPU with THREADS threads
# (default 2), with and without prompt lookup. TRAINER picks the trainer:
# - andes (default): the cuBLASLt build, from a model drawn by `andes init`, by
#   configs/recipes/gpu/pretrain-0.6b.toml's settings (4 windows of 1,024 tokens a step) for
#   STEPS steps (default 1000);
# - transformers: Hugging Face transformers (scripts/gpu/train_copy_transformers.py, the same
#   windows and optimizer) for STEPS steps (default 3000) or TRAIN_SECONDS seconds, whichever
#   ends first; andes is then only the CPU build, which decodes.
# The cost model then meets this host's CPU: `andes bench cpu` measures its bandwidth and
# kernels (THREADS threads, int8 activations, as the benchmark decodes) into a profile, and
# `andes inspect --target` estimates the package on it (cpu.json, estimate.json), beside the
# decode speed the benchmark measured.
# The work folder W (default runs/speculative-copy) is ignored by git, so a second call on the
# same warm machine goes on where the first stopped; LIMIT (default 500) seconds bound the
# benchmark so that what it measured comes back.
#
# Needs, in .carry/: andes-cublas.xz (scripts/gpu/build-cuda.sh) or, for TRAINER=transformers,
# andes-cpu.xz (`cargo build --release -p andes-cli`, the binary xz-compressed), and
# gcide-large.txt.xz (scripts/datasets/make_gcide_sample.py --large-bytes 100000000,
# xz-compressed). Results: OUT/speculative-copy.tar.gz (default OUT ./out).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
W=${W:-runs/speculative-copy}; mkdir -p "$W"
TRAINER=${TRAINER:-andes}
[ "$TRAINER" = transformers ] && BUILD=cpu
R=$W . "$(dirname "$0")/cublas_lib.sh"
prepare_run "$W/gpu.txt"
CONFIG=configs/models/qwen3-0.6b-gcide.json
if [ "$TRAINER" = transformers ]; then
  gcide_corpus
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    >> "$W/gpu.txt"
else
  gcide_model $CONFIG
fi
start=$SECONDS
TRAINER=$TRAINER MODEL_CONFIG=$CONFIG RECIPE=configs/recipes/gpu/pretrain-0.6b.toml \
  INIT="$W/init" SEQ_LEN=1024 BATCH=4 STEPS=${STEPS:-$([ "$TRAINER" = transformers ] && echo 3000 || echo 1000)} \
  DEVICE=cuda timeout "${LIMIT:-500}" bash scripts/bench/speculative_copy.sh $A "$W" 2> "$W/stderr.txt"
echo "speculative_copy.sh rc=$? after $((SECONDS - start)) s"
grep -m5 -E "rror|panicked" "$W/stderr.txt" | cut -c1-300
$A bench cpu --threads "${THREADS:-2}" --int8-activations \
  --profile-out "$W/cpu.toml" > "$W/cpu.json"
$A inspect --json --target "$W/cpu.toml" --context 300 "$W/package-int4-g128-sym" > "$W/estimate.json"
METRICS=$([ "$TRAINER" = transformers ] && echo transformers || echo pretrain)/metrics.jsonl
tail -1 "$W/$METRICS" | cut -c1-300
tar czf "$OUT/speculative-copy.tar.gz" -C "$W" --ignore-failed-read table.md rows.jsonl \
  prompts.txt quantize.json gpu.txt stderr.txt library.txt "$METRICS" transformers/train.json \
  cpu.json estimate.json
