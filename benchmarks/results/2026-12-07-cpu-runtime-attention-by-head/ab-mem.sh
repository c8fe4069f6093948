#!/usr/bin/env bash
# ab-mem.sh N BIN...: N interleaved rounds of a long decode (169-token prompt, 400 new) on the package PKG (README.md)
P="$(head -1 prompt.txt) =>"
for ((r = 0; r < $1; r++)); do
  for b in "${@:2}"; do
    $b generate --greedy --json --int8-activations --threads 2 --model ${PKG:-package} --max-new-tokens ${NEW:-400} --prompt "$P" ${EXTRA:-} | python3 -c "import json,sys; r=json.load(sys.stdin); print('$b', round(r['prefill_tokens_per_s'],1), round(r['decode_tokens_per_s'],2), round(r['peak_memory_mib']), hash(tuple(r['token_ids'])) % 100000)"
  done
done
