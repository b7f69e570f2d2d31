#!/usr/bin/env bash
# Writes a 1B-class random-weight GGUF with Llama-3.2-1B's shape (hidden 2048, 16 layers, 32
# heads, 8 KV heads, FFN 8192) and the default model's tokenizer and chat template, as F16
# (benches/random_gguf.py: the `gguf` Python package from the test venv), then quantizes it with llama.cpp's
# `llama-quantize` (b11434, built beside llama-server) to each TYPE given (default Q4_K_M).
# Random weights decode like a real model of that size: the speed depends on the shape and the
# formats, not on the values. Prints the paths, one per line.
# ARCH=qwen2 writes Qwen2.5-1.5B's shape instead (hidden 1536, 28 layers, 12 heads, 2 KV
# heads, FFN 8960, Q/K/V biases, tied embeddings, rope base 1e6) as a `qwen2` GGUF.
#   [ARCH=llama|qwen2] bash benches/make-1b-model.sh [Q4_K_M Q5_K_M Q4_0 ...]
set -euo pipefail
cd "$(dirname "$0")/.."
TYPES=("$@"); [ ${#TYPES[@]} -gt 0 ] || TYPES=(Q4_K_M)
DIR="${CAMELID_CACHE:-$HOME/.cache/camelid}/models"; mkdir -p "$DIR"
ARCH="${ARCH:-llama}"
case "$ARCH" in llama) STEM=random-llama-1b ;; qwen2) STEM=random-qwen2-1.5b ;;
  *) echo "ARCH must be llama or qwen2" >&2; exit 2 ;; esac
BASE="$DIR/$STEM.F16.gguf"
PY="${CAMELID_TEST_PYTHON:-${CAMELID_CACHE:-$HOME/.cache/camelid}/test-venv/bin/python}"
SRC="$(bash models/fetch-default.sh)"
if [ ! -f "$BASE" ]; then
  "$PY" benches/random_gguf.py "$SRC" "$BASE.tmp" "$ARCH" "$STEM"
  mv "$BASE.tmp" "$BASE"
fi
QUANTIZE="$(bash benches/build-llama-cpp.sh llama-quantize)/llama-quantize"
for t in "${TYPES[@]}"; do
  out="$DIR/$STEM.$t.gguf"
  [ -f "$out" ] || "$QUANTIZE" "$BASE" "$out" "$t" >&2
  echo "$out"
done
