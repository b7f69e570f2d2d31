"""Single-client generation speed of one server on two workloads, greedy, one request at a
time: `edit` (a text or code given in the prompt is to be written out again with a change:
what prompt-lookup speculation is for) and `fresh` (MT-bench first turns: new text, nothing
to look up). Prints one JSON line per workload (output tokens/s over the workload, summed
tokens and seconds) and saves the answers, so that benches/speculative.sh can check that
speculation changed none.

With C > 1, C clients run the workload at once, each starting at another prompt; tokens/s
is then the aggregate over the workload's wall time.

Usage: python3 speculative.py BASE_URL NAME MAX_TOKENS OUT.json [C]   (run by speculative.sh)
"""
import json
import pathlib
import sys
import threading
import time
import urllib.request

base, name, max_tokens, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
clients = int(sys.argv[5]) if len(sys.argv) > 5 else 1

CODE = '''def moving_average(values, window):
    if window <= 0:
        raise ValueError("window must be positive")
    out = []
    total = 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            out.append(total / window)
    return out
'''
PROSE = ("Llamas are domesticated animals from South America. They have been used as pack "
         "animals by the people of the Andes for centuries, and they can carry about a quarter "
         "of their body wieght for many miles. Llamas are social animals and live in herds; "
         "a llama kept alone becomes lonely and stresed. Their wool is soft and contains no "
         "lanolin, and it is spun into yarn for clothes and blankets.")
CONFIG = json.dumps({"server": {"host": "127.0.0.1", "port": 8000, "workers": 4},
                     "models": [{"name": "vicuna", "path": "lmsys/vicuna-7b-v1.5"},
                                {"name": "smol", "path": "smollm2-135m-instruct"}],
                     "arena": {"max_tokens": 512, "temperature": 0.7}}, indent=2)
EDIT = [
    f"Add a docstring to this Python function and write out the whole function:\n\n{CODE}",
    f"Rename the function to `rolling_mean` and write out the whole code:\n\n{CODE}",
    f"Correct the spelling mistakes in this paragraph and write it out in full:\n\n{PROSE}",
    f"Change the port to 9000 and write out the whole JSON:\n\n{CONFIG}",
]
questions = pathlib.Path(__file__).resolve().parents[2] / "shared/data/mt_bench/question.jsonl"
if questions.exists():
    FRESH = [json.loads(l)["turns"][0] for l in questions.read_text().splitlines()[:8]]
else:
    FRESH = ["Explain how a steam engine turns heat into motion.",
             "Write a short story about a lighthouse keeper.",
             "What are the pros and cons of remote work?",
             "Describe the water cycle to a ten-year-old."]


def chat(prompt):
    body = json.dumps({"model": "default", "temperature": 0, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", data=body,
                                 headers={"content-type": "application/json"})
    t = time.perf_counter()
    r = json.loads(urllib.request.urlopen(req, timeout=600).read())
    return r["choices"][0]["message"]["content"], r["usage"]["completion_tokens"], \
        time.perf_counter() - t


chat("Hello")  # warm-up
answers = {}
for workload, prompts in (("edit", EDIT), ("fresh", FRESH)):
    got = [[None] * len(prompts) for _ in range(clients)]
    tokens = [0] * clients

    def client(c):
        for k in range(len(prompts)):
            i = (k + c) % len(prompts)
            text, n, _ = chat(prompts[i])
            got[c][i] = text
            tokens[c] += n

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - start
    answers[workload] = got
    print(json.dumps({"server": name, "workload": workload, "clients": clients,
                      "requests": clients * len(prompts), "tokens": sum(tokens),
                      "seconds": round(secs, 3), "tok_per_s": round(sum(tokens) / secs, 2)}),
          flush=True)
json.dump(answers, open(out, "w"))
