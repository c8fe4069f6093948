#!/usr/bin/env bash
# long.sh N ANDES...: N interleaved rounds of `cargo xtask bench runtime`'s checkpoint (BENCH, default
# target/bench/runtime) decoding 400 tokens after the 169-token prompt of prompt.txt (" =>"
# appended), 2 threads: andes' int4 package with --int8-activations (each build ANDES), and llama.cpp's Q4_K_M
# with its attention off and on (scripts/bench/runtime_llamacpp.py, $PYTHON).
B=${BENCH:-target/bench/runtime} HERE=$(dirname "$0")
P="$(head -1 "$HERE/prompt.txt") =>"
for ((r = 0; r < $1; r++)); do
  for andes in "${@:2}"; do
    $andes generate --greedy --json --int8-activations --threads 2 --model $B/package-int4 \
      --max-new-tokens 400 --prompt "$P" | python3 -c "import json,sys; r=json.load(sys.stdin); \
      print(json.dumps({'engine': 'andes int4-g128', 'build': '$andes', 'round': $r, **{k: r[k] \
      for k in ('prompt_tokens', 'prefill_tokens_per_s', 'decode_tokens_per_s', 'peak_memory_mib')}}))"
  done
  for fa in "" --flash-attn; do
    ${PYTHON:-python3} scripts/bench/runtime_llamacpp.py --model $B/qwen3-0.6b --work $B/gguf \
      --threads 2 --types Q4_K_M --prompt "$P" --new-tokens 400 $fa | python3 -c "import json,sys; \
      r=json.loads(sys.stdin.read().splitlines()[-1]); r.pop('token_ids', None); r['round'] = $r; print(json.dumps(r))"
  done
done
