#!/usr/bin/env bash
# The tests that need a CUDA GPU (compiled into GPU builds only, e.g. attention's softmax
# kernels against the composed operations, crates/andes-model/src/sdpa/cube.rs), run on the
# GPU machine from the test binary that `TEST_CRATE=andes-model scripts/gpu/build-cuda.sh`
# makes here (.carry/andes-model-tests-cublas.xz). FILTER picks the tests (default
# sdpa::cube); the exit code is the tests'.
set -uo pipefail
T=/tmp/andes-model-tests
xz -dc .carry/andes-model-tests-cublas.xz > $T && chmod +x $T
. "$(dirname "$0")/cublas_lib.sh"
printf '[compilation]\ncache = true\n' > cubecl.toml
cd crates/andes-model && $T "${FILTER:-sdpa::cube}" --nocapture
