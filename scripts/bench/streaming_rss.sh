#!/usr/bin/env bash
# A training file larger than memory allows to read whole: a 1 GB corpus (GCIDE prose lines,
# numbered, repeated) trained on by the tiny pretrain recipe for 40 steps with the process's
# address space capped at 2 GB (prlimit), streamed through a shuffle buffer of 10,000 records
# and read whole. Prints each run's wall time, peak RSS and end (GNU time).
# usage: scripts/bench/streaming_rss.sh [ANDES_BINARY] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
A=${1:-target/release/andes}
OUT=${2:-$(mktemp -d)}
mkdir -p "$OUT"
CORPUS=$OUT/corpus-1g.txt
awk -v limit=1000000000 'NF { lines[n++] = $0 } END {
  for (i = 0; bytes < limit; i++) { line = lines[i % n] " (" i ")"; print line; bytes += length(line) + 1 }
}' datasets/gcide/gcide-sample.txt > "$CORPUS"
ls -l "$CORPUS"
run() {
  /usr/bin/time -f "%e s, max RSS %M KB, exit %x" prlimit --as=2000000000 "$A" train \
    --config configs/recipes/tiny/pretrain.toml --out "$OUT/$1" --set "data.train=\"$CORPUS\"" \
    --set train.steps=40 --set train.checkpoint_every=20 --set train.eval_every=20 --quiet "${@:2}" || true
}
echo "== streamed, shuffle buffer 10000, address space capped at 2 GB"
run streamed --set data.shuffle_buffer=10000 2>&1 | tail -2
echo "== read whole, same cap"
run whole 2>&1 | tail -3
