#!/usr/bin/env bash
# Adds to .gpu/ what `benches/gpu/run.sh gguf` needs to make and serve a random-weight 1B GGUF
# Q4_K_M on the GPU machine, where no model file fits a call (64 MiB) and nothing can be fetched:
#   llama-quantize    llama.cpp b11434's, for a portable x86-64-v3 CPU (the device's CPU is not
#                     this one), needing only glibc (ggml and libstdc++ linked in, no OpenMP:
#                     the device image may lack libgomp), xz-compressed
#   gguf-*.whl        the `gguf` package (pure Python; the device has its numpy, yaml, tqdm)
#   gguf-tokenizer.json.xz   the default model's tokenizer.* GGUF fields (benches/random_gguf.py)
# Run after `bash kernels/build-cuda.sh stage` (which empties .gpu of compressed files).
# Cold: ~10 min for llama-quantize on 2 cores; cached under ~/.cache/camelid/llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE="${CAMELID_CACHE:-$HOME/.cache/camelid}/llama.cpp"
PY="${CAMELID_TEST_PYTHON:-${CAMELID_CACHE:-$HOME/.cache/camelid}/test-venv/bin/python}"
ROOT="$(bash benches/build-llama-cpp.sh --source)"
B="$CACHE/build-portable-static"
if [ ! -x "$B/bin/llama-quantize" ]; then
  cmake -S "$ROOT" -B "$B" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DGGML_OPENMP=OFF -DCMAKE_EXE_LINKER_FLAGS="-static-libstdc++ -static-libgcc" >&2
  cmake --build "$B" -j "$(nproc)" --target llama-quantize >&2
fi
mkdir -p .gpu
rm -f .gpu/llama-quantize* .gpu/gguf-*
strip -o .gpu/llama-quantize "$B/bin/llama-quantize"
GGUF_VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("gguf"))')
"$PY" -m pip download -q --no-deps --only-binary=:all: "gguf==$GGUF_VERSION" -d .gpu
"$PY" benches/random_gguf.py --export-tokenizer "$(bash models/fetch-default.sh)" .gpu/gguf-tokenizer.json
xz -T2 -6 .gpu/llama-quantize .gpu/gguf-tokenizer.json
du -sh .gpu
