#!/usr/bin/env bash
# Embedding throughput, camelid vs llama.cpp (`--embeddings --pooling last`) on the same GGUF,
# each server alone, ROUNDS alternations; then the two servers' vectors for the same text
# compared (cosine). N texts of ~P tokens, B per request, at each concurrency in LEVELS.
#   [ROUNDS=2] [LEVELS=1,4] [N=256] [P=64] [B=16] [MODEL=F.gguf] bash benches/embeddings.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-2}"; LEVELS="${LEVELS:-1,4}"; N="${N:-256}"; P="${P:-64}"; B="${B:-16}"
MODEL="${MODEL:-$(bash models/fetch-default.sh)}"
LLAMA_BIN="$(bash benches/build-llama-cpp.sh)"
cargo build --release -p camelid >&2
source benches/servers.sh
lscpu | grep -E '^Model name|^L2|^L3' || true
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)  cores: $(nproc)  rounds: $ROUNDS"
for r in $(seq "$ROUNDS"); do
  ./target/release/camelid serve --model "default=$MODEL" --port 18090 >/tmp/camelid-emb.log 2>&1 &
  SERVER=$!; up 18090
  for c in ${LEVELS//,/ }; do
    python3 benches/embeddings.py http://127.0.0.1:18090 camelid "$N" "$P" "$B" "$c" \
      "$OUT/emb-camelid-$STAMP-r$r-c$c.json"
  done
  down
  "$LLAMA_BIN/llama-server" -m "$MODEL" --port 18091 --embeddings --pooling last --parallel 8 \
    -t "$(nproc)" -c 8192 -b 2048 -ub 2048 >/tmp/llama-emb.log 2>&1 &
  SERVER=$!; up 18091
  for c in ${LEVELS//,/ }; do
    python3 benches/embeddings.py http://127.0.0.1:18091 llama.cpp "$N" "$P" "$B" "$c" \
      "$OUT/emb-llamacpp-$STAMP-r$r-c$c.json"
  done
  down
done
python3 - "$OUT/emb-camelid-$STAMP-r1-c1.json" "$OUT/emb-llamacpp-$STAMP-r1-c1.json" <<'PY'
import json, math, sys
a, b = (json.load(open(f))["first"] for f in sys.argv[1:3])
dot = sum(x * y for x, y in zip(a, b))
print(f"cosine of the two servers' vectors for the same text: {dot / math.sqrt(sum(x*x for x in a) * sum(y*y for y in b)):.5f}")
PY
