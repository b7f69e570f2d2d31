#!/usr/bin/env bash
# camelid vs llama.cpp on this machine, same model (SmolLM2-135M-Instruct Q4_1), same run.
# Each server runs alone (an idle server beside the measured one still takes CPU on 2 cores),
# driven by `camelid bench`; ROUNDS alternations (camelid, llama.cpp, camelid, ...) so that a
# burst of load from the shared host hits both, and the ratios are taken round by round and
# summarised by their median. Then the MT-bench second turn with and without the prefix cache.
# JSON goes under benches/results/.
# MODEL: another GGUF to measure on (default: the default model).
#   [ROUNDS=2] [LEVELS=1,4,8,16] [S2=0] [MODEL=F.gguf] bash benches/run.sh [PROMPT_TOKENS] [OUTPUT_TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
P="${1:-128}"; N="${2:-128}"
ROUNDS="${ROUNDS:-2}"; LEVELS="${LEVELS:-1,4,8,16}"
MODEL="${MODEL:-$(bash models/fetch-default.sh)}"
LLAMA_BIN="$(bash benches/build-llama-cpp.sh)"
cargo build --release -p camelid >&2
source benches/servers.sh
BENCH=./target/release/camelid
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)  cores: $(nproc)  rounds: $ROUNDS  llama.cpp AMX kernels: ${LLAMA_AMX:-0}"
# camelid as it starts by default, then (unless S2=0) with prompts favoured over the streams'
# gaps (`--max-step-stretch 2`), to show what the default trades.
VARIANTS=("camelid:")
[ "${S2:-1}" = 0 ] || VARIANTS+=("camelid-s2:--max-step-stretch 2")
for r in $(seq "$ROUNDS"); do
  for v in "${VARIANTS[@]}"; do
    name="${v%%:*}"; flags="${v#*:}"
    # shellcheck disable=SC2086 # flags is a word list
    $BENCH serve --model "default=$MODEL" --port 18080 --max-num-seqs 16 $flags >/tmp/camelid-bench.log 2>&1 & SERVER=$!
    up 18080
    echo "round $r $name  load $(cut -d' ' -f1 /proc/loadavg)"
    $BENCH bench --endpoint http://127.0.0.1:18080 --name "$name" --prompt-tokens "$P" \
      --output-tokens "$N" --concurrency "$LEVELS" --json "$OUT/$name-$STAMP-r$r.json"
    down
  done
  "$LLAMA_BIN/llama-server" -m "$MODEL" --port 18081 --parallel 16 -t "$(nproc)" -c 16384 \
    >/tmp/llama-bench-server.log 2>&1 & SERVER=$!
  up 18081
  echo "round $r  load $(cut -d' ' -f1 /proc/loadavg)"
  $BENCH bench --endpoint http://127.0.0.1:18081 --name llama.cpp --prompt-tokens "$P" \
    --output-tokens "$N" --concurrency "$LEVELS" --json "$OUT/llamacpp-$STAMP-r$r.json"
  down
done
# MT-bench second turn: prefix cache on, then off (a fresh server).
$BENCH serve --model "default=$MODEL" --port 18080 >/tmp/camelid-bench.log 2>&1 & SERVER=$!
up 18080
$BENCH bench --endpoint http://127.0.0.1:18080 --name camelid-prefix-cache --second-turn 1500 \
  --json "$OUT/turn2-cache-$STAMP.json"
down
$BENCH serve --model "default=$MODEL" --port 18082 --no-prefix-caching >/tmp/camelid-bench-nocache.log 2>&1 & SERVER=$!
up 18082
$BENCH bench --endpoint http://127.0.0.1:18082 --name camelid-no-prefix-cache --second-turn 1500 \
  --json "$OUT/turn2-nocache-$STAMP.json"
down
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT" "$STAMP" "$ROUNDS" <<'PY'
import json, os, statistics, sys
out, stamp, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
load = lambda name, r: json.load(open(f"{out}/{name}-{stamp}-r{r}.json"))["levels"]
keys = [("aggregate", "aggregate_tok_s"), ("prefill", "prefill_tok_s_p50"),
        ("decode", "decode_tok_s_per_stream"), ("itl p99", "itl_p99_ms"),
        ("ttft p50", "ttft_p50_ms")]
for name in ["camelid", "camelid-s2"]:
    if not os.path.exists(f"{out}/{name}-{stamp}-r1.json"):
        continue
    ratios = {}  # (clients, key) -> per-round ratios
    for r in range(1, rounds + 1):
        for a, b in zip(load(name, r), load("llamacpp", r)):
            for label, k in keys:
                ratios.setdefault((a["clients"], label), []).append(a[k] / b[k] if b[k] else float("nan"))
    print(f"\n{name} / llama.cpp: median over {rounds} round(s) [each round's ratio]")
    print(f"{'clients':>7} " + " ".join(f"{label:>22}" for label, _ in keys))
    for c in sorted({c for c, _ in ratios}):
        cells = []
        for label, _ in keys:
            v = ratios[(c, label)]
            cells.append(f"{statistics.median(v):5.2f} [{' '.join(f'{x:.2f}' for x in v)}]")
        print(f"{c:>7} " + " ".join(f"{x:>22}" for x in cells))
    # The issue's latency target: 8-client p99 gap over the single-stream p99 gap, per round.
    own = []
    for r in range(1, rounds + 1):
        lv = {l["clients"]: l for l in load(name, r)}
        if 1 in lv and 8 in lv and lv[1]["itl_p99_ms"]:
            own.append(lv[8]["itl_p99_ms"] / lv[1]["itl_p99_ms"])
    if own:
        print(f"{name}: 8-client ITL p99 / its own 1-client ITL p99: median {statistics.median(own):.2f} "
              f"[{' '.join(f'{x:.2f}' for x in own)}]")
PY
