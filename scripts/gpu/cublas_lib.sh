# Sourced by the GPU scripts that run the cuBLASLt build: puts libcublasLt on the loader's path
# (the loader's own copy or, failing that, PyTorch's CUDA wheels') and names it in
# $R/library.txt when R is set.
LT=$(ldconfig -p | awk '/libcublasLt\.so/ {print $NF; exit}')
[ -n "$LT" ] || LT=$(find / -xdev -name 'libcublasLt.so*' 2>/dev/null | sort | head -1)
mkdir -p /tmp/lib && ln -sf "$LT" /tmp/lib/libcublasLt.so
export LD_LIBRARY_PATH=/tmp/lib:$(dirname "$LT")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "libcublasLt: $LT" | tee ${R:+"$R/library.txt"}
