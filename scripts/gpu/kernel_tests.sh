#!/usr/bin/env bash
# The tests that need a CUDA GPU (compiled into GPU builds only: attention's softmax kernels,
# crates/andes-model/src/sdpa/cube.rs, and AdamW's update kernel,
# crates/andes-train/src/adamw_update/cube.rs, each against the composed operations), run on
# the GPU machine from the test binary of CRATE (default andes-model) that
# `TEST_CRATE=CRATE scripts/gpu/build-cuda.sh` makes here (.carry/CRATE-tests-cublas.xz; for
# andes-train with TEST_FEATURES="cube andes-model/cublas"). FILTER picks the tests (default
# cube; several words run the tests matching any); the exit code is the tests'.
set -uo pipefail
CRATE=${CRATE:-andes-model}
T=/tmp/$CRATE-tests
xz -dc ".carry/$CRATE-tests-cublas.xz" > "$T" && chmod +x "$T"
. "$(dirname "$0")/cublas_lib.sh"
printf '[compilation]\ncache = true\n' > cubecl.toml
cd "crates/$CRATE" && "$T" ${FILTER:-cube} --nocapture
