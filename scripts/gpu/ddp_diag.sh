#!/usr/bin/env bash
# Where a data-parallel run on two GPUs spends its first step. Trains the tiny recipe on
# cuda:0,cuda:1 in the background; if it is still running after ~96 s, attaches cuda-gdb and
# writes every thread's backtrace to $OUT/t2.bt (OUT: the output folder, default ./out), the
# run's log to $OUT/t2.log. Same NCCL setup as ddp_run.sh.
#
# Needs: two NVIDIA GPUs with their driver (NVRTC), cuda-gdb, Python with PyTorch's NCCL wheel
# (nvidia.nccl), and the andes release binary built with `cargo build --release -p andes-cli
# --features cuda`, stripped of debug info only (`strip --strip-debug`, so the frames have
# names), gzipped at .carry/andes-cuda.gz.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 RUST_BACKTRACE=1
gunzip -c .carry/andes-cuda.gz > /tmp/andes && chmod +x /tmp/andes
NCCL_DIR=$(python3 -c "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib'))")
mkdir -p /tmp/nccl && ln -sf "$NCCL_DIR/libnccl.so.2" /tmp/nccl/libnccl.so
export LD_LIBRARY_PATH=/tmp/nccl:${LD_LIBRARY_PATH:-}
printf '[compilation]\ncache = true\n\n[autotune]\nlevel = "minimal"\n' > cubecl.toml
/tmp/andes train --config configs/recipes/tiny/pretrain.toml --out /tmp/t2 --quiet \
    --set train.device=cuda --set train.steps=3 --devices 2 > $OUT/t2.log 2>&1 &
P=$!
for i in $(seq 1 16); do sleep 6; kill -0 $P 2>/dev/null || break; done
grep -v "reduce" $OUT/t2.log | tail -12; grep -c reduce $OUT/t2.log
if kill -0 $P 2>/dev/null; then
  timeout 60 cuda-gdb -p $P -batch -ex "info threads" -ex "thread apply all bt 30" > $OUT/t2.bt 2>&1
  kill -9 $P
fi
grep -E "^#[0-9]+ .* in (andes|burn|cubecl|std::thread|cudarc)" $OUT/t2.bt 2>/dev/null | sed 's/(.*//' | sort | uniq -c | sort -rn | head -40
