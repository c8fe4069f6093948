#!/usr/bin/env bash
# One training step replayed as a CUDA graph against the eager step, on one GPU, in one call:
# `andes bench train` of MODEL (default the Qwen3-0.6B shape, seq 1024, BATCH windows) eager
# and with --replay, in bf16-mixed and f32, then PyTorch (scripts/bench/train_peer.py) in bf16
# autocast and TF32 with SDPA and, with COMPILE=1, bf16 autocast compiled. Every andes run is
# seeded alike, so the replayed run's losses must equal the eager run's from its fourth step
# (burn's capture trains three warm-up steps first). Results in OUT (default ./out).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
MODEL=${MODEL:-configs/models/qwen3-0.6b.json}
BATCH=${BATCH:-4}
A=/tmp/andes-cublas
xz -dc .carry/andes-cublas.xz > $A && chmod +x $A
export CUDA_CACHE_PATH=/tmp/cuda-jit
printf '[compilation]\ncache = true\n' > cubecl.toml
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
lscpu | grep "Model name" | tee -a "$OUT/gpu.txt"
shape=(--config "$MODEL" --device cuda --seq-len 1024 --batch "$BATCH")
# HEADS: the LM head's forms to run (ANDES_HEAD), each eager and replayed.
for precision in ${PRECISIONS:-bf16-mixed f32}; do
  for head in ${HEADS:-default}; do
    for mode in eager replay; do
      flag=(); [ $mode = replay ] && flag=(--replay)
      name=$mode-$precision-$head
      vars=(); [ "$head" != default ] && vars=(ANDES_HEAD=$head)
      env "${vars[@]}" timeout "${STEP_LIMIT:-150}" $A bench train "${shape[@]}" --precision "$precision" --warmup 2 --steps 6 "${flag[@]}" \
        > "/tmp/$name.json" 2> "/tmp/$name.err"
      echo "andes $name rc=$?: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("step ms", round(d["step_ms_median"], 1), "replay", d["replay"], "reserved GB", round(d["memory_reserved_bytes"] / 1e9, 1), "host ms", d["host_ms"], "losses", [round(x, 4) for x in d["losses"]])' "/tmp/$name.json" 2>&1)"; grep -m3 -E "panicked|rror" "/tmp/$name.err" | cut -c1-400
      { echo "{\"head\": \"$head\", \"mode\": \"$mode\", \"report\": $(cat "/tmp/$name.json")}"; } >> "$OUT/andes.jsonl"
    done
  done
done
PEER_SPECS=${PEER_SPECS:-"bf16-mixed sdpa,tf32 sdpa"}
[ "${COMPILE:-0}" = 1 ] && PEER_SPECS="$PEER_SPECS,bf16-mixed sdpa --compile"
IFS=, read -ra specs <<< "$PEER_SPECS"
for spec in "${specs[@]}"; do
  set -- $spec
  PYTHONUNBUFFERED=1 timeout "${PEER_LIMIT:-240}" python3 scripts/bench/train_peer.py "${shape[@]}" \
    --precision "$1" --attn "$2" ${3:-} > /tmp/peer.json 2> /tmp/peer.err
  echo "peer $spec rc=$?: $(tail -c 600 /tmp/peer.json)"; grep -m2 -E "Error|error" /tmp/peer.err | cut -c1-300
  tail -1 /tmp/peer.json >> "$OUT/peers.jsonl"
done
