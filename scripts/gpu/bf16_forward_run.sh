#!/usr/bin/env bash
# The Qwen3-0.6B forward in bf16 on Burn's cuda backend: `andes bench forward --dtype bf16`
# with a long limit (then, if it finished, with --replay, and transformers eager in bf16, the
# peer, in the same run), cubecl's compilation logger naming each kernel as it is compiled,
# so that a cold start that runs out of time still says how far it got. The kernel and
# autotune cache (target/environment) is saved as $OUT/environment.tar.gz; a later run given
# it as ENV_TAR=path starts warm.
#
# Needs: an NVIDIA GPU with its driver (NVRTC), Python with PyTorch and transformers (the
# peer), and the andes release binary built with `cargo build --release -p andes-cli --features
# cuda` (see scripts/gpu/setup-offline-cuda-build.sh), xz-compressed at .carry/andes-cuda.xz
# (or already unpacked at /tmp/andes). Results go to the output folder (OUT, default ./out).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
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
