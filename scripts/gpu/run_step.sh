# Sourced by the GPU run scripts (cublas_run.sh, bf16_train_run.sh). `run NAME COMMAND...` runs
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
