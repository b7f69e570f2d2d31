"""The official `openai` Python client against a running camelid server.

Usage: python test_client.py BASE_URL MODEL   (run by crates/camelid/tests/serve_binary.rs)
Exits non-zero on the first failed check.
"""
import json
import math
import os
import sys
import urllib.request

import openai

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from clientcheck import check, done  # noqa: E402

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test")


ids = [m.id for m in client.models.list().data]
check(model in ids, f"models.list has {model}: {ids}")
check(client.models.retrieve(model).id == model, "models.retrieve")
try:
    client.models.retrieve("no-such-model")
    check(False, "models.retrieve of an unknown model raises")
except openai.NotFoundError as e:
    check(e.body.get("code") == "model_not_found" if isinstance(e.body, dict) else False, f"404 body: {e.body}")

msgs = [{"role": "user", "content": "Name a fruit."}]
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0)
check(r.object == "chat.completion", "object")
check(isinstance(r.choices[0].message.content, str) and r.choices[0].message.role == "assistant", "message")
check(r.choices[0].finish_reason in ("stop", "length"), "finish_reason")
check(r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "usage")

text = ""
saw_role = False
for chunk in client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0, stream=True):
    if chunk.choices:
        d = chunk.choices[0].delta
        saw_role = saw_role or d.role == "assistant"
        text += d.content or ""
check(saw_role, "stream first delta carries the role")
check(text == r.choices[0].message.content, f"stream text {text!r} == whole {r.choices[0].message.content!r}")

r2 = client.chat.completions.create(model=model, messages=msgs, max_tokens=6, n=2, temperature=1.0, seed=3)
check(sorted(c.index for c in r2.choices) == [0, 1], "n=2")

# The stop string is the second word of the same greedy text, so it must occur.
full = client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0,
                                      extra_body={"ignore_eos": True}).choices[0].message.content
words = full.split()
check(len(words) >= 2, f"12 greedy tokens make two words: {full!r}")
r3 = client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0, stop=[words[1]],
                                    extra_body={"ignore_eos": True})
cut = r3.choices[0].message.content
check(r3.choices[0].finish_reason == "stop", f"stop: finish_reason {r3.choices[0].finish_reason!r}")
check(words[1] not in cut and full.startswith(cut), f"stop: {cut!r} is {full!r} cut before {words[1]!r}")

a = client.chat.completions.create(model=model, messages=msgs, max_tokens=10, temperature=1.0, seed=1234)
b = client.chat.completions.create(model=model, messages=msgs, max_tokens=10, temperature=1.0, seed=1234)
check(a.choices[0].message.content == b.choices[0].message.content, "same seed, same text")
# And the seed reaches the sampler: other seeds draw other texts (all alike, it was ignored).
seeded = {client.chat.completions.create(model=model, messages=msgs, max_tokens=10, temperature=1.0,
                                         seed=s).choices[0].message.content for s in (1, 2, 3, 4)}
check(len(seeded) > 1, f"other seeds, other texts: {seeded!r}")

r4 = client.chat.completions.create(model=model, messages=msgs, max_tokens=4, logprobs=True, top_logprobs=5,
                                    extra_body={"ignore_eos": True})
lps = r4.choices[0].logprobs.content
check(len(lps) == r4.usage.completion_tokens == 4, f"a logprob per token: {len(lps)} for {r4.usage.completion_tokens}")
for t in lps:
    check(t.logprob <= 0, "logprob <= 0")
    check(len(t.top_logprobs) == 5, "5 alternatives")
    check(sum(math.exp(x.logprob) for x in t.top_logprobs) <= 1 + 1e-4, "top mass <= 1")

prompt = "The capital of France is Paris"
req = urllib.request.Request(base + "/tokenize", data=json.dumps({"model": model, "prompt": prompt}).encode(),
                             headers={"content-type": "application/json", "authorization": "Bearer sk-test"})
n_tokens = json.load(urllib.request.urlopen(req))["count"]
c = client.completions.create(model=model, prompt=prompt, echo=True, logprobs=1, max_tokens=0)
lp = c.choices[0].logprobs
check(len(lp.token_logprobs) == n_tokens, f"{len(lp.token_logprobs)} logprobs for {n_tokens} prompt tokens")
check(lp.token_logprobs[0] is None and all(x <= 0 for x in lp.token_logprobs[1:]), "first is None, others <= 0")

try:
    client.chat.completions.create(model="no-such-model", messages=msgs)
    check(False, "unknown model must fail")
except openai.NotFoundError as e:
    check(e.status_code == 404, "404")

done("openai client")
