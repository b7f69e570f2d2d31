#!/usr/bin/env bash
# Builds camelid with `--features cuda` on a machine without a GPU or a CUDA install.
#   bash kernels/build-cuda.sh          stripped release binary -> $CACHE/cuda-target/camelid-cuda
#   bash kernels/build-cuda.sh check    `cargo clippy --all-targets -D warnings` of the cuda
#                                       feature (CI; the nvcc builds still run: ~15 min cold on
#                                       2 cores, ~1 warm)
#   bash kernels/build-cuda.sh stage    build, then fill .gpu/ (binary, kernel tests, the CUDA
#                                       runtime's model tests, the default model's tokenizer.json,
#                                       each xz-compressed) to carry to the GPU machine.
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
[ -f "$SETUP" ] || SETUP=/work/shared/cuda/setup-cuda.sh
cd "$ROOT"
if [ ! -f "$TOOLCHAIN/env.sh" ]; then
  if [ ! -f "$SETUP" ]; then
    # CI on a machine without the toolchain's setup script (outside this project's workplace)
    # skips the check only when told to: a missing mount must not pass the gate silently.
    if [ "$MODE" = check ] && [ "${CAMELID_SKIP_CUDA_CHECK:-}" = 1 ]; then
      echo "build-cuda.sh check: SKIPPED (CAMELID_SKIP_CUDA_CHECK=1)" >&2; exit 0
    fi
    echo "build-cuda.sh: $SETUP not found (set CAMELID_CUDA_SETUP, or CAMELID_SKIP_CUDA_CHECK=1 to skip the check)" >&2
    exit 1
  fi
  cargo fetch --quiet
  bash "$SETUP" "$TOOLCHAIN" >&2
fi
# shellcheck disable=SC1091
source "$TOOLCHAIN/env.sh"
export CARGO_TARGET_DIR="${CAMELID_CUDA_TARGET:-$CACHE/cuda-target}"
# Bounded as .ci/run's test target: past 24 GiB its incremental caches go first, then, still
# past it, everything (a new toolchain or dependency set leaves the old artifacts behind, and
# a full disk reads as a failure).
over_24g() { [ -d "$1" ] && [ "$(du -sk "$1" | cut -f1)" -gt $((24 << 20)) ]; }
if over_24g "$CARGO_TARGET_DIR"; then
  find "$CARGO_TARGET_DIR" -maxdepth 3 -type d -name incremental -prune -exec rm -rf {} +
  if over_24g "$CARGO_TARGET_DIR"; then rm -rf "$CARGO_TARGET_DIR"; fi
fi
export RUSTFLAGS="${RUSTFLAGS:--C target-cpu=x86-64-v3}"
# candle-kernels compiles its ~15 quantized-matmul objects one nvcc at a time by default (half
# the cores): 14 of a cold build's minutes on 2 cores. All cores: nothing else runs meanwhile.
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
# The packages and features of the release build: the binary, the kernels' device tests
# (camelid-kernels/tests/cuda_kernels.rs), the CUDA runtime's (camelid-model/tests/cuda_runtime.rs).
TESTS=(-p camelid -p camelid-kernels -p camelid-model
  --features camelid/cuda,camelid-kernels/cuda,camelid-model/cuda)
case "$MODE" in
  # clippy (which checks as `cargo check` does): the CUDA-only code's lints, denied as the
  # CPU build's are.
  check) cargo clippy --workspace --all-targets --features camelid/cuda,camelid-model/cuda,camelid-kernels/cuda -- -D warnings ;;
  build)
    # The binary and the device-test binaries in one invocation (one feature resolution, so
    # candle is compiled once for all); CI thereby compiles the device tests too.
    cargo build --release "${TESTS[@]}" --bin camelid --test cuda_kernels --test cuda_runtime
    # Line tables make the binary ~150 MB; the device tool carries at most 64 MiB.
    strip -o "$CARGO_TARGET_DIR/camelid-cuda" "$CARGO_TARGET_DIR/release/camelid"
    echo "$CARGO_TARGET_DIR/camelid-cuda"
    ;;
  stage)
    bash "$0" build
    # The device tests (built by `build`), as binaries the GPU machine (no Rust there) can run.
    json=$(cargo build --release "${TESTS[@]}" --bin camelid --test cuda_kernels --test cuda_runtime \
      --message-format=json)
    exe() { grep -o "\"executable\":\"[^\"]*$1[^\"]*\"" <<<"$json" | cut -d'"' -f4 | tail -1; }
    strip -o "$CARGO_TARGET_DIR/cuda-kernel-tests" "$(exe cuda_kernels)"
    strip -o "$CARGO_TARGET_DIR/cuda-runtime-tests" "$(exe cuda_runtime)"
    mkdir -p .gpu
    cp "$CARGO_TARGET_DIR/camelid-cuda" "$CARGO_TARGET_DIR/cuda-kernel-tests" \
      "$CARGO_TARGET_DIR/cuda-runtime-tests" .gpu/
    bash models/fetch-default.sh >/dev/null
    # The CPU build (its own target dir and flags) converts the default model for its tokenizer.
    (unset CARGO_TARGET_DIR RUSTFLAGS; cargo run --quiet --release -p camelid -- convert --out /tmp/camelid-stage-hf --dtype bf16)
    cp /tmp/camelid-stage-hf/tokenizer.json .gpu/
    # One device call carries at most 64 MiB with the working tree; the four files are ~90 MB
    # as they are and ~31 MB compressed. benches/gpu/run.sh unpacks them there.
    rm -f .gpu/*.xz
    xz -T2 -6 .gpu/camelid-cuda .gpu/cuda-kernel-tests .gpu/cuda-runtime-tests .gpu/tokenizer.json
    du -sh .gpu
    kib=$(du -sk .gpu | cut -f1)
    if [ "$kib" -gt $((56 * 1024)) ]; then
      echo "build-cuda.sh: .gpu is ${kib} KiB: with the working tree over what one device call carries (64 MiB)" >&2
      exit 1
    fi
    ;;
  *) echo "usage: build-cuda.sh [build|check|stage]" >&2; exit 2 ;;
esac
