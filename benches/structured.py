"""Structured output's cost: 8 concurrent clients with a JSON-schema constraint vs the same
8 unconstrained, aggregate completion tok/s, and the per-token mask time from /metrics.

Usage: python3 benches/structured.py BASE_URL [MODEL] [ROUNDS]   (benches/structured.sh starts
the server). Every request asks for exactly 128 tokens: the unconstrained ones with
`ignore_eos`, the constrained ones with a schema too long to finish in 128 tokens (an array of
at least 40 records), so both sides generate the same number of tokens per request.
"""
import json
import sys
import threading
import time
import urllib.request

base = sys.argv[1].rstrip("/")
model = sys.argv[2] if len(sys.argv) > 2 else "default"
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 2
CLIENTS, PER_CLIENT, TOKENS = 8, 2, 128

schema = {
    "type": "object",
    "properties": {"people": {"type": "array", "minItems": 40, "items": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20},
                       "age": {"type": "integer", "minimum": 0, "maximum": 120},
                       "city": {"type": "string", "maxLength": 20}},
        "required": ["name", "age", "city"], "additionalProperties": False}}},
    "required": ["people"], "additionalProperties": False,
}


def post(path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=600))


def metrics():
    text = urllib.request.urlopen(base + "/metrics", timeout=60).read().decode()
    out = {}
    for line in text.splitlines():
        for name in ("camelid_grammar_masks_total", "camelid_grammar_mask_seconds_total"):
            if line.startswith(name + "{"):
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def body(client, i, constrained):
    b = {"model": model, "max_tokens": TOKENS, "temperature": 1.0, "seed": 1000 * client + i,
         "messages": [{"role": "user", "content": f"List people you know ({client}-{i})."}]}
    if constrained:
        b["response_format"] = {"type": "json_schema", "json_schema": {"name": "people", "schema": schema}}
    else:
        b["ignore_eos"] = True
    return b


def run(constrained):
    tokens, errors = [0] * CLIENTS, []

    def client(c):
        for i in range(PER_CLIENT):
            try:
                r = post("/v1/chat/completions", body(c, i, constrained))
                tokens[c] += r["usage"]["completion_tokens"]
            except Exception as e:  # reported, not hidden
                errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.time() - t0
    if errors:
        sys.exit(f"errors: {errors[:3]}")
    return sum(tokens), secs


post("/v1/chat/completions", body(99, 0, True))  # compile once, warm up
results = {"free": [], "json_schema": []}
m0 = metrics()
for r in range(rounds):
    for kind in ("free", "json_schema"):
        n, s = run(kind == "json_schema")
        results[kind].append(n / s)
        print(f"round {r + 1} {kind:12s} {n} tokens in {s:.1f} s: {n / s:.1f} tok/s", flush=True)
m1 = metrics()
masks = m1.get("camelid_grammar_masks_total", 0) - m0.get("camelid_grammar_masks_total", 0)
mask_s = m1.get("camelid_grammar_mask_seconds_total", 0) - m0.get("camelid_grammar_mask_seconds_total", 0)
free = sorted(results["free"])[len(results["free"]) // 2]
cons = sorted(results["json_schema"])[len(results["json_schema"]) // 2]
print(f"median: free {free:.1f} tok/s, json_schema {cons:.1f} tok/s, ratio {cons / free:.3f}")
if masks:
    print(f"mask time: {masks:.0f} masks, {1e6 * mask_s / masks:.0f} us per token (mean)")
