# Sourced by the GPU run scripts (cublas_run.sh, replay_run.sh, bf16_train_run.sh). `run NAME COMMAND...` runs
# COMMAND for at most $STEP_LIMIT seconds, its stdout to $R/NAME.json and its stderr to
# $R/NAME.err; prints the exit code, the seconds taken, the start of the output and the first
# error lines; and refreshes $OUT/results.tar.gz, so that a call stopped at its time limit still
# returns what it measured.
run() {
  local name=$1; shift
  local start=$SECONDS
  timeout "$STEP_LIMIT" "$@" > "$R/$name.json" 2> "$R/$name.err"
  echo "$name rc=$? $((SECONDS - start)) s: $(head -c 500 "$R/$name.json")"
  grep -m2 -E "panicked|rror|warning" "$R/$name.err" | cut -c1-300
  tar -czf "$OUT/results.tar.gz" -C "$R" .
}

# `train_peers`: PyTorch's training step (scripts/bench/train_peer.py) of $MODEL at seq 1024 and
# $BATCH windows, once for each of PEER_SPECS (comma-separated "PRECISION ATTN [--compile]",
# default TF32 and bf16 autocast with SDPA, `none` for no eager row; COMPILE=1 adds bf16
# autocast compiled), each
# through `run` as peer-PRECISION-ATTN[-compile]; a compiled row gets COMPILE_LIMIT seconds
# (default 360), the others STEP_LIMIT.
train_peers() {
  local specs spec limit
  local peer_specs=${PEER_SPECS:-"tf32 sdpa,bf16-mixed sdpa"}
  [ "${COMPILE:-0}" = 1 ] && peer_specs="$peer_specs,bf16-mixed sdpa --compile"
  peer_specs=${peer_specs#none,}; [ "$peer_specs" = none ] && return
  IFS=, read -ra specs <<< "$peer_specs"
  for spec in "${specs[@]}"; do
    set -- $spec
    limit=$STEP_LIMIT; [ -n "${3:-}" ] && limit=${COMPILE_LIMIT:-360}
    STEP_LIMIT=$limit run "peer-$1-$2${3:+-compile}" python3 scripts/bench/train_peer.py \
      --config "$MODEL" --device cuda --precision "$1" --attn "$2" ${3:-} --seq-len 1024 --batch "$BATCH"
  done
}
