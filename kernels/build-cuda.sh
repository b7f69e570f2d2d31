#!/usr/bin/env bash
# Builds camelid with `--features cuda` on a machine without a GPU or a CUDA install.
#   bash kernels/build-cuda.sh          release binary -> $CACHE/cuda-target/release/camelid
#   bash kernels/build-cuda.sh check    `cargo check` of the cuda feature only (CI)
# The toolchain (CUDA 13.0 from PyPI wheels, via ../shared/cuda/setup-cuda.sh) and the target
# directory live in the cache, outside the clone, so a second run only rebuilds what changed.
# The binary targets a portable CPU baseline (x86-64-v3), not this machine's `native`: it runs
# on the GPU host. It links libcuda.so.1 and the CUDA 13 runtime libraries dynamically; on the
# GPU machine put the PyTorch venv's nvidia/cu13/lib on LD_LIBRARY_PATH (benches/gpu/run.sh does).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODE="${1:-build}"
CACHE="${CAMELID_CACHE:-$HOME/.cache/camelid}"
TOOLCHAIN="$CACHE/cuda-13.0"
SETUP="${CAMELID_CUDA_SETUP:-$ROOT/../shared/cuda/setup-cuda.sh}"
cd "$ROOT"
if [ ! -f "$TOOLCHAIN/env.sh" ]; then
  [ -f "$SETUP" ] || { echo "build-cuda.sh: $SETUP not found (set CAMELID_CUDA_SETUP)" >&2; exit 1; }
  cargo fetch --quiet
  bash "$SETUP" "$TOOLCHAIN" >&2
fi
# shellcheck disable=SC1091
source "$TOOLCHAIN/env.sh"
export CARGO_TARGET_DIR="${CAMELID_CUDA_TARGET:-$CACHE/cuda-target}"
export RUSTFLAGS="${RUSTFLAGS:--C target-cpu=x86-64-v3}"
case "$MODE" in
  check) cargo check --workspace --all-targets --features camelid/cuda,camelid-model/cuda ;;
  build)
    cargo build --release -p camelid --features cuda
    echo "$CARGO_TARGET_DIR/release/camelid"
    ;;
  *) echo "usage: build-cuda.sh [build|check]" >&2; exit 2 ;;
esac
