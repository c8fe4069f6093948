#!/usr/bin/env bash
# Where the replayed step's GPU time goes, `andes train` beside `andes bench train --replay`:
# both under Nsight Systems with every kernel of the replayed CUDA graphs traced
# (`--cuda-graph-trace=node`), the Qwen3-0.6B shape, 4 windows of 1024 tokens, bf16-mixed.
# The trainer runs configs/recipes/gpu/pretrain-0.6b.toml (without its held-out data) for STEPS steps (default 12; the
# capture runs the step 3 times more); the bench replays 3 + STEPS - 3 times after its own 3
# warm-ups, so both execute STEPS + 3 steps. scripts/bench/nsys_kernels.py prints each kernel's
# milliseconds a step, side by side. Results in OUT (default ./out): *-kernels.csv,
# compare.md. Needs nsys (the CUDA toolkit's) and .carry/andes-cublas.xz.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
STEPS=${STEPS:-12}
MODEL=configs/models/qwen3-0.6b.json
. "$(dirname "$0")/cublas_lib.sh"
prepare_run "$OUT/gpu.txt"
NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems*/bin/nsys 2>/dev/null | head -1)
[ -n "$NSYS" ] || { echo "no nsys on this machine"; ls /usr/local/cuda/bin; exit 1; }
$A init --config $MODEL --tokenizer fixtures/tokenizer --out /tmp/q06 > /dev/null
trace() { # trace NAME COMMAND...
  local name=$1; shift; local start=$SECONDS
  timeout "${LIMIT:-240}" "$NSYS" profile --cuda-graph-trace=node --trace=cuda --sample=none \
    --force-overwrite=true -o "/tmp/$name" "$@" > "/tmp/$name.out" 2> "/tmp/$name.err"
  echo "$name rc=$? $((SECONDS - start)) s"; tail -c 300 "/tmp/$name.out"; grep -m3 -E "panicked|rror" "/tmp/$name.err"
  "$NSYS" stats --report cuda_gpu_kern_sum --format csv --force-export=true "/tmp/$name.nsys-rep" \
    > "$OUT/$name-kernels.csv" 2> /dev/null
}
# The recipe without held-out data, so that no evaluation's kernels join the trainer's.
grep -v '^eval = ' configs/recipes/gpu/pretrain-0.6b.toml > configs/recipes/gpu/pretrain-no-eval.toml
trace trainer $A train --config configs/recipes/gpu/pretrain-no-eval.toml --out /tmp/trainer-run --quiet \
  --set model.checkpoint=/tmp/q06 --set "train.steps=$STEPS" --set train.eval_every=1000
trace bench $A bench train --config $MODEL --device cuda --precision bf16-mixed --seq-len 1024 \
  --batch 4 --replay --warmup 3 --steps "$((STEPS - 3))"
python3 scripts/bench/nsys_kernels.py --steps $((STEPS + 3)) "$OUT/trainer-kernels.csv" "$OUT/bench-kernels.csv" \
  | tee "$OUT/compare.md"
