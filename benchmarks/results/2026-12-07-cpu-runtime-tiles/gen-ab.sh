#!/bin/bash
# gen-ab.sh ROUNDS: two andes builds, OLD and NEW (paths), interleaved on the int4 package of
# `cargo xtask bench runtime` (in BENCH, default target/bench/runtime): decode tok/s, prefill
# tok/s, accepted drafts and a hash of the tokens, without and with prompt-lookup drafting 3.
cd "${BENCH:-target/bench/runtime}"
for i in $(seq "$1"); do
  for spec in 0 3; do
    for b in OLD NEW; do
      s=""; [ $spec -gt 0 ] && s="--speculate $spec"
      r=$("${!b}" generate --model package-int4 --prompt "The meaning of the word is the meaning" --greedy --threads 2 --max-new-tokens 64 --int8-activations $s --json 2>/dev/null | tail -1 | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print("%.2f %.2f %d %s" % (d["decode_tokens_per_s"], d["prefill_tokens_per_s"], d["accepted"], hash(tuple(d["token_ids"]))))')
      echo "$b spec=$spec $r"
    done
  done
done
