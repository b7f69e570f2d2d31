"""Writes a GGUF file from an HF-named set of f32 tensors with llama.cpp's own gguf-py: its
metadata keys (GGUFWriter.add_*), its tensor names (TensorNameMap, HF name -> GGUF name) and,
for the llama architecture, convert_hf_to_gguf.py's Q/K row permutation, for Gemma its norms
shifted by one and its soft-capping keys. camelid's reader is
tested against this, not against names it wrote itself.

Usage: write_gguf.py spec.json   (spec: see crates/camelid-model/tests/common/random_model.rs;
its vocabulary either listed, `tokens` and `token_types`, or copied from the GGUF
`tokenizer_from`)
"""
import json
import sys

import gguf
import numpy as np


def permute(w, n_head, n_head_kv):
    # convert_hf_to_gguf.py's LlamaModel.permute: rotary pairs made adjacent.
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def copy_tokenizer(w, src, replaced):
    # Every tokenizer.* field of another GGUF, as benches/make-1b-model.sh copies them, but
    # those the spec replaces.
    reader = gguf.GGUFReader(src)
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer.") or name in replaced:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, field.contents(), vtype, sub_type=sub)


def main():
    spec = json.load(open(sys.argv[1]))
    arch_name = spec["arch"]
    arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch_name]
    h = spec["hparams"]
    w = gguf.GGUFWriter(spec["out"], arch_name)
    w.add_context_length(h["max_position_embeddings"])
    w.add_embedding_length(h["hidden_size"])
    w.add_block_count(h["num_hidden_layers"])
    w.add_feed_forward_length(h["intermediate_size"])
    w.add_head_count(h["num_attention_heads"])
    w.add_head_count_kv(h["num_key_value_heads"])
    w.add_key_length(h["head_dim"])
    w.add_value_length(h["head_dim"])
    w.add_rope_freq_base(h["rope_theta"])
    w.add_layer_norm_rms_eps(h["rms_norm_eps"])
    rs = h.get("rope_scaling")
    if rs and rs.get("rope_type", rs.get("type")) == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rs["factor"])
    if rs and rs.get("type") == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rs["factor"])
        w.add_rope_scaling_orig_ctx_len(rs["original_max_position_embeddings"])
    if rs and rs.get("type") in ("longrope", "su"):
        # convert_hf_to_gguf.py's Phi3MiniModel: the factors as tensors, the original
        # context and the attention factor as metadata.
        import math
        orig = h["original_max_position_embeddings"]
        scale = h["max_position_embeddings"] / orig
        attn = 1.0 if scale <= 1.0 else math.sqrt(1 + math.log(scale) / math.log(orig))
        w.add_rope_scaling_attn_factors(attn)
        w.add_rope_scaling_orig_ctx_len(orig)
        w.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight",
                     np.array(rs["long_factor"], dtype=np.float32))
        w.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight",
                     np.array(rs["short_factor"], dtype=np.float32))
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        # convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors: no scaling keys, the
        # per-frequency divisors as the `rope_freqs` tensor.
        import math
        base = h.get("rope_theta", 10000.0)
        dim = h.get("head_dim") or h["hidden_size"] // h["num_attention_heads"]
        freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
        factor = rs.get("factor", 8.0)
        low, high = rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
        old_len = rs.get("original_max_position_embeddings", 8192)
        low_wavelen, high_wavelen = old_len / low, old_len / high
        factors = []
        for freq in freqs:
            wavelen = 2 * math.pi / freq
            if wavelen < high_wavelen:
                factors.append(1)
            elif wavelen > low_wavelen:
                factors.append(factor)
            else:
                smooth = (old_len / wavelen - low) / (high - low)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        w.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                     np.array(factors, dtype=np.float32))
    if h.get("sliding_window"):
        w.add_sliding_window(h["sliding_window"])
    # convert_hf_to_gguf.py (TextModel): Gemma 3's local rope base as `rope.freq_base_swa`.
    if arch_name == "gemma3" and h.get("rope_local_base_freq") is not None:
        w.add_rope_freq_base_swa(h["rope_local_base_freq"])
    # convert_hf_to_gguf.py's Gemma2Model writes both soft-cappings (Gemma 3's are null).
    if h.get("attn_logit_softcapping") is not None:
        w.add_attn_logit_softcapping(h["attn_logit_softcapping"])
    if h.get("final_logit_softcapping") is not None:
        w.add_final_logit_softcapping(h["final_logit_softcapping"])
    # Metadata keys the test sets (written first, so they replace copied ones); a null one is
    # left out, copied or not.
    replaced = spec.get("keys") or {}
    for key, value in replaced.items():
        if value is None:
            continue
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_string(key, value)
    if spec.get("tokenizer_from"):
        copy_tokenizer(w, spec["tokenizer_from"], replaced)
    else:
        w.add_tokenizer_model("llama")
        w.add_token_list(spec["tokens"])
        w.add_token_scores([-float(i) for i in range(len(spec["tokens"]))])
        w.add_token_types(spec["token_types"])
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
    names = gguf.get_tensor_name_map(arch, h["num_hidden_layers"])
    for t in spec["tensors"]:
        data = np.fromfile(t["file"], dtype=np.float32).reshape(t["shape"])
        name = names.get_name(t["name"], try_suffixes=(".weight", ".bias"))
        if name is None:
            sys.exit(f"gguf-py has no name for {t['name']} in {arch_name}")
        if arch_name == "llama" and t["name"].endswith("q_proj.weight"):
            data = permute(data, h["num_attention_heads"], h["num_attention_heads"])
        if arch_name == "llama" and t["name"].endswith("k_proj.weight"):
            data = permute(data, h["num_attention_heads"], h["num_key_value_heads"])
        # convert_hf_to_gguf.py's Gemma2Model/Gemma3Model: HF's `1 + w` norms stored as such.
        if arch_name in ("gemma2", "gemma3") and t["name"].endswith("norm.weight"):
            data = data + 1.0
        if spec.get("f16") and data.ndim == 2:
            data = data.astype(np.float16)
        w.add_tensor(name, np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


main()
