#!/usr/bin/env bash
# Speculative decoding by prompt lookup: single-client output tokens/s of camelid with and
# without `--speculative-config` and of llama.cpp with and without `--spec-type ngram-simple`,
# on the same GGUF, each server alone, ROUNDS rounds (the order reversed every other round),
# two workloads (benches/speculative.py: `edit` rewrites a given text, `fresh` answers
# MT-bench first turns); medians and ratios; camelid's greedy answers must be the same with
# and without speculation.
#   [ROUNDS=3] [MAX_TOKENS=256] [SPEC='{"method":"ngram",...}'] [MODEL=F.gguf] \
#     bash benches/speculative.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"; MAX_TOKENS="${MAX_TOKENS:-256}"
DEFAULT_SPEC='{"method":"ngram","num_speculative_tokens":4,"prompt_lookup_min":2,"prompt_lookup_max":4}'
SPEC="${SPEC:-$DEFAULT_SPEC}"
MODEL="${MODEL:-$(bash models/fetch-default.sh)}"
LLAMA_BIN="$(bash benches/build-llama-cpp.sh)"
cargo build --release -p camelid >&2
OUT=benches/results; mkdir -p "$OUT"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
SERVER=""
trap '[ -n "$SERVER" ] && kill $SERVER 2>/dev/null || true' EXIT
up() {
  for _ in $(seq 120); do curl -sf "http://127.0.0.1:$1/health" >/dev/null && return; sleep 1; done
  echo "server on port $1 did not come up" >&2; exit 1
}
down() { kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""; }
start() {
  case "$1" in
    camelid) ./target/release/camelid serve --model "default=$MODEL" --port 18094 ;;
    camelid-spec) ./target/release/camelid serve --model "default=$MODEL" --port 18094 \
                    --speculative-config "$SPEC" ;;
    llama.cpp) "$LLAMA_BIN/llama-server" -m "$MODEL" --port 18094 -t "$(nproc)" -c 4096 ;;
    llama.cpp-spec) "$LLAMA_BIN/llama-server" -m "$MODEL" --port 18094 -t "$(nproc)" -c 4096 \
                      --spec-type ngram-simple ;;
  esac >"/tmp/spec-bench-$1.log" 2>&1 &
  SERVER=$!; up 18094
}
lscpu | grep -E '^Model name|^L2|^L3' || true
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)  cores: $(nproc)  rounds: $ROUNDS  spec: $SPEC"
CONFIGS=(camelid camelid-spec llama.cpp llama.cpp-spec)
for r in $(seq "$ROUNDS"); do
  order=("${CONFIGS[@]}")
  if (( r % 2 == 0 )); then order=(llama.cpp-spec llama.cpp camelid-spec camelid); fi
  for c in "${order[@]}"; do
    start "$c"
    python3 benches/speculative.py http://127.0.0.1:18094 "$c" "$MAX_TOKENS" \
      "$OUT/spec-$c-$STAMP-r$r.json" | tee -a "$OUT/spec-$STAMP.jsonl"
    if [ "$c" = camelid-spec ]; then
      curl -s http://127.0.0.1:18094/metrics | grep -E '^camelid_spec_decode' || true
    fi
    down
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT/spec-$STAMP.jsonl" "$OUT" "$STAMP" "$ROUNDS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
out, stamp, rounds = sys.argv[2], sys.argv[3], int(sys.argv[4])
med = {}
for w in ("edit", "fresh"):
    for s in ("camelid", "camelid-spec", "llama.cpp", "llama.cpp-spec"):
        v = [r["tok_per_s"] for r in rows if r["server"] == s and r["workload"] == w]
        med[s, w] = statistics.median(v)
        print(f"{w:5} {s:15} median {med[s, w]:7.1f} tok/s  rounds {v}")
    print(f"{w:5} camelid spec/off {med['camelid-spec', w] / med['camelid', w]:.2f}x  "
          f"llama.cpp spec/off {med['llama.cpp-spec', w] / med['llama.cpp', w]:.2f}x  "
          f"camelid-spec/llama.cpp-spec {med['camelid-spec', w] / med['llama.cpp-spec', w]:.2f}x")
same = all(json.load(open(f"{out}/spec-camelid-{stamp}-r{r}.json"))
           == json.load(open(f"{out}/spec-camelid-spec-{stamp}-r{r}.json"))
           for r in range(1, rounds + 1))
print("camelid's greedy answers with and without speculation:", "the same" if same else "DIFFER")
sys.exit(0 if same else 1)
PY
