"""Writes a random LoRA adapter for a GGUF model, as PEFT saves one (adapter_config.json,
adapter_model.safetensors: every q/k/v/o and gate/up/down projection of every layer) and
the same adapter as a llama.cpp LoRA GGUF (through the tests' write_lora_gguf.py, gguf-py's
names and the converter's Q/K permutation): what benches/lora.sh serves with camelid's
--lora-modules and llama.cpp's --lora. Its text is noise; its cost is a real adapter's.

Usage: make-lora.py MODEL.gguf OUT_DIR [RANK]
"""
import json
import os
import struct
import subprocess
import sys

import gguf
import numpy as np

model, out = sys.argv[1], sys.argv[2]
rank = int(sys.argv[3]) if len(sys.argv) > 3 else 16
r = gguf.GGUFReader(model)
arch = r.fields["general.architecture"].contents()
meta = lambda k: r.fields[f"{arch}.{k}"].contents()
hidden, inter, layers = meta("embedding_length"), meta("feed_forward_length"), meta("block_count")
heads, kv_heads = meta("attention.head_count"), meta("attention.head_count_kv")
hd = hidden // heads
widths = {"self_attn.q_proj": (hidden, heads * hd), "self_attn.k_proj": (hidden, kv_heads * hd),
          "self_attn.v_proj": (hidden, kv_heads * hd), "self_attn.o_proj": (heads * hd, hidden),
          "mlp.gate_proj": (hidden, inter), "mlp.up_proj": (hidden, inter),
          "mlp.down_proj": (inter, hidden)}
rng = np.random.default_rng(0)
peft = os.path.join(out, "peft")
raw = os.path.join(out, "raw")
os.makedirs(peft, exist_ok=True)
os.makedirs(raw, exist_ok=True)
tensors, spec = {}, []
for l in range(layers):
    for m, (k, n) in widths.items():
        module = f"model.layers.{l}.{m}"
        a = rng.uniform(-0.03, 0.03, (rank, k)).astype(np.float32)
        b = rng.uniform(-0.03, 0.03, (n, rank)).astype(np.float32)
        tensors[f"base_model.model.{module}.lora_A.weight"] = a
        tensors[f"base_model.model.{module}.lora_B.weight"] = b
        files = {}
        for name, t in (("a", a), ("b", b)):
            f = os.path.join(raw, f"{l}.{m}.{name}")
            t.tofile(f)
            files[name] = {"file": f, "shape": list(t.shape)}
        spec.append({"module": module, **files})
# safetensors: an 8-byte header length, the JSON header, the raw tensors.
header, offset = {}, 0
for name, t in tensors.items():
    header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
    offset += t.nbytes
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(os.path.join(peft, "adapter_model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for t in tensors.values():
        f.write(t.tobytes())
json.dump({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "bias": "none",
           "target_modules": [m.split(".")[1] for m in widths]},
          open(os.path.join(peft, "adapter_config.json"), "w"))
spec_path = os.path.join(out, "lora-gguf.json")
json.dump({"out": os.path.join(out, "lora.gguf"), "arch": arch, "alpha": 2 * rank,
           "n_head": heads, "n_head_kv": kv_heads, "n_layers": layers, "tensors": spec},
          open(spec_path, "w"))
here = os.path.dirname(os.path.abspath(__file__))
subprocess.run([sys.executable, os.path.join(here, "../crates/camelid-model/tests/gguf/write_lora_gguf.py"),
                spec_path], check=True)
print(peft, os.path.join(out, "lora.gguf"))
