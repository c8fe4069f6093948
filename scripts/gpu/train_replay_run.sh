#!/usr/bin/env bash
# `andes train` with its step replayed as one CUDA graph, beside the same run stepping eagerly
# and PyTorch's step of the same shape, on one GPU, in one call: the recipe
# configs/recipes/gpu/pretrain-0.6b.toml (a Qwen3-0.6B-shaped model from `andes init`, GCIDE
# prose, 4 windows of 1024 tokens a step, bf16-mixed) for STEPS steps in each of MODES
# (`default`: the recipe as it is, which replays on cuda; `false`: --set train.replay=false;
# `env:VAR=VALUE[,VAR=VALUE]`: replayed, under those environment variables, e.g.
# `env:ANDES_ADAMW=composed` for AdamW's update composed of Burn's operations),
# each run's GPU memory sampled by nvidia-smi twice a second, then run_step.sh's
# `train_peers` (PEER_SPECS, default PyTorch bf16 autocast + SDPA; COMPILE=1 adds the compiled
# step). Each run's stdout, stderr, metrics.jsonl and memory samples land in OUT (default
# ./out) as results.tar.gz; a summary line of each andes run is printed: the first step's
# seconds (kernel compilation and, replayed, the capture), the median tokens/s of the steps
# after the second, the losses and the peak memory. TRACE=1 also traces every andes run's
# kernels (scripts/gpu/kernel_trace) and compares their median replays at the end
# (scripts/bench/kernel_trace.py, into $OUT/trace.md); traced runs are named with `-traced`, so
# an untraced run of the same mode in the same call keeps its own files.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
R=${R:-/tmp/results}; mkdir -p $R
STEP_LIMIT=${STEP_LIMIT:-240}
STEPS=${STEPS:-40}
MODEL=configs/models/qwen3-0.6b.json
BATCH=4
. "$(dirname "$0")/cublas_lib.sh"
prepare_run "$R/gpu.txt"
. "$(dirname "$0")/run_step.sh"
traced() { :; }
traced_suffix=
[ "${TRACE:-0}" = 1 ] && { . "$(dirname "$0")/kernel_trace/env.sh"; traced_suffix=-traced; }
$A init --config $MODEL --tokenizer fixtures/tokenizer --out /tmp/q06 > /dev/null
for mode in ${MODES:-default false}; do
  name=andes-train-replay-$(tr -c 'A-Za-z0-9.\n-' - <<< "$mode")$traced_suffix
  flag=(); environment=()
  case $mode in
    default) ;;
    env:*) IFS=, read -ra environment <<< "${mode#env:}" ;;
    *) flag=(--set "train.replay=$mode") ;;
  esac
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$R/$name-memory.csv" &
  smi=$!
  run "$name" env $(traced "$name") "${environment[@]}" $A train --config configs/recipes/gpu/pretrain-0.6b.toml --out "/tmp/$name" --quiet \
    --set model.checkpoint=/tmp/q06 --set "train.steps=$STEPS" --set train.eval_every=1000 "${flag[@]}"
  kill $smi
  cp "/tmp/$name/metrics.jsonl" "$R/$name-metrics.jsonl"
  tar -czf "$OUT/results.tar.gz" -C "$R" .
  python3 -c 'import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
memory = [int(l) for l in open(sys.argv[2]) if l.strip().isdigit()]
print(sys.argv[3], "steps", len(rows), "first step s", round(rows[0]["tokens"] / rows[0]["tokens_per_s"], 1),
      "median tok/s (steps 3+)", round(statistics.median(r["tokens_per_s"] for r in rows[2:])),
      "loss", [round(r["loss"], 4) for r in rows[:4]], "...", round(rows[-1]["loss"], 4),
      "peak MiB", max(memory, default=0))' "$R/$name-metrics.jsonl" "$R/$name-memory.csv" "$name" 2>&1 | tail -1
done
# BENCH="NAME=VAR=VALUE[,VAR=VALUE] ..." adds `andes bench train --replay` of the same shape,
# once a name, under those environment variables (`default=` for none).
for bench in ${BENCH:-}; do
  name=bench-replay-${bench%%=*}$traced_suffix
  run "$name" env $(traced "$name") $(tr , ' ' <<< "${bench#*=}") $A bench train --config $MODEL --device cuda \
    --precision bf16-mixed --seq-len 1024 --batch $BATCH --replay --warmup 3 --steps 10
done
if [ "${TRACE:-0}" = 1 ]; then
  traces=(); for t in "$R"/*-trace.tsv; do n=$(basename "$t" -trace.tsv); traces+=("$n=$t"); done
  python3 scripts/bench/kernel_trace.py "${traces[@]}" 2>&1 | tee "$OUT/trace.md"
  gzip -f "$R"/*-trace.tsv; tar -czf "$OUT/results.tar.gz" -C "$R" .
fi
PEER_SPECS=${PEER_SPECS:-"bf16-mixed sdpa"} train_peers
