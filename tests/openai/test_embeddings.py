"""Embeddings through the official clients: openai's `embeddings.create` (`/v1/embeddings`) and
ollama's `embed` and `embeddings` (`/api/embed`, `/api/embeddings`), against a running camelid.

Usage: python test_embeddings.py BASE_URL MODEL API_KEY GGUF   (run by
crates/camelid/tests/serve_binary.rs; GGUF is the served model's file). The independent check:
the served model's LM head (its tied embedding matrix, dequantized here by the `gguf` package)
applied with numpy to the last token's unnormalized embedding must give the next-token
distribution that `/v1/completions` serves. Exits non-zero on the first failed check.
"""
import base64
import json
import os
import sys
import urllib.request

import gguf
import numpy as np
import ollama
import openai

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from clientcheck import check, done  # noqa: E402

base, model, key, gguf_path = sys.argv[1:5]
client = openai.OpenAI(base_url=base + "/v1", api_key=key)


def post(path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers={
        "content-type": "application/json", "authorization": f"Bearer {key}"})
    return json.loads(urllib.request.urlopen(req).read())


reader = gguf.GGUFReader(gguf_path)
tensors = {t.name: t for t in reader.tensors}
head = tensors.get("output.weight", tensors["token_embd.weight"])
W = gguf.quants.dequantize(head.data, head.tensor_type).astype(np.float64)
width = W.shape[1]

prompt = "The capital of France is"
texts = [prompt, "Rivers carry sediment to the sea.", "def add(a, b): return a + b"]

# The SDK's default asks for base64 and decodes it: unit-length vectors of the model's width.
e = client.embeddings.create(model=model, input=prompt)
v = np.array(e.data[0].embedding, dtype=np.float32)
check(e.object == "list" and e.data[0].object == "embedding" and e.data[0].index == 0, f"shape: {e}")
check(v.shape == (width,), f"{v.shape} dimensions, the model's {width}")
check(abs(np.linalg.norm(v) - 1) < 1e-5, f"unit length: {np.linalg.norm(v)}")
check(e.usage.prompt_tokens == e.usage.total_tokens > 0, f"usage: {e.usage}")

# `float` gives the same f32 values as `base64`.
f = client.embeddings.create(model=model, input=prompt, encoding_format="float")
check(np.array_equal(np.array(f.data[0].embedding, dtype=np.float32), v), "float == base64")
raw = client.embeddings.with_raw_response.create(model=model, input=prompt, encoding_format="base64")
b64 = raw.parse().data[0].embedding
decoded = np.frombuffer(base64.b64decode(b64), dtype="<f4") if isinstance(b64, str) else np.array(b64, np.float32)
check(np.array_equal(decoded, v), "base64 is little-endian f32")

# Several inputs: each vector is the one it gets alone (batching, the prefix cache and the
# engine's waves change nothing), in input order; different texts differ.
many = client.embeddings.create(model=model, input=texts, encoding_format="float")
check([d.index for d in many.data] == [0, 1, 2], "indices in input order")
alone = [np.array(client.embeddings.create(model=model, input=t, encoding_format="float").data[0].embedding,
                  dtype=np.float32) for t in texts]
for i, d in enumerate(many.data):
    check(np.array_equal(np.array(d.embedding, dtype=np.float32), alone[i]), f"input {i} as alone")
check(float(alone[0] @ alone[1]) < 0.999, "different texts, different vectors")
check(many.usage.prompt_tokens == sum(client.embeddings.create(model=model, input=t).usage.prompt_tokens
                                      for t in texts), f"usage sums the inputs: {many.usage}")

# Token ids embed as the text they tokenize to (this model's tokenizer appends no token to an
# embedding input, so `/tokenize`'s ids are the same).
tokens = post("/tokenize", {"model": model, "prompt": prompt})["tokens"]
by_ids = client.embeddings.create(model=model, input=[tokens], encoding_format="float")
check(np.array_equal(np.array(by_ids.data[0].embedding, dtype=np.float32), v), "token ids == text")

# The independent check: the last token's unnormalized state through the LM head (numpy, the
# file's dequantized weights) is the distribution the server samples the next token from.
# The server rounds the head's input to 8 bits a value (as llama.cpp does), measured here to
# move these logprobs by ~0.04 nats; another token's state or a mean misses the top token.
h = np.array(client.embeddings.create(model=model, input=prompt, encoding_format="float",
                                      extra_body={"normalize": False}).data[0].embedding)
check(abs(np.linalg.norm(h) - 1) > 0.1, f"normalize: false keeps the model's scale: {np.linalg.norm(h)}")
check(np.allclose(h / np.linalg.norm(h), v, atol=1e-6), "normalized is the raw vector scaled")
logits = W @ h
lp = logits - logits.max()
lp -= np.log(np.exp(lp).sum())
served = client.completions.create(model=model, prompt=prompt, max_tokens=1, temperature=0, logprobs=5)
top = served.choices[0].logprobs.top_logprobs[0]
first = max(top, key=top.get)
detok = {int(i): post("/detokenize", {"model": model, "tokens": [int(i)]})["prompt"]
         for i in np.argsort(-lp)[:5]}
check(detok[int(np.argmax(lp))] == first, f"numpy's top token {detok[int(np.argmax(lp))]!r} == served {first!r}")
by_text = {t: lp[i] for i, t in detok.items()}
shared = [t for t in top if t in by_text][:3]
check(len(shared) >= 3, f"top tokens shared: {top} vs {by_text}")
for t in shared:
    check(abs(by_text[t] - top[t]) < 0.1, f"{t!r}: numpy {by_text[t]:.4f} vs served {top[t]:.4f}")

# Errors name the field.
def bad(kwargs, status, param):
    try:
        client.embeddings.create(model=kwargs.pop("model", model), **kwargs)
    except openai.APIStatusError as err:
        check(err.status_code == status, f"{kwargs}: status {err.status_code}")
        if param:
            check(err.body.get("param") == param, f"{kwargs}: param {err.body}")
        return
    check(False, f"{kwargs} was accepted")


bad({"input": ""}, 400, "input")
bad({"input": ["ok", ""]}, 400, "input")
bad({"input": prompt, "encoding_format": "bin"}, 400, "encoding_format")
bad({"input": prompt, "dimensions": 64}, 400, "dimensions")
bad({"input": [[1] * 1500]}, 400, "input")
bad({"input": [[10 ** 7]]}, 400, "input")
bad({"input": prompt, "model": "no-such-model"}, 404, None)
check(client.embeddings.create(model=model, input=prompt, dimensions=width).data[0].embedding is not None,
      "dimensions equal to the width is fine")

# Ollama's client: `embed` normalizes like OpenAI's, the legacy `embeddings` does not.
oc = ollama.Client(host=base, headers={"Authorization": f"Bearer {key}"})
oe = oc.embed(model=model, input=texts)
check(len(oe.embeddings) == 3 and oe.prompt_eval_count == many.usage.prompt_tokens, f"embed: {oe.prompt_eval_count}")
for i in range(3):
    check(np.array_equal(np.array(oe.embeddings[i], dtype=np.float32), alone[i]), f"ollama input {i} == openai")
check(oc.embed(model=model, input=prompt).embeddings[0] == oe.embeddings[0], "a single string")
check(oc.embed(model=model, input=[]).embeddings == [], "no input loads the model")
legacy = oc.embeddings(model=model, prompt=prompt)
check(np.allclose(np.array(legacy.embedding), h, atol=1e-6), "legacy embeddings: the raw vector")
# Ollama truncates an input over the context by default, and refuses it with truncate=False.
long_text = "word " * 1500  # the server's context: 1024 tokens
check(len(oc.embed(model=model, input=long_text).embeddings[0]) == width, "truncated by default")
try:
    oc.embed(model=model, input=long_text, truncate=False)
    check(False, "truncate=False refuses an input over the context")
except ollama.ResponseError as err:
    check(err.status_code == 400 and "context" in str(err), f"{err}")

done("test_embeddings.py")
