#!/usr/bin/env bash
# The 1+N quality table on the tiny Qwen3 (CPU, a few minutes): one quantized base per bits-
# per-weight budget, and the same LoRA adapter (configs/recipes/tiny/lora.toml, "Define X."
# conversations) trained against each package. P is the tiny model pretrained 120 steps on
# GCIDE prose. For each budget B (the Dimensity 9500 planner's mix of formats at B bpw):
#   GPTQ:          andes quantize P --bpw B                                  -> package G
#   QAT:           stage qat from P on G's plan (40 steps of prose), packed  -> package Q
#   QAT + distill: the same distilled from P (weight 0.5)                    -> package D
# and for each package its prose perplexity (andes eval --documents) and the adapter's task
# perplexity (the lora run's held-out NLL against the package), each ÷ the float model's
# (P, and the same adapter on float P). QAT trains 40 more steps of prose than P saw, so the
# table has the control those steps alone give: P trained 40 more float steps (same data,
# learning rate and schedule), with its own adapter.
# usage: scripts/bench/one_base_tiny.sh [ANDES_BINARY] [OUT_DIR] [BUDGETS...]
set -euo pipefail
cd "$(dirname "$0")/../.."
A=${1:-target/release/andes}
OUT=${2:-$(mktemp -d)}
shift 2 || true
BUDGETS=${*:-4 3 2 1.8}
mkdir -p "$OUT"
train() { "$A" train --quiet "$@" | sed -E 's/.*"final_eval_loss":([0-9.e-]+).*/\1/'; }
prose() { "$A" eval --model "$1" --documents datasets/gcide/gcide-eval.txt --json | sed -E 's/.*"mean_nll":([0-9.e-]+).*/\1/'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f (%.3f×)", exp(a), exp(a) / exp(b) }'; }
train --config configs/recipes/tiny/pretrain.toml --out "$OUT/pretrain" > /dev/null
P=$OUT/pretrain/checkpoints/step-000120
adapter() { # adapter NAME CHECKPOINT [PACKAGE]: the task NLL of the lora adapter
  local extra=(); [ -n "${3:-}" ] && extra=(--set "model.package=\"$3\"")
  train --config configs/recipes/tiny/lora.toml --out "$OUT/lora-$1" --set "model.checkpoint=\"$2\"" "${extra[@]}"
}
float_prose=$(prose "$P")
float_task=$(adapter float "$P")
train --config configs/recipes/tiny/pretrain.toml --out "$OUT/float-more" --set "model.checkpoint=\"$P\"" \
  --set train.steps=40 --set train.grad_accum=1 --set optimizer.lr=1e-3 --set optimizer.weight_decay=0.0 \
  --set schedule.warmup_steps=5 > /dev/null
F=$OUT/float-more/checkpoints/step-000040
echo "| bpw (plan) | prose ppl: GPTQ | QAT | QAT + distill | task ppl, adapter on: GPTQ package | QAT package | QAT + distill package |"
echo "|---|---|---|---|---|---|---|"
echo "| float P | $(ratio "$float_prose" "$float_prose") | | | $(ratio "$float_task" "$float_task") | | |"
echo "| float P + 40 prose steps (the control of the QAT columns) | | $(ratio "$(prose "$F")" "$float_prose") | | | $(ratio "$(adapter control "$F")" "$float_task") | |"
for B in $BUDGETS; do
  G=$OUT/gptq-$B
  "$A" quantize --model "$P" --target dimensity9500 --bpw "$B" --calib datasets/gcide/gcide-sample.txt \
    --cache "$OUT/cache" --out "$G" > /dev/null
  row="| $B ($(grep -m1 -o '"bpw_linears": *[0-9.]*' "$G/manifest.json" | sed -E 's/.*: *//' | xargs printf '%.2f')) | $(ratio "$(prose "$G")" "$float_prose")"
  tasks="$(ratio "$(adapter "gptq-$B" "$P" "$G")" "$float_task")"
  # The qat recipe with G's plan in place of its uniform format (paths stay repo-relative).
  sed "s#^format = \"int2-g64-asym\"#plan = \"$G/bit_plan.json\"#" configs/recipes/tiny/qat.toml > "$OUT/qat-$B.toml"
  for variant in qat distill; do
    distill=(); [ $variant = distill ] && distill=(--set distill.weight=0.5)
    train --config "$OUT/qat-$B.toml" --out "$OUT/$variant-$B" --set "model.checkpoint=\"$P\"" \
      "${distill[@]}" > /dev/null
    C=$OUT/$variant-$B/checkpoints/step-000040
    "$A" quantize --model "$C" --target dimensity9500 --plan "$C/bit_plan.json" --out "$OUT/pkg-$variant-$B" > /dev/null
    row="$row | $(ratio "$(prose "$OUT/pkg-$variant-$B")" "$float_prose")"
    tasks="$tasks | $(ratio "$(adapter "$variant-$B" "$C" "$OUT/pkg-$variant-$B")" "$float_task")"
  done
  echo "$row | $tasks |"
done
