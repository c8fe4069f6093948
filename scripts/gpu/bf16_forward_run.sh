#!/usr/bin/env bash
# One device-tool call for the Qwen3-0.6B forward in bf16 on Burn's cuda backend (issue 2):
# `andes bench forward --dtype bf16` with a long limit (then, if it finished, with --replay,
# and transformers eager in bf16, the peer, in the same call), cubecl's compilation logger naming each kernel as it is compiled,
# so that a cold start that runs out of time still says how far it got. The kernel and
# autotune cache (target/environment) comes back as $OUT/environment.tar.gz, to be carried
# into a later call (ENV_TAR=path) so that it starts warm.
# Carry .carry/andes-cuda.xz (cargo build --release -p andes-cli --features cuda).
set -uo pipefail
A=/tmp/andes; [ -x $A ] || { xz -dc .carry/andes-cuda.xz > $A && chmod +x $A; }
[ -n "${ENV_TAR:-}" ] && mkdir -p target && tar -xzf "$ENV_TAR" -C target
LOG=/tmp/compilation.log; rm -f $LOG
printf '[compilation]\ncache = true\n\n[compilation.logger]\nlevel = "basic"\nfile = "%s"\n\n[autotune]\nlevel = "minimal"\n' $LOG > cubecl.toml
MODEL=configs/models/qwen3-0.6b.json
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
start=$SECONDS
timeout ${LIMIT:-450} $A bench forward --config $MODEL --device cuda --dtype bf16 --prompt-len 512 \
  --decode-tokens 128 --warmup 1 --repeats 3 > $OUT/andes-bf16.json 2> $OUT/andes-bf16.err
rc=$?; echo "andes bf16 rc=$rc after $((SECONDS - start)) s: $(cat $OUT/andes-bf16.json)"
if [ $rc = 0 ]; then
  timeout 150 $A bench forward --config $MODEL --device cuda --dtype bf16 --prompt-len 512 \
    --decode-tokens 128 --warmup 1 --repeats 3 --replay > $OUT/andes-bf16-replay.json 2>> $OUT/andes-bf16.err
  echo "andes bf16 --replay rc=$?: $(cat $OUT/andes-bf16-replay.json)"
  python3 scripts/bench/forward_peer.py --config $MODEL --device cuda --dtype bfloat16 --prompt-len 512 \
    --decode-tokens 128 --warmup 1 --repeats 3 --out $OUT/peer-bf16.json
fi
echo "kernels compiled: $(grep -c . $LOG)"; tail -3 $LOG | cut -c1-300
gzip -c $LOG > $OUT/compilation.log.gz
tar -czf $OUT/environment.tar.gz -C target environment && ls -la $OUT
