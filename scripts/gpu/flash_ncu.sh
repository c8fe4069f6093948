#!/usr/bin/env bash
# Where the flash attention kernels lose to PyTorch's: Nsight Compute's sections (speed of
# light, occupancy, warp stall reasons, memory and compute workload, source counters) for one
# forward + backward of crates/andes-model/src/sdpa/flash.cu at [1, 16, 8, 8192, 128] and of
# PyTorch's SDPA on the same tensors (`scripts/gpu/flash_check.py --profile`, which warms both
# up first). Needs `ncu` and PyTorch; no andes binary. VARIANT="NAME=-D..." profiles another
# configuration of the kernels. Results in OUT (default ./out): flash.ncu-rep (open it in
# Nsight Compute) and flash-summary.csv (one row a kernel and metric).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
args=(--profile); [ -n "${VARIANT:-}" ] && args+=(--variants "$VARIANT")
# Both rounds' kernels (ours are named flash_*; PyTorch's flash and cuDNN ones contain "flash",
# "fmha", "attn" or "sdpa"); the second round is the warm one.
ncu --kernel-name regex:'flash|fmha|attn|sdpa' --launch-count "${COUNT:-24}" \
  --set full --import-source yes -f -o "$OUT/flash" python3 scripts/gpu/flash_check.py "${args[@]}"
ncu --import "$OUT/flash.ncu-rep" --csv --page raw \
  --metrics gpu__time_duration.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum,launch__registers_per_thread,launch__occupancy_limit_registers \
  > "$OUT/flash-summary.csv"
cut -c1-400 "$OUT/flash-summary.csv" | head -20
