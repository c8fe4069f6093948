#!/usr/bin/env bash
# Base QAT against GPTQ on the tiny Qwen3 (CPU, a minute): the tiny model pretrained on GCIDE
# prose (configs/recipes/tiny/pretrain.toml, 120 steps) is the float model P; then, at
# FORMAT (default int2-g64-asym, 2.38 bpw), the held-out perplexity of
#   GPTQ(P);  GPTQ of P trained 40 more float steps (the control: as many steps on the same
#   data as QAT gets);  QAT(P), 40 steps;  QAT(P) distilled from P (weight 0.5, T = 1).
# Each quantized model is the package `andes quantize` wrote, scored by `andes eval`.
# usage: [FORMAT=int1-g64-sym] scripts/bench/qat_tiny.sh [ANDES_BINARY] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
A=${1:-target/release/andes}
OUT=${2:-$(mktemp -d)}
FORMAT=${FORMAT:-int2-g64-asym}
mkdir -p "$OUT"
train() { "$A" train --quiet "$@" > /dev/null; }
eval_nll() { "$A" eval --model "$1" --documents datasets/gcide/gcide-eval.txt --json | sed -E 's/.*"mean_nll":([0-9.e-]+).*/\1/'; }
package() { # package MODEL PLAN OUT
  "$A" quantize --model "$1" --target dimensity9500 --plan "$2" --calib datasets/gcide/gcide-sample.txt \
    --cache "$3.cache" --out "$3" > /dev/null
}
train --config configs/recipes/tiny/pretrain.toml --out "$OUT/pretrain"
P=$OUT/pretrain/checkpoints/step-000120
train --config configs/recipes/tiny/pretrain.toml --out "$OUT/float-more" --set "model.checkpoint=\"$P\"" \
  --set train.steps=40 --set train.grad_accum=1 --set optimizer.lr=1e-3 --set optimizer.weight_decay=0.0 \
  --set schedule.warmup_steps=5
Q=(--config configs/recipes/tiny/qat.toml --set "model.checkpoint=\"$P\"" --set "quant.format=\"$FORMAT\"")
train "${Q[@]}" --out "$OUT/qat"
train "${Q[@]}" --out "$OUT/qat-distill" --set distill.weight=0.5
PLAN=$OUT/qat/checkpoints/step-000040/bit_plan.json
package "$P" "$PLAN" "$OUT/pkg-gptq"
package "$OUT/float-more/checkpoints/step-000040" "$PLAN" "$OUT/pkg-gptq-more"
package "$OUT/qat/checkpoints/step-000040" "$PLAN" "$OUT/pkg-qat"
package "$OUT/qat-distill/checkpoints/step-000040" "$PLAN" "$OUT/pkg-qat-distill"
float=$(eval_nll "$P")
bpw=$(grep -m1 '"bpw_linears"' "$OUT/qat/quantization.json" | sed -E 's/[^0-9.]//g' | xargs printf '%.2f')
echo "| model ($FORMAT, $bpw bpw) | held-out NLL | perplexity | ÷ float |"
echo "|---|---|---|---|"
row() { awk -v n="$2" -v f="$float" -v name="$1" 'BEGIN { printf "| %s | %.4f | %.2f | %.3f× |\n", name, n, exp(n), exp(n) / exp(f) }'; }
row "float P (pretrained 120 steps)" "$float"
row "GPTQ(P)" "$(eval_nll "$OUT/pkg-gptq")"
row "GPTQ(P + 40 float steps)" "$(eval_nll "$OUT/pkg-gptq-more")"
row "QAT(P), 40 steps, packed" "$(eval_nll "$OUT/pkg-qat")"
row "QAT(P) distilled from P, 40 steps, packed" "$(eval_nll "$OUT/pkg-qat-distill")"
