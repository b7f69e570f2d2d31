"""Writes a LoRA adapter GGUF as llama.cpp's convert_lora_to_gguf.py does, from a PEFT
adapter's f32 tensors, with llama.cpp's own gguf-py: `general.type` "adapter",
`adapter.type` "lora", `adapter.lora.alpha`, the base tensor's GGUF name plus `.lora_a` /
`.lora_b`, and, for the llama architecture, the converter's Q/K row permutation applied to
B (the rows of a Q/K update are the weight's rows). camelid's reader and llama.cpp's are
tested against this, not against names camelid wrote itself.

Usage: write_lora_gguf.py spec.json   (spec: {"out", "arch", "alpha", "n_head",
"n_head_kv", "n_layers", "tensors": [{"module": "model.layers.0.self_attn.q_proj",
"a": {"file", "shape"}, "b": {"file", "shape"}}]}; files are raw little-endian f32)
"""
import json
import sys

import gguf
import numpy as np


def permute(w, n_head, n_head_kv):
    # convert_hf_to_gguf.py's LlamaModel.permute (its LoraTorchTensor applies it to B).
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def main():
    spec = json.load(open(sys.argv[1]))
    arch_name = spec["arch"]
    arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch_name]
    w = gguf.GGUFWriter(spec["out"], arch_name)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(spec["alpha"]))
    names = gguf.get_tensor_name_map(arch, spec["n_layers"])
    for t in spec["tensors"]:
        base = names.get_name(t["module"] + ".weight", try_suffixes=(".weight",))
        if base is None:
            sys.exit(f"gguf-py has no name for {t['module']} in {arch_name}")
        a = np.fromfile(t["a"]["file"], dtype=np.float32).reshape(t["a"]["shape"])
        b = np.fromfile(t["b"]["file"], dtype=np.float32).reshape(t["b"]["shape"])
        if arch_name == "llama" and t["module"].endswith("q_proj"):
            b = permute(b, spec["n_head"], spec["n_head"])
        if arch_name == "llama" and t["module"].endswith("k_proj"):
            b = permute(b, spec["n_head"], spec["n_head_kv"])
        w.add_tensor(base + ".lora_a", np.ascontiguousarray(a))
        w.add_tensor(base + ".lora_b", np.ascontiguousarray(b))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


main()
