#!/usr/bin/env bash
# Task accuracy on the tiny models (CPU, a few minutes), with `andes eval --task`: the float
# checkpoint, its Dimensity 9500 packages, and 1+N bundles whose adapter was trained against
# the package.
#   digits: the tiny AndesVL after configs/recipes/tiny/sft-vision.toml (P), scored on
#           datasets/images/digits/task-eval.jsonl (100 held-out digits, the ten replies
#           "The digit N." to choose from, chat template), and with a LoRA adapter (rank 8,
#           60 steps of the digit conversations) trained on P. Per budget B: P quantized at B
#           (package G), and the same adapter trained against G and bundled with it.
#   mixture: configs/recipes/tiny/mixture.toml's checkpoint on the OCR (exact match) and icon
#           (4-way multiple choice) held-out tasks.
#   define: configs/recipes/tiny/sft.toml's checkpoint on datasets/tasks/gcide-define.jsonl.
# usage: scripts/bench/harness_tiny.sh [ANDES_BINARY] [OUT_DIR] [BUDGETS...]
set -euo pipefail
cd "$(dirname "$0")/../.."
A=${1:-target/release/andes}
OUT=${2:-$(mktemp -d)}
shift 2 || true
BUDGETS=${*:-4 2 1.8}
mkdir -p "$OUT"
train() { "$A" train --quiet "$@" > /dev/null; }
task() { # task NAME MODEL TASK [ARGS...]: one JSON report, its accuracy line printed
  local name=$1 model=$2 file=$3; shift 3
  "$A" eval --model "$model" --task "$file" --apply-chat-template --json "$@" > "$OUT/$name.json"
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); a=d['accuracy']; b=d['bpw_linears']
print(f\"| {sys.argv[2]} | {'float' if b is None else f'{b:.2f}'} | {d['questions']} | {a['mean']:.2f} ± {a['stderr']:.2f} |\")" "$OUT/$name.json" "$name"
}
train --config configs/recipes/tiny/sft-vision.toml --out "$OUT/sft-vision"
P=$OUT/sft-vision/checkpoints/step-000400
DIGITS=datasets/images/digits/task-eval.jsonl
echo "| model | bpw (linears) | questions | accuracy ± stderr |"
echo "|---|---|---|---|"
digits_adapter() { # digits_adapter RUN [ARGS...]: the digit LoRA adapter on P (60 steps)
  local run=$1; shift
  train --config configs/recipes/tiny/lora.toml --out "$run" --set "model.checkpoint=\"$P\"" \
    --set 'data.train="datasets/images/digits/chat-train.jsonl"' \
    --set 'data.eval="datasets/images/digits/chat-eval.jsonl"' --set data.seq_len=48 \
    --set 'lora.name="digits"' --set train.steps=60 --set train.checkpoint_every=60 \
    --set train.eval_every=60 "$@"
}
task digits-float "$P" "$DIGITS"
# The same adapter trained on the float model: the reference of the bundles' adapters.
digits_adapter "$OUT/lora-float"
task digits-float-adapter "$P" "$DIGITS" --adapter "$OUT/lora-float/checkpoints/step-000060"
for B in $BUDGETS; do
  G=$OUT/package-$B
  "$A" quantize --model "$P" --calib datasets/gcide/gcide-sample.txt \
    --calib-images datasets/images/digits/chat-train.jsonl --seq-len 48 \
    --target dimensity9500 --bpw "$B" --out "$G" --cache "$OUT/cache-$B" > /dev/null
  task "digits-package-$B" "$G" "$DIGITS"
  digits_adapter "$OUT/lora-$B" --set "model.package=\"$G\""
  "$A" export --package "$G" --adapters "$OUT/lora-$B" --out "$OUT/bundle-$B" > /dev/null
  task "digits-bundle-$B-adapter" "$OUT/bundle-$B" "$DIGITS" --adapter digits
done
train --config configs/recipes/tiny/mixture.toml --out "$OUT/mixture"
M=$OUT/mixture/checkpoints/step-000120
task ocr-mixture "$M" datasets/images/ocr/task-eval.jsonl
task icons-mixture "$M" datasets/images/icons/task-eval.jsonl
train --config configs/recipes/tiny/sft.toml --out "$OUT/sft"
task define-sft "$OUT/sft/checkpoints/$(ls "$OUT/sft/checkpoints" | grep step | tail -1)" \
  datasets/tasks/gcide-define.jsonl
