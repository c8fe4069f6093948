#!/usr/bin/env bash
# Builds scripts/gpu/kernel_trace/kernel_trace.c into .carry/libkernel_trace.so against the
# CUPTI and CUDA headers of NVIDIA's CUDA 13 wheels (downloaded with pip into a scratch folder;
# the GPU machine's own libcupti.so.13, from PyTorch's wheels, is loaded at run time).
# Use on the GPU machine: CUDA_INJECTION64_PATH=/path/libkernel_trace.so KERNEL_TRACE=out.tsv
# COMMAND, with libcupti.so.13 on LD_LIBRARY_PATH (scripts/gpu/kernel_trace/env.sh sets both).
set -euo pipefail
cd "$(dirname "$0")/../../.."
WORK=${WORK:-/tmp/kernel-trace-build}; mkdir -p "$WORK" .carry
for wheel in nvidia-cuda-cupti nvidia-cuda-runtime nvidia-cuda-crt; do
  ls "$WORK"/${wheel//-/_}-*.whl > /dev/null 2>&1 || pip download --quiet --no-deps -d "$WORK" "$wheel"
  unzip -qo "$WORK"/${wheel//-/_}-*.whl -d "$WORK/unpacked"
done
INCLUDE="$WORK/unpacked/nvidia/cu13/include"
gcc -O2 -shared -fPIC -Wall -Wextra -I"$INCLUDE" scripts/gpu/kernel_trace/kernel_trace.c \
  -L"$WORK/unpacked/nvidia/cu13/lib" -l:libcupti.so.13 -o .carry/libkernel_trace.so
echo ".carry/libkernel_trace.so"
