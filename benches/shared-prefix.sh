#!/usr/bin/env bash
# The n choices of one request share their prompt's blocks: a fresh ~1 000-token prompt with
# n = 4, on camelid with the prefix cache (the default: the choices compute the prompt once)
# and without it (--no-prefix-caching: each choice computes it), ROUNDS alternations.
# Prints a table and writes benches/results/shared-prefix-STAMP.jsonl.
#   [ROUNDS=2] [N=4] [PROMPT_WORDS=1000] bash benches/shared-prefix.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-2}"; N="${N:-4}"; WORDS="${PROMPT_WORDS:-1000}"
bash models/fetch-default.sh >/dev/null
cargo build --release -p camelid >&2
OUT=benches/results; mkdir -p "$OUT"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
SERVER=""
trap '[ -n "$SERVER" ] && kill $SERVER 2>/dev/null || true' EXIT
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)  cores: $(nproc)"
for r in $(seq "$ROUNDS"); do
  for mode in shared unshared; do
    flags=(); [ "$mode" = unshared ] && flags=(--no-prefix-caching)
    ./target/release/camelid serve --port 18095 "${flags[@]}" >/tmp/camelid-shared-prefix.log 2>&1 &
    SERVER=$!
    for _ in $(seq 120); do curl -sf http://127.0.0.1:18095/health >/dev/null && break; sleep 0.5; done
    python3 - "$mode" "$r" "$N" "$WORDS" >>"$OUT/shared-prefix-$STAMP.jsonl" <<'PY'
import json, random, sys, time, urllib.request
mode, r, n, words = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
vocab = "the cat sat on a mat and then it ran to see what was new".split()
rng = random.Random(f"{mode}-{r}")  # a prompt no earlier request has cached
prompt = " ".join(rng.choice(vocab) for _ in range(words))
body = {"model": "default", "prompt": prompt, "max_tokens": 16, "n": n,
        "temperature": 0.8, "seed": 1, "ignore_eos": True}
req = urllib.request.Request("http://127.0.0.1:18095/v1/completions",
                             data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
t0 = time.time()
usage = json.load(urllib.request.urlopen(req))["usage"]
print(json.dumps({"mode": mode, "round": r, "n": n, "seconds": time.time() - t0,
                  "prompt_tokens": usage["prompt_tokens"]}))
PY
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT/shared-prefix-$STAMP.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"n = {rows[0]['n']} choices of a {rows[0]['prompt_tokens']}-token prompt, 16 tokens each")
print(f"{'mode':>9} {'seconds (each round)':>28} {'median':>7}")
med = {}
for mode in ("shared", "unshared"):
    s = [x["seconds"] for x in rows if x["mode"] == mode]
    med[mode] = statistics.median(s)
    print(f"{mode:>9} {' '.join(f'{v:.2f}' for v in s):>28} {med[mode]:7.2f}")
print(f"shared is {med['unshared'] / med['shared']:.2f}x faster")
PY
