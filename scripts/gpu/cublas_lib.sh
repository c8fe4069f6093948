# Sourced by the GPU scripts that run the cuBLASLt build: puts libcublasLt on the loader's path
# (the loader's own copy or, failing that, PyTorch's CUDA wheels') and names it in
# $R/library.txt when R is set.
LT=$(ldconfig -p | awk '/libcublasLt\.so/ {print $NF; exit}')
[ -n "$LT" ] || LT=$(find / -xdev -name 'libcublasLt.so*' 2>/dev/null | sort | head -1)
mkdir -p /tmp/lib && ln -sf "$LT" /tmp/lib/libcublasLt.so
export LD_LIBRARY_PATH=/tmp/lib:$(dirname "$LT")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "libcublasLt: $LT" | tee ${R:+"$R/library.txt"}

# `prepare_run FILE [TOML]`: the build BUILD (default cublas, the cuBLASLt build) unpacked at
# $A (/tmp/andes-BUILD) from .carry/andes-BUILD.xz once a machine, the driver's JIT cache in /tmp/cuda-jit, cubecl.toml
# with the kernel cache on (TOML appended), and the GPU and CPU printed and kept in FILE.
prepare_run() {
  A=/tmp/andes-${BUILD:-cublas}
  [ -x $A ] || { xz -dc .carry/andes-${BUILD:-cublas}.xz > $A && chmod +x $A; }
  export CUDA_CACHE_PATH=/tmp/cuda-jit
  printf '[compilation]\ncache = true\n%s' "${2:-}" > cubecl.toml
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    lscpu | grep "Model name"; } | tee "$1"
}

# `gcide_corpus`: the GCIDE corpus of the GPU runs (datasets/gcide/gcide-large.txt) unpacked
# from .carry/gcide-large.txt.xz once a machine.
gcide_corpus() {
  local L=datasets/gcide/gcide-large.txt
  [ -f $L ] || xz -dc .carry/gcide-large.txt.xz > $L
}

# `gcide_model CONFIG`: the GCIDE corpus, and a model of CONFIG's shape with the GCIDE
# tokenizer drawn by `andes init` (seed 0) into $W/init once a work folder.
gcide_model() {
  gcide_corpus
  [ -d "$W/init" ] || $A init --config "$1" --tokenizer fixtures/tokenizer --out "$W/init" > /dev/null
}
