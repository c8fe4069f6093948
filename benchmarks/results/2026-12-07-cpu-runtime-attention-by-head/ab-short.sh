#!/usr/bin/env bash
# ab-short.sh N BIN...: N interleaved rounds of bench runtime's int4 row (16-token prompt, 64 new)
for ((r = 0; r < $1; r++)); do
  for b in "${@:2}"; do
    $b generate --greedy --json --int8-activations --threads 2 --model ${PKG:-package-int4} --max-new-tokens 64 --prompt "The meaning of the word is the meaning" | python3 -c "import json,sys; r=json.load(sys.stdin); print('$b', round(r['prefill_tokens_per_s'],1), round(r['decode_tokens_per_s'],2), hash(tuple(r['token_ids'])) % 100000)"
  done
done
