#!/usr/bin/env bash
# The 1+N quality table: one quantized base per bits-per-weight budget, and the same LoRA
# adapter (the recipe set's lora.toml, "Define X." conversations) trained against each package.
# P is the recipe set's pretrain.toml run (from INIT_CONFIG drawn by `andes init` when set). For
# each budget B (the Dimensity 9500 planner's mix of formats at B bpw):
#   GPTQ:          andes quantize P --bpw B                                  -> package G
#   QAT:           the set's qat.toml from P on G's plan, packed             -> package Q
#   QAT + distill: the same distilled from P (weight 0.5)                    -> package D
# and for each package its prose perplexity (andes eval --documents) and the adapter's task
# perplexity (the lora run's held-out NLL against the package), each ÷ the float model's
# (P, and the same adapter on float P). QAT trains more steps of prose than P saw, so the
# table has the control those steps alone give: P trained by qat.toml as a float pretraining
# (same data, steps, learning rate and schedule), with its own adapter.
# With LLAMACPP (a ggml_roundtrip binary, scripts/bench/llamacpp_peer) the table ends with
# llama.cpp's types applied to P's linears (IQ types with an importance matrix computed by
# scripts/bench/llamacpp_peer/qwen3_numpy.py), scored by the same prose measure; PYTHON then
# names a Python with numpy, safetensors and tokenizers.
#
# Every figure is kept in OUT/nll/, so a second run with the same OUT goes on where the first
# stopped (budgets split over two calls of a GPU machine, say).
#
# usage: scripts/bench/one_base.sh [ANDES_BINARY] [OUT_DIR] [BUDGETS...]
# env: RECIPES (configs/recipes/tiny), INIT_CONFIG, DEVICE (cpu; quantize and eval),
#      WINDOW (eval and calibration window; the binary's default when unset), JOBS (1: budgets
#      at once), LLAMACPP, LLAMACPP_TYPES (TYPE:[imatrix] ...), PYTHON (python3), LORA_INIT
#      (zero-update: how the adapters on the packages start, `[lora] init`; another value keeps
#      its adapters' figures apart in OUT, so one OUT holds the table for each), QAT_VARIANTS
#      (qat distill: which QAT columns run; the others say not run), SENSITIVITY (divergence:
#      the planner's `andes quantize --sensitivity`; another measure keeps its plans' files
#      apart), ADAPTER_DISTILL (unset; a weight such as 0.5 has the adapters on the packages
#      distil from float P with its adapter, `[distill]` of their lora runs, their figures
#      kept apart, and adds the rows of the same distillation on float P and on the control,
#      their like-for-like references)
set -euo pipefail
cd "$(dirname "$0")/../.."
A=$(realpath "${1:-target/release/andes}")
OUT=${2:-$(mktemp -d)}
shift 2 || true
BUDGETS=${*:-4 3 2 1.8}
RECIPES=${RECIPES:-configs/recipes/tiny}
DEVICE=${DEVICE:-cpu}
JOBS=${JOBS:-1}
LORA_INIT=${LORA_INIT:-zero-update}
QAT_VARIANTS=${QAT_VARIANTS-qat distill}
SENSITIVITY=${SENSITIVITY:-divergence}
ADAPTER_DISTILL=${ADAPTER_DISTILL:-}
PYTHON=${PYTHON:-python3}
window=(); [ -n "${WINDOW:-}" ] && window=(--window "$WINDOW")
mkdir -p "$OUT/nll"

# once NAME COMMAND...: the number COMMAND prints, computed once and kept in OUT/nll/NAME.
once() {
  local name=$1; shift
  [ -s "$OUT/nll/$name" ] || { "$@" > "$OUT/nll/$name.tmp" && mv "$OUT/nll/$name.tmp" "$OUT/nll/$name"; }
  cat "$OUT/nll/$name"
}
train() { "$A" train --quiet "$@" | sed -E 's/.*"final_eval_loss":([0-9.e-]+).*/\1/'; }
prose() { "$A" eval --model "$1" --device "$DEVICE" "${window[@]}" --documents datasets/gcide/gcide-eval.txt --json | sed -E 's/.*"mean_nll":([0-9.e-]+).*/\1/'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f (%.3f×)", exp(a), exp(a) / exp(b) }'; }
last() { echo "$1/checkpoints/$(cat "$1/checkpoints/latest")"; }
trained() { # trained DIR ARGS...: `andes train --out DIR ARGS...` to its end, resumed if cut short
  local dir=$1; shift
  [ -f "$dir.done" ] && return
  if [ -f "$dir/checkpoints/latest" ]; then train --resume "$dir" > /dev/null
  else rm -rf "$dir"; train --out "$dir" "$@" > /dev/null; fi
  touch "$dir.done"
}
adapter() { # adapter NAME CHECKPOINT [PACKAGE] [taught]: the task NLL of the lora adapter
  local extra=() name=$1
  if [ -n "${3:-}" ]; then
    extra=(--set "model.package=\"$3\"" --set "lora.init=\"$LORA_INIT\"")
    [ "$LORA_INIT" = zero-update ] || name=$name-$LORA_INIT
  fi
  if [ -n "${4:-}" ]; then # distilled from float P with its adapter
    extra+=(--set "distill.weight=$ADAPTER_DISTILL" --set "distill.teacher=\"$P\""
      --set "distill.teacher_adapter=\"$(last "$OUT/lora-float")\"")
    name=$name-taught$ADAPTER_DISTILL
  fi
  [ -s "$OUT/nll/task-$name" ] || rm -rf "$OUT/lora-$name" # a run cut short starts again
  once "task-$name" train --config $RECIPES/lora.toml --out "$OUT/lora-$name" --set "model.checkpoint=\"$2\"" "${extra[@]}"
}
# The set's qat recipe as a float pretraining: stage pretrain, no [quant] table.
awk '/^\[/ { skip = ($0 == "[quant]") } !skip' $RECIPES/qat.toml | sed 's/^stage = "qat"/stage = "pretrain"/' > "$OUT/control.toml"

init=()
if [ -n "${INIT_CONFIG:-}" ]; then
  [ -d "$OUT/init" ] || "$A" init --config "$INIT_CONFIG" --tokenizer fixtures/tokenizer --out "$OUT/init" > /dev/null
  init=(--set "model.checkpoint=\"$OUT/init\"")
fi
trained "$OUT/pretrain" --config $RECIPES/pretrain.toml "${init[@]}"
P=$(last "$OUT/pretrain")
float_prose=$(once prose-float prose "$P")
float_task=$(adapter float "$P")
taught=${ADAPTER_DISTILL:+taught}
trained "$OUT/float-more" --config "$OUT/control.toml" --set "model.checkpoint=\"$P\""
F=$(last "$OUT/float-more")

# key B: the name of budget B's files; plans made by another sensitivity measure than the
# planner's default keep theirs apart.
key() { if [ "$SENSITIVITY" = divergence ]; then echo "$1"; else echo "$1-$SENSITIVITY"; fi; }
budget_row() { # budget_row B: the table's row of budget B, into OUT/row-$(key B).md
  local B=$1 K G row tasks variant distill C
  K=$(key "$B") G=$OUT/gptq-$K
  [ -f "$G/manifest.json" ] || "$A" quantize --model "$P" --target dimensity9500 --bpw "$B" \
    --sensitivity "$SENSITIVITY" --calib datasets/gcide/gcide-sample.txt ${WINDOW:+--seq-len $WINDOW} --device "$DEVICE" \
    --cache "$OUT/cache-$B" --out "$G" > /dev/null
  row="| ${K/-/, } ($(grep -m1 -o '"bpw_linears": *[0-9.]*' "$G/manifest.json" | sed -E 's/.*: *//' | xargs printf '%.2f')) | $(ratio "$(once "prose-gptq-$K" prose "$G")" "$float_prose")"
  tasks="$(ratio "$(adapter "gptq-$K" "$P" "$G" $taught)" "$float_task")"
  # The qat recipe with G's plan in place of its uniform format (paths stay repo-relative).
  awk -v plan="$G/bit_plan.json" '/^\[/ { quant = ($0 == "[quant]") }
    quant && /^format = / { $0 = "plan = \"" plan "\"" } 1' $RECIPES/qat.toml > "$OUT/qat-$K.toml"
  for variant in qat distill; do
    if [[ " $QAT_VARIANTS " != *" $variant "* ]]; then
      row="$row | not run"; tasks="$tasks | not run"; continue
    fi
    distill=(); [ $variant = distill ] && distill=(--set distill.weight=0.5)
    trained "$OUT/$variant-$K" --config "$OUT/qat-$K.toml" --set "model.checkpoint=\"$P\"" "${distill[@]}"
    C=$(last "$OUT/$variant-$K")
    [ -f "$OUT/pkg-$variant-$K/manifest.json" ] || "$A" quantize --model "$C" --target dimensity9500 \
      --plan "$C/bit_plan.json" --device "$DEVICE" --out "$OUT/pkg-$variant-$K" > /dev/null
    row="$row | $(ratio "$(once "prose-$variant-$K" prose "$OUT/pkg-$variant-$K")" "$float_prose")"
    tasks="$tasks | $(ratio "$(adapter "$variant-$K" "$C" "$OUT/pkg-$variant-$K" $taught)" "$float_task")"
  done
  echo "$row | $tasks |" > "$OUT/row-$K.md"
}
running=0
for B in $BUDGETS; do
  budget_row "$B" &
  running=$((running + 1))
  [ $running -lt "$JOBS" ] || { wait -n; running=$((running - 1)); }
done
wait

echo "| bpw (plan) | prose ppl: GPTQ | QAT | QAT + distill | task ppl, adapter on: GPTQ package | QAT package | QAT + distill package |"
echo "|---|---|---|---|---|---|---|"
echo "| float P | $(ratio "$float_prose" "$float_prose") | | | $(ratio "$float_task" "$float_task") | | |"
echo "| float P trained as the QAT runs are (the control of the QAT columns) | | $(ratio "$(once prose-control prose "$F")" "$float_prose") | | | $(ratio "$(adapter control "$F")" "$float_task") | |"
if [ -n "$taught" ]; then
  echo "| float P, the adapter distilled as the package adapters are (weight $ADAPTER_DISTILL) | | | | $(ratio "$(adapter float "$P" "" taught)" "$float_task") | | |"
  echo "| the control, its adapter distilled so too | | | | | $(ratio "$(adapter control "$F" "" taught)" "$float_task") | |"
fi
for B in $BUDGETS; do cat "$OUT/row-$(key "$B").md"; done

[ -n "${LLAMACPP:-}" ] || exit 0
peer=scripts/bench/llamacpp_peer
[ -f "$OUT/imatrix.safetensors" ] || "$PYTHON" $peer/qwen3_numpy.py imatrix --model "$P" \
  --text datasets/gcide/gcide-sample.txt --window "${WINDOW:-64}" --out "$OUT/imatrix.safetensors" > /dev/null
echo
echo "| llama.cpp type on P's linears | bpw | prose ppl |"
echo "|---|---|---|"
for spec in ${LLAMACPP_TYPES:-q4_K: q3_K: q2_K:imatrix iq2_xxs:imatrix iq1_m:imatrix}; do
  type=${spec%%:*} dir=$OUT/llamacpp-${spec/:/-}
  args=(--tool "$LLAMACPP" --type "$type" --model "$P" --out "$dir")
  [[ $spec == *:imatrix ]] && args+=(--imatrix "$OUT/imatrix.safetensors")
  bpw=$(once "bpw-$spec" sh -c "$PYTHON $peer/requantize.py ${args[*]} | sed -E 's/.*\"bpw_linears\": ([0-9.]+).*/\1/'")
  label=${type^^}; [[ $spec == *:imatrix ]] && label="$label + imatrix"
  echo "| $label | $(printf '%.3f' "$bpw") | $(ratio "$(once "prose-llamacpp-$spec" prose "$dir")" "$float_prose") |"
done
