"""The official `ollama` Python client against a running camelid server (Ollama's native API).

Usage: python test_client.py BASE_URL MODEL API_KEY   (run by crates/camelid/tests/serve_binary.rs)
The server serves MODEL with tests/fixtures/chat-templates/llama3-json-tools.jinja, whose calls
are bare JSON: a `format` schema then forces a call, so the calls' path is seen whatever the
model would have written. Exits non-zero on the first failed check.
"""
import json
import os
import sys

import ollama

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from clientcheck import check, done  # noqa: E402

base, model, key = sys.argv[1], sys.argv[2], sys.argv[3]
client = ollama.Client(host=base, headers={"Authorization": f"Bearer {key}"})


def error_of(call):
    try:
        call()
    except ollama.ResponseError as e:
        return e
    check(False, "the call raises ResponseError")


# Listings: every name with its tag, as Ollama lists them (LangChain checks a name so).
listed = client.list().models
check(f"{model}:latest" in [m.model for m in listed], f"list has {model}:latest: {listed}")
entry = next(m for m in listed if m.model == f"{model}:latest")
check(entry.details.family == "llama" and entry.details.format == "gguf", f"details: {entry.details}")
check(entry.size > 50_000_000, f"size is the file's: {entry.size}")
# The default model's file is llama.cpp's Q4_1 (its general.file_type), named as Ollama does.
check(entry.details.quantization_level == "Q4_1", f"quantization: {entry.details}")
info = client.show(model)
check("completion" in info.capabilities and "tools" in info.capabilities, f"capabilities: {info.capabilities}")
check(info.modelinfo["llama.context_length"] > 0, f"model_info: {info.modelinfo}")
check(info.details.parameter_size.endswith("M"), f"parameter size: {info.details.parameter_size}")
check(info.details.quantization_level == "Q4_1", f"show's quantization: {info.details}")
check(f"{model}:latest" in [m.model for m in client.ps().models], "ps")

# Chat: whole and streamed give the same greedy text; counts and durations.
opts = {"temperature": 0, "num_predict": 8}
msgs = [{"role": "user", "content": "Name a fruit."}]
r = client.chat(model=model, messages=msgs, options=opts)
check(r.done and r.done_reason in ("stop", "length"), f"done: {r}")
check(r.message.role == "assistant" and r.message.content, f"message: {r.message}")
check(0 < r.eval_count <= 8 and r.prompt_eval_count > 5, f"counts: {r.eval_count}, {r.prompt_eval_count}")
check(r.total_duration >= r.prompt_eval_duration + r.eval_duration > 0, "durations")
parts = list(client.chat(model=model, messages=msgs, options=opts, stream=True))
check(parts[-1].done and not any(p.done for p in parts[:-1]), "only the last streamed object is done")
check(len(parts) > 2, f"streamed in pieces: {len(parts)}")
streamed = "".join(p.message.content or "" for p in parts)
check(streamed == r.message.content, f"stream {streamed!r} == whole {r.message.content!r}")
check(parts[-1].eval_count == r.eval_count, "the last streamed object counts the tokens")
tagged = client.chat(model=model + ":latest", messages=msgs, options=opts)
check(tagged.message.content == r.message.content, "`:latest` names the same model")
check(client.chat(model=model, messages=[]).done_reason == "load", "no messages: the load answer")
check(client.chat(model=model, messages=[], keep_alive=0).done_reason == "unload",
      "keep_alive 0 without messages: the unload answer (`ollama stop`)")
check(client.chat(model=model, messages=msgs, options=opts, keep_alive="10m").message.content
      == r.message.content, "a keep_alive duration is taken")
e = error_of(lambda: client.chat(model=model, messages=msgs, keep_alive="soon"))
check(e.status_code == 400 and "keep_alive" in e.error, f"a malformed keep_alive: {e}")
# Integer options sent as floats (JavaScript clients' numbers) are taken, as Ollama does.
f = client.chat(model=model, messages=msgs, options={"temperature": 0, "num_predict": 8.0, "top_k": 40.0})
check(f.message.content == r.message.content, f"float integer options: {f.message.content!r}")

# Generate: the prompt through the chat template is the same chat; raw skips the template.
g = client.generate(model=model, prompt="Name a fruit.", options=opts)
check(g.response == r.message.content, f"generate {g.response!r} == chat {r.message.content!r}")
gs = "".join(p.response for p in client.generate(model=model, prompt="Name a fruit.", options=opts, stream=True))
check(gs == g.response, "generate streamed == whole")
raw = client.generate(model=model, prompt="Name a fruit.", raw=True, options=opts)
check(raw.response and raw.prompt_eval_count < g.prompt_eval_count, "raw: no template around the prompt")
check(client.generate(model=model).done_reason == "load", "no prompt: the load answer")
# An empty `system` is none (older clients always send one): the same prompt, raw or not.
g0 = client.generate(model=model, prompt="Name a fruit.", system="", options=opts)
check(g0.response == g.response and g0.prompt_eval_count == g.prompt_eval_count,
      f"system '' changes nothing: {g0.prompt_eval_count} vs {g.prompt_eval_count}")
raw0 = client.generate(model=model, prompt="Name a fruit.", raw=True, system="", options=opts)
check(raw0.response == raw.response, "raw with system '' is raw")

# Sampling options reach the sampler: a seed repeats, stop ends the text.
hot = {"temperature": 1.0, "seed": 7, "num_predict": 12}
a = client.chat(model=model, messages=msgs, options=hot).message.content
check(a == client.chat(model=model, messages=msgs, options=hot).message.content, "same seed, same text")
seeded = {client.chat(model=model, messages=msgs, options={**hot, "seed": s}).message.content
          for s in (1, 2, 3, 4)}
check(len(seeded) > 1, f"other seeds, other texts (the seed reaches the sampler): {seeded!r}")
long = client.chat(model=model, messages=msgs, options={"temperature": 0, "num_predict": 16}).message.content
words = long.split()
check(len(words) >= 3, f"16 greedy tokens make words: {long!r}")
cut = client.chat(model=model, messages=msgs, options={"temperature": 0, "num_predict": 16, "stop": [words[2]]})
check(words[2] not in cut.message.content and cut.done_reason == "stop", f"stop: {cut.message.content!r}")

# JSON output: a schema.
schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
          "required": ["answer"], "additionalProperties": False}
j = client.chat(model=model, messages=[{"role": "user", "content": "Is the sky blue? Answer in JSON."}],
                format=schema, options={"temperature": 0, "num_predict": 40})
check(json.loads(j.message.content)["answer"] in ("yes", "no"), f"format: {j.message.content!r}")

# Log-probabilities, one per output token.
lp = client.chat(model=model, messages=msgs, options=opts, logprobs=True, top_logprobs=2)
check(len(lp.logprobs) == lp.eval_count, f"{len(lp.logprobs)} logprobs for {lp.eval_count} tokens")
check(all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in lp.logprobs), "top_logprobs")

# Tools: a call forced by a schema in the template's format comes back as a call.
tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
call_schema = {"type": "object", "properties": {
    "name": {"type": "string", "enum": ["get_weather"]},
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris"]}},
                   "required": ["city"], "additionalProperties": False}},
    "required": ["name", "parameters"], "additionalProperties": False}
ask = [{"role": "user", "content": "What is the weather in Paris?"}]
t = client.chat(model=model, messages=ask, tools=tools, format=call_schema,
                options={"temperature": 0, "num_predict": 60})
calls = t.message.tool_calls or []
check(len(calls) == 1 and calls[0].function.name == "get_weather", f"tool call: {t.message}")
check(calls[0].function.arguments == {"city": "Paris"}, f"arguments: {calls[0].function.arguments}")
check(not t.message.content, f"no text beside the call: {t.message.content!r}")
streamed_calls = [c for p in client.chat(model=model, messages=ask, tools=tools, format=call_schema,
                                         options={"temperature": 0, "num_predict": 60}, stream=True)
                  for c in (p.message.tool_calls or [])]
check([c.function.arguments for c in streamed_calls] == [{"city": "Paris"}], f"streamed calls: {streamed_calls}")
# The call and its result sent back render (ids paired by camelid).
history = ask + [{"role": "assistant", "content": "", "tool_calls": [
    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "18 degrees", "tool_name": "get_weather"}]
check(client.chat(model=model, messages=history, tools=tools, options=opts).done, "history with a call")

# Roles are read as Ollama reads them, lowercased (httpx: the client's types would refuse).
import httpx  # noqa: E402

auth = {"Authorization": f"Bearer {key}"}
cased = httpx.post(f"{base}/api/chat", headers=auth, timeout=60, json={
    "model": model, "stream": False, "options": opts,
    "messages": [{"role": "User", "content": "Name a fruit."}]}).json()
check(cased["message"]["content"] == r.message.content, f"role 'User' is 'user': {cased}")
empty = httpx.post(f"{base}/api/chat", headers=auth, timeout=60,
                   json={"model": "", "messages": msgs})
check(empty.status_code == 400 and "model is required" in empty.json()["error"], f"no model: {empty.text}")
# `dimensions` cuts the vector and makes it unit length again, as Ollama does.
v = client.embed(model=model, input="a fruit", dimensions=16).embeddings[0]
check(len(v) == 16 and abs(sum(x * x for x in v) - 1) < 1e-4, f"16 dimensions, unit length: {len(v)}")
full = client.embed(model=model, input="a fruit").embeddings[0]
norm = sum(x * x for x in full[:16]) ** 0.5
check(all(abs(a - b / norm) < 1e-4 for a, b in zip(v, full)), "the first 16, renormalized")
check(len(client.embed(model=model, input="a fruit", dimensions=100000).embeddings[0]) == len(full),
      "more dimensions than the model's: its own")

# Errors: Ollama's `{"error": "…"}` with the status, and its words.
e = error_of(lambda: client.chat(model="no-such-model", messages=msgs))
check(e.status_code == 404 and e.error == "model 'no-such-model' not found", f"unknown model: {e}")
e = error_of(lambda: client.chat(model=model, messages=[{"role": "user", "content": "x", "images": ["aGVsbG8="]}]))
check(e.status_code == 400 and "images" in e.error, f"images: {e}")
e = error_of(lambda: client.chat(model=model, messages=msgs, options={"temperature": 9}))
check(e.status_code == 400 and "temperature" in e.error, f"bad option: {e}")
e = error_of(lambda: client.pull("llama3"))
check(e.status_code == 501, f"pull: {e}")
e = error_of(lambda: ollama.Client(host=base, headers={"Authorization": "Bearer wrong"}).list())
check(e.status_code == 401 and isinstance(e.error, str), f"wrong key, Ollama's error shape: {e!r}")

done("ollama client")
