#!/usr/bin/env bash
# camelid vs llama.cpp b11434 on one GGUF (default: the 1B-class random Q4_K_M written by
# make-1b-model.sh), single stream and 8 clients, ROUNDS alternating rounds in one run; each
# server runs alone. BIN: the camelid binary to measure (default target/release/camelid).
#   [ROUNDS=2] [BIN=...] bash benches/kquant-1b.sh [MODEL.gguf] [PROMPT_TOKENS] [OUTPUT_TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-$(bash benches/make-1b-model.sh Q4_K_M)}"; P="${2:-64}"; N="${3:-32}"
ROUNDS="${ROUNDS:-2}"; BIN="${BIN:-./target/release/camelid}"
LLAMA_BIN="$(bash benches/build-llama-cpp.sh)"
OUT=benches/results; mkdir -p "$OUT"; STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
SERVER=""
trap '[ -n "$SERVER" ] && kill $SERVER 2>/dev/null || true' EXIT
up() { for _ in $(seq 300); do curl -sf "http://127.0.0.1:$1/health" >/dev/null && return; sleep 1; done
  echo "server on port $1 did not come up" >&2; exit 1; }
down() { kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""; }
lscpu | grep -E "Model name|L2 cache|L3 cache|^CPU\(s\)"
echo "model $(basename "$MODEL") $(du -h "$MODEL" | cut -f1)  load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
  "$BIN" serve --model "kq=$MODEL" --port 18090 --max-num-seqs 8 >/tmp/kq-camelid.log 2>&1 & SERVER=$!
  up 18090; echo "round $r camelid  load $(cut -d' ' -f1 /proc/loadavg)"
  "$BIN" bench --endpoint http://127.0.0.1:18090 --model kq --name camelid --prompt-tokens "$P" \
    --output-tokens "$N" --concurrency 1,8 --json "$OUT/kq-camelid-$STAMP-r$r.json" >/dev/null
  down
  "$LLAMA_BIN/llama-server" -m "$MODEL" --port 18091 --parallel 8 -t "$(nproc)" -c 8192 \
    >/tmp/kq-llama.log 2>&1 & SERVER=$!
  up 18091; echo "round $r llama.cpp  load $(cut -d' ' -f1 /proc/loadavg)"
  "$BIN" bench --endpoint http://127.0.0.1:18091 --model kq --name llama.cpp --prompt-tokens "$P" \
    --output-tokens "$N" --concurrency 1,8 --json "$OUT/kq-llamacpp-$STAMP-r$r.json" >/dev/null
  down
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT" "$STAMP" "$ROUNDS" <<'PY'
import json, sys
out, stamp, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
for r in range(1, rounds + 1):
    for name in ["camelid", "llamacpp"]:
        for l in json.load(open(f"{out}/kq-{name}-{stamp}-r{r}.json"))["levels"]:
            print(f"round {r} {name:9} clients {l['clients']}: aggregate {l['aggregate_tok_s']:.1f} tok/s, "
                  f"decode/stream {l['decode_tok_s_per_stream']:.1f}, prefill p50 {l['prefill_tok_s_p50']:.0f} tok/s")
PY
