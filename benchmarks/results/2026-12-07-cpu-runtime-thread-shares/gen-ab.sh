#!/bin/bash
# gen-ab.sh PACKAGE ROUNDS EXTRA...: `andes generate` of the session's first build
# (/tmp/andes-base) and its last (/tmp/andes-final), interleaved; medians of decode and prefill
# tok/s (2 threads, 64 tokens, greedy, --int8-activations), then every run.
P=$1; R=$2; shift 2
for i in $(seq $R); do for b in base final; do
/tmp/andes-$b generate --model $P --greedy --json --prompt "The meaning of the word is the meaning" --threads 2 --max-new-tokens 64 --int8-activations "$@" 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); print('$b', round(d['decode_tokens_per_s'],2), round(d['prefill_tokens_per_s'],2), d['accepted'], round(d['peak_memory_mib'],1))"
done; done > /tmp/gen-ab.out
for b in base final; do echo "$b decode median $(grep "^$b " /tmp/gen-ab.out | cut -d' ' -f2 | sort -n | sed -n "$(( (R+1)/2 ))p") prefill $(grep "^$b " /tmp/gen-ab.out | cut -d' ' -f3 | sort -n | sed -n "$(( (R+1)/2 ))p") | $(grep "^$b " /tmp/gen-ab.out | cut -d' ' -f2- | tr '\n' ';')"; done
