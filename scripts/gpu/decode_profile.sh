#!/usr/bin/env bash
# One device-tool call: where the time of a Qwen3-0.6B decode step goes on Burn's cuda backend
# (issue 2). cubecl's profiling logger times every kernel on the device (each launch waited
# for, so the wall time is not representative, the kernels' own durations are); two runs, one
# with the prompt alone and one that also decodes N tokens, and their difference over N is
# the kernel time of one eager decode step, by kernel name. Set against the decode step's
# wall time (`andes bench forward`, eager and --replay), it says how much of a token is
# kernels and how much is the host. ENV_TAR=FILE starts from a kernel cache an earlier call
# returned. Results: $OUT/profile-prompt.log, $OUT/profile-decode.log.
set -uo pipefail
A=/tmp/andes; [ -x $A ] || { xz -dc .carry/andes-cuda.xz > $A && chmod +x $A; }
[ -n "${ENV_TAR:-}" ] && mkdir -p target && tar -xzf "$ENV_TAR" -C target
MODEL=configs/models/qwen3-0.6b.json
N=${N:-16}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
for run in prompt:0 decode:$N; do
  name=${run%:*}; tokens=${run#*:}
  printf '[compilation]\ncache = true\n\n[autotune]\nlevel = "minimal"\n\n[profiling.logger]\nlevel = "basic"\nfile = "%s"\n' $OUT/profile-$name.log > cubecl.toml
  timeout ${LIMIT:-200} $A bench forward --config $MODEL --device cuda --dtype f32 --prompt-len 512 \
    --decode-tokens $tokens --warmup 1 --repeats 1 > $OUT/bench-$name.json 2> $OUT/bench-$name.err
  echo "$name rc=$? $(wc -l < $OUT/profile-$name.log) log lines"
done
