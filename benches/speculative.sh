#!/usr/bin/env bash
# Speculative decoding by prompt lookup: single-client output tokens/s of camelid with and
# without `--speculative-config` and of llama.cpp with and without `--spec-type ngram-simple`,
# on the same GGUF, each server alone, ROUNDS rounds (the order reversed every other round),
# two workloads (benches/speculative.py: `edit` rewrites a given text, `fresh` answers
# MT-bench first turns); medians and ratios; camelid's greedy answers must be the same with
# and without speculation.
# CLIENTS=C runs C clients at once (aggregate tokens/s).
#   [ROUNDS=3] [MAX_TOKENS=256] [CLIENTS=1] [SPEC='{"method":"ngram",...}'] [MODEL=F.gguf] \
#     bash benches/speculative.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"; MAX_TOKENS="${MAX_TOKENS:-256}"; CLIENTS="${CLIENTS:-1}"
DEFAULT_SPEC='{"method":"ngram","num_speculative_tokens":4,"prompt_lookup_min":2,"prompt_lookup_max":4}'
SPEC="${SPEC:-$DEFAULT_SPEC}"
MODEL="${MODEL:-$(bash models/fetch-default.sh)}"
LLAMA_BIN="$(bash benches/build-llama-cpp.sh)"
cargo build --release -p camelid >&2
source benches/servers.sh
start() {
  if curl -sf http://127.0.0.1:18094/health >/dev/null; then
    echo "port 18094 is already served: stop that server first" >&2; exit 1
  fi
  # exec: the background job is the server itself, so that `down` stops it.
  case "$1" in
    camelid) exec ./target/release/camelid serve --model "default=$MODEL" --port 18094 ;;
    camelid-spec) exec ./target/release/camelid serve --model "default=$MODEL" --port 18094 \
                    --speculative-config "$SPEC" ;;
    llama.cpp) exec "$LLAMA_BIN/llama-server" -m "$MODEL" --port 18094 -t "$(nproc)" -np "$CLIENTS" -c $((4096 * CLIENTS)) ;;
    llama.cpp-spec) exec "$LLAMA_BIN/llama-server" -m "$MODEL" --port 18094 -t "$(nproc)" -np "$CLIENTS" -c $((4096 * CLIENTS)) \
                      --spec-type ngram-simple ;;
  esac >"/tmp/spec-bench-$1.log" 2>&1 &
  SERVER=$!; up 18094
}
lscpu | grep -E '^Model name|^L2|^L3' || true
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)  cores: $(nproc)  rounds: $ROUNDS  clients: $CLIENTS  spec: $SPEC"
read -r -a CONFIGS <<< "${CONFIGS:-camelid camelid-spec llama.cpp llama.cpp-spec}"
for r in $(seq "$ROUNDS"); do
  order=("${CONFIGS[@]}")
  if (( r % 2 == 0 )); then
    order=(); for (( k=${#CONFIGS[@]}-1; k>=0; k-- )); do order+=("${CONFIGS[k]}"); done
  fi
  for c in "${order[@]}"; do
    start "$c"
    python3 benches/speculative.py http://127.0.0.1:18094 "$c" "$MAX_TOKENS" \
      "$OUT/spec-$c-$STAMP-r$r.json" "$CLIENTS" | tee -a "$OUT/spec-$STAMP.jsonl"
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
        if v:
            med[s, w] = statistics.median(v)
            print(f"{w:5} {s:15} median {med[s, w]:7.1f} tok/s  rounds {v}")
    for a, b in (("camelid-spec", "camelid"), ("llama.cpp-spec", "llama.cpp"),
                 ("camelid-spec", "llama.cpp-spec")):
        if (a, w) in med and (b, w) in med:
            # Per round too: the machine's speed drifts more between rounds than within one.
            per = [x["tok_per_s"] / y["tok_per_s"] for x, y in zip(
                [r for r in rows if r["server"] == a and r["workload"] == w],
                [r for r in rows if r["server"] == b and r["workload"] == w])]
            print(f"{w:5} {a} / {b}: {med[a, w] / med[b, w]:.2f}x of the medians, "
                  f"per round {[round(x, 2) for x in per]}, median {statistics.median(per):.2f}x")
# The answers compare only where CONFIGS ran both camelid servers.
import os
answers = lambda s, r: f"{out}/spec-{s}-{stamp}-r{r}.json"
if not all(os.path.exists(answers(s, 1)) for s in ("camelid", "camelid-spec")):
    print("camelid's greedy answers with and without speculation: not compared (CONFIGS ran one)")
    sys.exit(0)
same = all(json.load(open(answers("camelid", r))) == json.load(open(answers("camelid-spec", r)))
           for r in range(1, rounds + 1))
print("camelid's greedy answers with and without speculation:", "the same" if same else "DIFFER")
sys.exit(0 if same else 1)
PY
