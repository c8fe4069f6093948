#!/usr/bin/env bash
# build-cuda.sh [FEATURE]: the andes release binary for NVIDIA GPUs, offline, in one command.
#
#   1. scripts/gpu/setup-offline-cuda-build.sh: LLVM from Debian where cubecl-llvm would
#      download it (idempotent).
#   2. cubecl-cuda 0.11.3, burn-cubecl and burn-cubecl-fusion 0.22.1, copied from the cargo registry and patched with
#      scripts/gpu/patches/*.patch into $PATCHED (default $CARGO_TARGET_DIR/patched-crates),
#      then put in place of the registry's through a `[patch.crates-io]` cargo config given on
#      the command line. The CPU build (CI) never sees them. What the patches change and why:
#      docs/backends.md, "Patched Burn crates".
#   3. cargo build --release -p andes-cli --features FEATURE (default cublas: cuda-untuned with cuBLASLt), Cargo.lock
#      restored afterwards (a patched build rewrites it), and the stripped binary xz-compressed
#      to .carry/andes-FEATURE.xz, where scripts/gpu/*_run.sh look for it on the GPU machine.
#   4. TEST_CRATE=NAME also builds that crate's library tests (release, the features
#      TEST_FEATURES, default FEATURE) and
#      compresses the test binary to .carry/NAME-tests-FEATURE.xz: the tests that need a GPU
#      (cfg feature cuda-untuned) run on the GPU machine from it.
#
# First build: about 50 minutes on 2 cores; after a change to andes only, under a minute.
set -euo pipefail
FEATURE=${1:-cublas}
cd "$(dirname "$0")/../.."
REPO=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
PATCHED=${PATCHED:-$CARGO_TARGET_DIR/patched-crates}
bash scripts/gpu/setup-offline-cuda-build.sh > /dev/null

REGISTRY=$(dirname "$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -name 'burn-cubecl-0.22.1' -type d | head -1)")
[ -d "$REGISTRY/burn-cubecl-0.22.1" ] || cargo fetch
REGISTRY=$(dirname "$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -name 'burn-cubecl-0.22.1' -type d | head -1)")
mkdir -p "$PATCHED"
CONFIG=$PATCHED/config.toml
echo "[patch.crates-io]" > "$CONFIG.new"
for patch in scripts/gpu/patches/*.patch; do
  crate=$(basename "$patch" .patch)             # NAME-VERSION
  name=${crate%-*}
  # Re-made from the registry's copy whenever the patch is newer, so an edit always applies to
  # pristine sources.
  if [ ! -f "$PATCHED/$crate/.patched" ] || [ "$patch" -nt "$PATCHED/$crate/.patched" ]; then
    rm -rf "${PATCHED:?}/$crate" && cp -r "$REGISTRY/$crate" "$PATCHED/$crate"
    patch -s -p1 -d "$PATCHED/$crate" < <(sed -E "s#^(---|\+\+\+) (a|b)/$crate/#\1 \2/#" "$patch")
    touch "$PATCHED/$crate/.patched"
  fi
  echo "$name = { path = \"$PATCHED/$crate\" }" >> "$CONFIG.new"
done
mv "$CONFIG.new" "$CONFIG"

cp Cargo.lock "$PATCHED/Cargo.lock.orig"
trap 'cp "$PATCHED/Cargo.lock.orig" Cargo.lock' EXIT
cargo --config "$CONFIG" build --release -p andes-cli --features "$FEATURE"
mkdir -p .carry
strip -o "$PATCHED/andes-$FEATURE" "$CARGO_TARGET_DIR/release/andes"
xz -T2 -6 -c "$PATCHED/andes-$FEATURE" > ".carry/andes-$FEATURE.xz"
ls -l ".carry/andes-$FEATURE.xz"
if [ -n "${TEST_CRATE:-}" ]; then
  tests=$(cargo --config "$CONFIG" test --release -p "$TEST_CRATE" --features "${TEST_FEATURES:-$FEATURE}" --lib --no-run \
    --message-format=json | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
  strip -o "$PATCHED/$TEST_CRATE-tests-$FEATURE" "$tests"
  xz -T2 -6 -c "$PATCHED/$TEST_CRATE-tests-$FEATURE" > ".carry/$TEST_CRATE-tests-$FEATURE.xz"
  ls -l ".carry/$TEST_CRATE-tests-$FEATURE.xz"
fi
