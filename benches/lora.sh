#!/usr/bin/env bash
# What a LoRA adapter costs: camelid with a random rank-R adapter of every projection
# (--lora-modules, requests to the adapter) against the same model without one, and
# llama.cpp b11434 with the same adapter as a LoRA GGUF (--lora) against itself without,
# each server alone, ROUNDS alternations, `camelid bench` at LEVELS; per-round ratios and
# their medians. The adapter comes from benches/make-lora.py (the test venv's gguf-py).
#   [ROUNDS=2] [LEVELS=1,8] [RANK=16] [MODEL=F.gguf] bash benches/lora.sh [PROMPT] [OUTPUT]
set -euo pipefail
cd "$(dirname "$0")/.."
P="${1:-128}"; N="${2:-64}"
ROUNDS="${ROUNDS:-2}"; LEVELS="${LEVELS:-1,8}"; RANK="${RANK:-16}"
MODEL="${MODEL:-$(bash models/fetch-default.sh)}"
PY="${CAMELID_TEST_PYTHON:-${CAMELID_CACHE:-$HOME/.cache/camelid}/test-venv/bin/python}"
LLAMA_BIN="$(bash benches/build-llama-cpp.sh)"
cargo build --release -p camelid >&2
source benches/servers.sh
BENCH=./target/release/camelid
ADAPTER="$(mktemp -d)"
read -r PEFT LORA_GGUF < <("$PY" benches/make-lora.py "$MODEL" "$ADAPTER" "$RANK")
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)  cores: $(nproc)  rounds: $ROUNDS  rank: $RANK"
bench() {  # bench PORT NAME MODEL_FIELD ROUND
  $BENCH bench --endpoint "http://127.0.0.1:$1" --name "$2" --model "$3" --prompt-tokens "$P" \
    --output-tokens "$N" --concurrency "$LEVELS" --json "$OUT/lora-$2-$STAMP-r$4.json"
}
for r in $(seq "$ROUNDS"); do
  $BENCH serve --model "default=$MODEL" --lora-modules "tuned=$PEFT" --port 18080 \
    --max-num-seqs 16 >/tmp/camelid-bench.log 2>&1 & SERVER=$!
  up 18080
  echo "round $r camelid  load $(cut -d' ' -f1 /proc/loadavg)"
  bench 18080 camelid default "$r"
  bench 18080 camelid-lora tuned "$r"
  down
  for v in "llamacpp:" "llamacpp-lora:--lora $LORA_GGUF"; do
    # shellcheck disable=SC2086 # the flags are a word list
    "$LLAMA_BIN/llama-server" -m "$MODEL" --port 18081 --parallel 16 -t "$(nproc)" -c 16384 \
      ${v#*:} >/tmp/llama-bench-server.log 2>&1 & SERVER=$!
    up 18081
    echo "round $r ${v%%:*}  load $(cut -d' ' -f1 /proc/loadavg)"
    bench 18081 "${v%%:*}" default "$r"
    down
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" - "$OUT" "$STAMP" "$ROUNDS" <<'PY'
import json, statistics, sys
out, stamp, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
agg = lambda name, r: {l["clients"]: l["aggregate_tok_s"]
                       for l in json.load(open(f"{out}/lora-{name}-{stamp}-r{r}.json"))["levels"]}
pairs = [("camelid-lora", "camelid"), ("llamacpp-lora", "llamacpp"),
         ("camelid-lora", "llamacpp-lora")]
for r in range(1, rounds + 1):
    print(f"round {r}: " + "  ".join(f"{n} {agg(n, r)}" for n in
          ["camelid", "camelid-lora", "llamacpp", "llamacpp-lora"]))
for a, b in pairs:
    for c in sorted(agg(a, 1)):
        v = [agg(a, r)[c] / agg(b, r)[c] for r in range(1, rounds + 1)]
        print(f"{a} / {b}, {c} clients: median {statistics.median(v):.2f} "
              f"[{' '.join(f'{x:.2f}' for x in v)}]")
PY
rm -rf "$ADAPTER"
