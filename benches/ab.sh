#!/usr/bin/env bash
# Two camelid builds against each other on this machine (a refactor must not change speed):
# each served alone, alternating A, B, A, B … over ROUNDS, driven by `camelid bench` on the
# default model (MODEL: another file, e.g. a 1B GGUF of make-1b-model.sh); prints each run's
# numbers and the median B/A ratios. One 8-client run moves ±10 % on its own (which requests
# reach the first step), so give such comparisons five rounds or more.
#   [ROUNDS=3] [LEVELS=1,8] [MODEL=…] bash benches/ab.sh BIN_A BIN_B [PROMPT_TOKENS] [OUTPUT_TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
A="$1"; B="$2"; P="${3:-128}"; N="${4:-64}"
ROUNDS="${ROUNDS:-3}"; LEVELS="${LEVELS:-1,8}"
SERVE=(); NAME=()
if [ -n "${MODEL:-}" ]; then SERVE=(--model "ab=$MODEL"); NAME=(--model ab); else bash models/fetch-default.sh >/dev/null; fi
OUT=benches/results; mkdir -p "$OUT"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
SERVER=""
trap '[ -n "$SERVER" ] && kill $SERVER 2>/dev/null || true' EXIT
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)  cores: $(nproc)  rounds: $ROUNDS"
for r in $(seq "$ROUNDS"); do
  for side in A B; do
    bin=$A; [ "$side" = B ] && bin=$B
    "$bin" serve "${SERVE[@]}" --port 18090 --max-num-seqs 16 >/tmp/camelid-ab.log 2>&1 & SERVER=$!
    for _ in $(seq 600); do curl -sf http://127.0.0.1:18090/health >/dev/null && break; sleep 1; done
    echo "round $r $side  load $(cut -d' ' -f1 /proc/loadavg)"
    "$B" bench --endpoint http://127.0.0.1:18090 "${NAME[@]}" --name "$side" --prompt-tokens "$P" \
      --output-tokens "$N" --concurrency "$LEVELS" --json "$OUT/ab-$side-$STAMP-r$r.json"
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
  done
done
python3 - "$OUT" "$STAMP" "$ROUNDS" <<'PY'
import json, statistics, sys
out, stamp, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
def load(side, r):
    return {x["clients"]: x for x in json.load(open(f"{out}/ab-{side}-{stamp}-r{r}.json"))["levels"]}
keys = ["decode_tok_s_per_stream", "prefill_tok_s_p50", "aggregate_tok_s", "itl_p50_ms", "itl_p99_ms", "ttft_p50_ms"]
a0 = load("A", 1)
for c in sorted(a0):
    for k in keys:
        if k not in a0[c]:
            continue
        ratios = [load("B", r)[c][k] / load("A", r)[c][k] for r in range(1, rounds + 1)]
        print(f"clients {c:>2} {k:<24} B/A median {statistics.median(ratios):.3f}  rounds {', '.join(f'{x:.3f}' for x in ratios)}")
PY
