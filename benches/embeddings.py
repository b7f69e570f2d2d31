"""Embedding throughput of one server: N texts of about P tokens, sent B per request by C
concurrent clients to `/v1/embeddings`; prints one JSON line (inputs/s, tokens/s, request
latency median) and saves the vectors' first text's vector for the cross-check.

Usage: python3 embeddings.py BASE_URL NAME N P B C OUT.json   (run by benches/embeddings.sh)
"""
import json
import random
import statistics
import sys
import threading
import time
import urllib.request

base, name, n, p, b, c, out = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7]), sys.argv[7]
words = ("river stone cloud lamp orange winter garden signal paper window metal quiet forest "
         "number engine silver market letter bridge summer").split()
# Different from their first word on (a shared start would be served from the prefix cache).
# Texts of their own per concurrency level: a level after another on the same server must
# not find its inputs cached.
rng = random.Random(c)
texts = [" ".join(rng.choice(words) for _ in range(int(p * 0.8))) for _ in range(n)]
batches = [texts[i:i + b] for i in range(0, n, b)]


def post(inputs):
    body = json.dumps({"model": "default", "input": inputs}).encode()
    req = urllib.request.Request(base + "/v1/embeddings", data=body,
                                 headers={"content-type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=600).read())


first = post(texts[:1])  # warm-up, and the vector for the cross-check
lock = threading.Lock()
todo = list(range(len(batches)))
latencies, tokens = [], [0]


def client():
    while True:
        with lock:
            if not todo:
                return
            i = todo.pop(0)
        t = time.perf_counter()
        r = post(batches[i])
        dt = time.perf_counter() - t
        with lock:
            latencies.append(dt)
            tokens[0] += r.get("usage", {}).get("prompt_tokens", 0)
            assert len(r["data"]) == len(batches[i])


start = time.perf_counter()
threads = [threading.Thread(target=client) for _ in range(c)]
for t in threads:
    t.start()
for t in threads:
    t.join()
wall = time.perf_counter() - start
result = {"name": name, "inputs": n, "batch": b, "clients": c, "wall_s": round(wall, 3),
          "inputs_per_s": round(n / wall, 1), "tokens_per_s": round(tokens[0] / wall, 1),
          "prompt_tokens": tokens[0], "latency_p50_s": round(statistics.median(latencies), 3)}
print(json.dumps(result))
json.dump({"result": result, "first": first["data"][0]["embedding"]}, open(out, "w"))
