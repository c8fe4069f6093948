#!/usr/bin/env bash
# Finds the bf16 kernel that the driver's PTX JIT compiles for minutes (a backtrace of
# 2026-11-26 is in benchmarks/results/2026-11-26-h100-cuda-bf16/). Runs `andes generate
# --dtype bf16` on the tiny bf16 fixture with cubecl's compilation log on; if it has not
# finished after LIMIT seconds, keeps every thread's backtrace (cuda-gdb) and the log's tail:
# the last kernel logged is the one being compiled.
#
# Needs: an NVIDIA GPU with its driver (NVRTC), cuda-gdb, and the andes release binary built
# with `cargo build --release -p andes-cli --features cuda`, xz-compressed at
# .carry/andes-cuda.xz (or already unpacked at /tmp/andes). Results in the output folder (OUT,
# default ./out): probe.log, compilation.log.gz, bt.txt.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
A=/tmp/andes; [ -x $A ] || { xz -dc .carry/andes-cuda.xz > $A && chmod +x $A; }
LOG=/tmp/compilation.log; rm -f $LOG
printf '[compilation]\ncache = true\n\n[compilation.logger]\nlevel = "full"\nfile = "%s"\n\n[autotune]\nlevel = "minimal"\n' $LOG > cubecl.toml
start=$SECONDS
$A generate --model fixtures/qwen3-tiny-bf16-sharded --device cuda --dtype bf16 --prompt "Challenge" \
  --max-new-tokens 4 --greedy --json > $OUT/probe.log 2>&1 &
P=$!
while kill -0 $P 2>/dev/null && [ $((SECONDS - start)) -lt ${LIMIT:-150} ]; do sleep 2; done
if kill -0 $P 2>/dev/null; then
  timeout 40 cuda-gdb -p $P -batch -ex "thread apply all bt 30" > $OUT/bt.txt 2>&1
  kill -9 $P
fi
wait $P; echo "bf16 generate rc=$? after $((SECONDS - start)) s"; cat $OUT/probe.log | tail -3
grep -c . $LOG; grep -iE "^(compil|kernel|name|id)" $LOG | tail -5 | cut -c1-300
gzip -c $LOG > $OUT/compilation.log.gz
