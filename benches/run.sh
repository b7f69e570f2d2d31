#!/usr/bin/env bash
# camelid vs llama.cpp on this machine, same model (SmolLM2-135M-Instruct Q4_1), same run.
# Starts both servers on loopback, drives each with `camelid bench`, writes JSON under
# benches/results/ and prints both tables and the camelid/llama.cpp ratios.
#   bash benches/run.sh [PROMPT_TOKENS] [OUTPUT_TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
P="${1:-128}"; N="${2:-128}"
MODEL="$(bash models/fetch-default.sh)"
LLAMA_BIN="$(bash benches/build-llama-cpp.sh)"
cargo build --release -p camelid >&2
OUT=benches/results; mkdir -p "$OUT"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)  cores: $(nproc)"
./target/release/camelid serve --port 18080 --max-num-seqs 16 >/tmp/camelid-bench.log 2>&1 & CAM=$!
"$LLAMA_BIN/llama-server" -m "$MODEL" --port 18081 --parallel 16 -t "$(nproc)" -c 16384 >/tmp/llama-bench-server.log 2>&1 & LL=$!
trap 'kill $CAM $LL 2>/dev/null || true' EXIT
for port in 18080 18081; do
  for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
done
./target/release/camelid bench --endpoint http://127.0.0.1:18080 --name camelid --prompt-tokens "$P" --output-tokens "$N" --json "$OUT/camelid-$STAMP.json"
# MT-bench second turn: prefix cache on, then off (a fresh server).
./target/release/camelid bench --endpoint http://127.0.0.1:18080 --name camelid-prefix-cache --second-turn 1500 --json "$OUT/turn2-cache-$STAMP.json"
kill $CAM; wait $CAM 2>/dev/null || true
./target/release/camelid serve --port 18082 --no-prefix-caching >/tmp/camelid-bench-nocache.log 2>&1 & CAM=$!
for _ in $(seq 120); do curl -sf "http://127.0.0.1:18082/health" >/dev/null && break; sleep 1; done
./target/release/camelid bench --endpoint http://127.0.0.1:18082 --name camelid-no-prefix-cache --second-turn 1500 --json "$OUT/turn2-nocache-$STAMP.json"
kill $CAM; wait $CAM 2>/dev/null || true
./target/release/camelid bench --endpoint http://127.0.0.1:18081 --name llama.cpp --prompt-tokens "$P" --output-tokens "$N" --json "$OUT/llamacpp-$STAMP.json"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT/camelid-$STAMP.json" "$OUT/llamacpp-$STAMP.json" <<'PY'
import json, sys
c, l = (json.load(open(p)) for p in sys.argv[1:3])
print("\ncamelid / llama.cpp")
print(f"{'clients':>7} {'aggregate':>10} {'prefill':>8} {'decode':>8} {'itl p99':>8}")
for a, b in zip(c["levels"], l["levels"]):
    r = lambda k: a[k] / b[k] if b[k] else float("nan")
    print(f"{a['clients']:>7} {r('aggregate_tok_s'):>10.2f} {r('prefill_tok_s_p50'):>8.2f} {r('decode_tok_s_per_stream'):>8.2f} {r('itl_p99_ms'):>8.2f}")
PY
