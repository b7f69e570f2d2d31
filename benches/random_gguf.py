"""A random-weight GGUF with a 1B-class shape and a real tokenizer, as F16 (the `gguf` package).

  random_gguf.py TOKENIZER OUT ARCH STEM   TOKENIZER: a GGUF whose tokenizer.* fields are
                                           copied, or a JSON of them (--export-tokenizer)
  random_gguf.py --export-tokenizer SRC.gguf OUT.json

ARCH llama: Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 heads, 8 KV heads, FFN 8192);
ARCH qwen2: Qwen2.5-1.5B's (hidden 1536, 28 layers, 12 heads, 2 KV heads, FFN 8960, Q/K/V
biases, tied embeddings). Used by benches/make-1b-model.sh here and by benches/gpu/run.sh on the
GPU machine (which has no GGUF of the default model to copy the tokenizer from: the JSON travels).
"""
import json
import sys

import numpy as np
import gguf


def tokenizer_fields(src):
    """(name, value, value type, array item type) of every tokenizer.* field."""
    if src.endswith(".json"):
        for name, (value, vtype, sub) in json.load(open(src)).items():
            yield name, value, gguf.GGUFValueType(vtype), None if sub is None else gguf.GGUFValueType(sub)
        return
    for name, field in gguf.GGUFReader(src).fields.items():
        if name.startswith("tokenizer."):
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            yield name, field.contents(), vtype, sub


if sys.argv[1] == "--export-tokenizer":
    fields = {n: [v, int(t), None if s is None else int(s)] for n, v, t, s in tokenizer_fields(sys.argv[2])}
    json.dump(fields, open(sys.argv[3], "w"))
    sys.exit(0)

src, out, arch, stem = sys.argv[1:5]
w = gguf.GGUFWriter(out, arch)
vocab = None
for name, value, vtype, sub in tokenizer_fields(src):
    if name == "tokenizer.ggml.tokens":
        vocab = len(value)
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
