#!/usr/bin/env bash
# Writes a 1B-class random-weight GGUF with Llama-3.2-1B's shape (hidden 2048, 16 layers, 32
# heads, 8 KV heads, FFN 8192) and the default model's tokenizer and chat template, as F16
# (the `gguf` Python package from the test venv), then quantizes it with llama.cpp's
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
PY="${CAMELID_TEST_PYTHON:-$HOME/.cache/camelid/test-venv/bin/python}"
SRC="$(bash models/fetch-default.sh)"
if [ ! -f "$BASE" ]; then
  "$PY" - "$SRC" "$BASE.tmp" "$ARCH" "$STEM" <<'PY'
import sys
import numpy as np
import gguf

src, out, arch, stem = sys.argv[1:5]
reader = gguf.GGUFReader(src)
w = gguf.GGUFWriter(out, arch)
vocab = None
for name, field in reader.fields.items():
    if not name.startswith("tokenizer."):
        continue
    value = field.contents()
    if name == "tokenizer.ggml.tokens":
        vocab = len(value)
    vtype = field.types[0]
    sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
    w.add_key_value(name, value, vtype, sub_type=sub)
qwen = arch == "qwen2"
hidden, layers, heads, kv_heads, ffn = (1536, 28, 12, 2, 8960) if qwen else (2048, 16, 32, 8, 8192)
w.add_name(stem)
w.add_context_length(4096)
w.add_embedding_length(hidden)
w.add_block_count(layers)
w.add_feed_forward_length(ffn)
w.add_head_count(heads)
w.add_head_count_kv(kv_heads)
w.add_rope_dimension_count(hidden // heads)
w.add_rope_freq_base(1000000.0 if qwen else 500000.0)
w.add_layer_norm_rms_eps(1e-6 if qwen else 1e-5)
w.add_vocab_size(vocab)
w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
rng = np.random.default_rng(0)

def rand(rows, cols, std):
    return (rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(np.float16)

kv = kv_heads * hidden // heads
w.add_tensor("token_embd.weight", rand(vocab, hidden, 0.02))
if not qwen:  # Qwen2.5-1.5B ties its output to the embeddings
    w.add_tensor("output.weight", rand(vocab, hidden, 0.02))
w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
for l in range(layers):
    p = f"blk.{l}."
    w.add_tensor(p + "attn_norm.weight", np.ones(hidden, dtype=np.float32))
    w.add_tensor(p + "ffn_norm.weight", np.ones(hidden, dtype=np.float32))
    for name, rows, cols in [("attn_q", hidden, hidden), ("attn_k", kv, hidden),
                             ("attn_v", kv, hidden), ("attn_output", hidden, hidden),
                             ("ffn_gate", ffn, hidden), ("ffn_up", ffn, hidden),
                             ("ffn_down", hidden, ffn)]:
        w.add_tensor(p + name + ".weight", rand(rows, cols, 0.02))
    if qwen:
        for name, rows in [("attn_q", hidden), ("attn_k", kv), ("attn_v", kv)]:
            w.add_tensor(p + name + ".bias", rng.standard_normal(rows, dtype=np.float32) * 0.02)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
PY
  mv "$BASE.tmp" "$BASE"
fi
QUANTIZE="$(bash benches/build-llama-cpp.sh llama-quantize)/llama-quantize"
for t in "${TYPES[@]}"; do
  out="$DIR/$STEM.$t.gguf"
  [ -f "$out" ] || "$QUANTIZE" "$BASE" "$out" "$t" >&2
  echo "$out"
done
