#!/usr/bin/env bash
# speculative_copy.sh ANDES OUT: prompt lookup's speed-up where its drafts come true (BENCHMARKS.md,
# "Prompt lookup on a model that repeats its input"). `cargo xtask bench runtime` drafts for a
# random-weight model, whose output has little to look up, and `cargo xtask bench speculative`
# for the tiny model, whose products are too small to be worth batching. This pretrains
# RECIPE's model (scripts/bench/pretrain_lib.sh: RECIPE, INIT, SEQ_LEN, STEPS, BATCH, DEVICE)
# or, with TRAINER=transformers, a model of MODEL_CONFIG's shape in Hugging Face transformers on
# a GPU (scripts/gpu/train_copy_transformers.py: STEPS, default 3000, BATCH, SEQ_LEN, and
# TRAIN_SECONDS, a time limit) on GCIDE senses joined into passages of at least PASSAGE
# characters (default 300), each line a passage, " => " and the passage again: the shape of
# the on-device tasks that repeat their context (rewriting a message, reading text out of an image). It packages the model at FORMAT
# (default int4-g128-sym, `andes quantize --init rtn --target generic-cpu`, int8 tables), then
# continues PROMPTS (default 8) held-out passages ("passage =>") for NEW_TOKENS greedy tokens
# (default 96) on THREADS threads (default 2) with the integer products, without drafting and
# with prompt lookup drafting each K of KS (default "3 7"), ROUNDS times (default 3)
# interleaved. Every drafted run must give the undrafted run's tokens. Writes OUT/table.md and
# OUT/rows.jsonl.
set -uo pipefail
A=$1 OUT=$2
mkdir -p "$OUT"
PASSAGE=${PASSAGE:-300} FORMAT=${FORMAT:-int4-g128-sym} PROMPTS=${PROMPTS:-8}
NEW_TOKENS=${NEW_TOKENS:-96} THREADS=${THREADS:-2} KS=${KS:-3 7} ROUNDS=${ROUNDS:-3}
passages() { # consecutive lines of $1 joined by spaces into passages of at least PASSAGE characters
  awk -v n="$PASSAGE" '{ p = p (p == "" ? "" : " ") $0 } length(p) >= n { print p; p = "" }' "$1"
}
[ -f "$OUT/copy-train.txt" ] || passages datasets/gcide/gcide-large.txt \
  | awk '{ print $0 " => " $0 }' > "$OUT/copy-train.txt"
TEXT="$OUT/copy-train.txt"
if [ "${TRAINER:-andes}" = transformers ]; then
  P="$OUT/transformers"
  [ -f "$P/train.json" ] || python3 "$(dirname "$0")/../gpu/train_copy_transformers.py" \
    --config "$MODEL_CONFIG" --tokenizer fixtures/tokenizer --text "$TEXT" --out "$P" \
    --steps "${STEPS:-3000}" --batch "${BATCH:-4}" --seq-len "${SEQ_LEN:-1024}" \
    ${TRAIN_SECONDS:+--time-limit "$TRAIN_SECONDS"} > /dev/null || exit 1
else
  . "$(dirname "$0")/pretrain_lib.sh"
  pretrain "$A" "$OUT" || exit 1
fi
PKG="$OUT/package-$FORMAT"
if [ ! -d "$PKG" ]; then
  layers=$(grep -o '"num_hidden_layers": *[0-9]*' "$P/config.json" | grep -o '[0-9]*$')
  entries=$(for ((l = 0; l < layers; l++)); do
    for p in self_attn.{q,k,v,o}_proj mlp.{gate,up,down}_proj; do
      printf '{"name":"model.layers.%d.%s","format":"%s"},' $l $p "$FORMAT"
    done
  done)
  echo "{\"version\":1,\"layers\":[${entries%,}]}" > "$OUT/plan.json"
  "$A" quantize --init rtn --target generic-cpu --model "$P" --plan "$OUT/plan.json" \
    --out "$PKG" --json > "$OUT/quantize.json" || exit 1
fi
: > "$OUT/rows.jsonl"
passages datasets/gcide/gcide-eval.txt | head -n "$PROMPTS" > "$OUT/prompts.txt"
for ((round = 0; round < ROUNDS; round++)); do
  n=0
  while IFS= read -r passage; do
    for k in 0 $KS; do
      args=(generate --greedy --json --int8-activations --threads "$THREADS" --model "$PKG"
        --max-new-tokens "$NEW_TOKENS" --prompt "$passage =>")
      [ "$k" -gt 0 ] && args+=(--speculate "$k")
      "$A" "${args[@]}" | python3 -c "import json,sys; r=json.load(sys.stdin); \
        r.update(round=$round, prompt=$n, speculate=$k); print(json.dumps(r))" \
        >> "$OUT/rows.jsonl" || exit 1
    done
    n=$((n + 1))
  done < "$OUT/prompts.txt"
done
python3 - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, statistics, sys
out = sys.argv[1]
rows = [json.loads(line) for line in open(f"{out}/rows.jsonl")]
plain = {(r["round"], r["prompt"]): r for r in rows if r["speculate"] == 0}
for r in rows:
    if r["token_ids"] != plain[(r["round"], r["prompt"])]["token_ids"]:
        sys.exit(f"prompt lookup drafting {r['speculate']} changed the greedy tokens of prompt {r['prompt']}")
prompts = open(f"{out}/prompts.txt").read().splitlines()
copied = statistics.mean(
    r["text"].strip() == prompts[r["prompt"]][: len(r["text"].strip())]
    for r in plain.values())
first = rows[0]
print(f"{len(prompts)} held-out passages, {first['weight_bytes'] / 1e6:.0f} MB of weights a step; "
      f"{100 * copied:.0f}% of the plain greedy continuations are a prefix of their passage.\n")
print("| drafter | drafted | accepted | acceptance | decode tok/s (median) | speed-up |")
print("|---|---|---|---|---|---|")
speed = lambda k: statistics.median(r["decode_tokens_per_s"] for r in rows if r["speculate"] == k)
for k in sorted({r["speculate"] for r in rows}):
    mine = [r for r in rows if r["speculate"] == k]
    drafted = sum(r.get("drafted", 0) for r in mine)
    accepted = sum(r.get("accepted", 0) for r in mine)
    share = f"{100 * accepted / drafted:.1f}%" if drafted else "—"
    label = f"prompt lookup drafting {k}" if k else "none"
    print(f"| {label} | {drafted} | {accepted} | {share} | {speed(k):.2f} | {speed(k) / speed(0):.2f}× |")
PY
