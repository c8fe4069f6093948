#!/usr/bin/env bash
# okv_long.sh ANDES OUT: KV-cache eviction on a model trained at the length it is read at
# (BENCHMARKS.md, "KV-cache eviction on a model trained at the length it reads"). `cargo xtask
# bench okv` reads 512 tokens with the tiny model its regression recipe trains at 64 tokens a
# window, so every position past 64 is one it never saw. This pretrains RECIPE's model (default:
# the tiny recipe, configs/recipes/tiny/pretrain.toml) at SEQ_LEN tokens a window (default 512)
# for STEPS steps (default 600) of BATCH windows (default the recipe's) on TEXT (default
# datasets/gcide/gcide-large.txt, made by scripts/datasets/make_gcide_sample.py --large-bytes),
# then reads the first SEQ_LEN tokens of the held-out text one at a time on the runtime
# (`andes eval --runtime`) with no eviction, the OKV-style rule and a recent window only, at
# budgets of 1/2, 1/4, 1/8 and 1/16 of SEQ_LEN. INIT (optional) is a checkpoint to start from;
# DEVICE (default cpu) trains there. Writes OUT/table.md, OUT/eval-*.json and the run in
# OUT/pretrain; a second call with the same OUT resumes or reuses the training.
set -uo pipefail
A=$1 OUT=$2
mkdir -p "$OUT"
SEQ_LEN=${SEQ_LEN:-512}
. "$(dirname "$0")/pretrain_lib.sh"
pretrain "$A" "$OUT" || exit 1
budgets="$((SEQ_LEN / 2)) $((SEQ_LEN / 4)) $((SEQ_LEN / 8)) $((SEQ_LEN / 16))"
measure() { # measure NAME ARGS...: one `andes eval --runtime` row, into OUT/eval-NAME.json
  "$A" eval --runtime --max-tokens "$SEQ_LEN" --json --text datasets/gcide/gcide-eval.txt \
    --model "$P" "${@:2}" > "$OUT/eval-$1.json" || exit 1
}
measure none
for budget in $budgets; do
  for policy in attention recent; do measure "$budget-$policy" --kv-budget $budget --kv-policy $policy; done
done
python3 - "$OUT" "$budgets" <<'EOF' | tee "$OUT/table.md"
import json, sys
out, budgets = sys.argv[1], sys.argv[2].split()
full = json.load(open(f"{out}/eval-none.json"))
print(f"First {full['tokens']} tokens of the held-out GCIDE text, one at a time; perplexity "
      f"without eviction {full['perplexity']:.3f}.\n")
print("| budget (entries/layer) | rule | perplexity | change | KV memory saved |")
print("|---|---|---|---|---|")
for budget in budgets:
    for policy, rule in (("attention", "OKV-style (attention, sinks, recent quarter)"),
                         ("recent", "recent window only")):
        row = json.load(open(f"{out}/eval-{budget}-{policy}.json"))
        saved = 1 - row["kv_bytes_peak"] / full["kv_bytes_peak"]
        change = row["perplexity"] / full["perplexity"] - 1
        print(f"| {budget} | {rule} | {row['perplexity']:.3f} | {100 * change:+.2f}% | {100 * saved:.1f}% |")
EOF
