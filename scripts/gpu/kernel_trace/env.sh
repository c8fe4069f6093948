# Sourced by the GPU run scripts when TRACE=1: `traced NAME` prints the environment
# assignments that make a command write its kernel trace (kernel_trace.c, carried as
# .carry/libkernel_trace.so) to $R/NAME-trace.tsv, with the machine's libcupti.so.13 (PyTorch's
# CUDA wheels or the toolkit's) on the loader's path.
TRACE_LIB=$PWD/.carry/libkernel_trace.so
[ -f "$TRACE_LIB" ] || { echo "kernel tracing: $TRACE_LIB is missing (scripts/gpu/kernel_trace/build.sh)" >&2; exit 2; }
CUPTI=$(find $(python3 -c 'import site; print(" ".join(site.getsitepackages()))') /usr/local/cuda* \
  -name 'libcupti.so.13*' 2>/dev/null | head -1)
[ -n "$CUPTI" ] || { echo "kernel tracing: no libcupti.so.13 on this machine" >&2; exit 2; }
export LD_LIBRARY_PATH=$(dirname "$CUPTI")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "libcupti: $CUPTI" | tee ${R:+"$R/cupti.txt"}
traced() { echo "CUDA_INJECTION64_PATH=$TRACE_LIB KERNEL_TRACE=$R/$1-trace.tsv"; }
