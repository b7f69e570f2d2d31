#!/usr/bin/env bash
# Issue 19's quantize-at-load targets on the 1B-class random model: an HF safetensors folder
# (f16, written by `camelid convert` from make-1b-model.sh's F16 GGUF) loaded with
# `--quantize FMT` against llama-quantize's GGUF of the same format.
# 1. Peak memory while loading: `camelid serve` with a 16 MiB KV pool, read from /proc once it
#    answers /health: VmHWM (the peak) against VmRSS (what the loaded model keeps). The target:
#    the peak below the final size plus one tensor's f32 copy (the embeddings, the largest).
# 2. Speed: `camelid serve` on the folder with --quantize vs on the GGUF, each alone, ROUNDS
#    alternations, 1 and 8 clients (P prompt / N output tokens).
#   [ROUNDS=2] [FMT=q4_0] [P=64] [N=32] bash benches/quantize-at-load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FMT="${FMT:-q4_0}"; ROUNDS="${ROUNDS:-2}"; P="${P:-64}"; N="${N:-32}"
BIN="${BIN:-./target/release/camelid}"
GGUF_TYPE="$(echo "$FMT" | tr a-z A-Z)"; [ "$FMT" = q4_k ] && GGUF_TYPE=Q4_K_S
GGUF="$(bash benches/make-1b-model.sh "$GGUF_TYPE")"
F16="${GGUF%.*.gguf}.F16.gguf"
HF="${F16%.F16.gguf}-hf-f16"
[ -f "$HF/config.json" ] || "$BIN" convert --gguf "$F16" --out "$HF" --dtype f16 >&2
source benches/servers.sh
lscpu | grep -E "Model name|L3 cache"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
mem() { "$BIN" serve "$@" --port 18094 --kv-cache-mb 16 >/tmp/qal-mem.log 2>&1 & local pid=$!
  for _ in $(seq 600); do curl -sf http://127.0.0.1:18094/health >/dev/null && break; sleep 1; done
  awk '/VmHWM|VmRSS|RssAnon|RssFile/ {printf "%s %.0f  ", $1, $2 / 1024}' /proc/$pid/status
  kill $pid; wait $pid 2>/dev/null || true; }
python3 - "$HF" <<'PY' >"$OUT/qal-$STAMP-sizes.txt"
import json, sys
c = json.load(open(sys.argv[1] + "/config.json"))
print(c["vocab_size"] * c["hidden_size"] * 4 / 2**20)
PY
EMB=$(cat "$OUT/qal-$STAMP-sizes.txt")
echo "MiB, --quantize $FMT: $(mem --model "kq=$HF" --quantize "$FMT")"
echo "MiB, the $GGUF_TYPE GGUF:  $(mem --model "kq=$GGUF")"
echo "MiB, the f16 folder kept 16-bit: $(mem --model "kq=$HF")"
echo "target: VmHWM below VmRSS + ${EMB%.*} MiB (the embeddings as f32)"
for r in $(seq "$ROUNDS"); do
  for v in gguf at-load; do
    if [ $v = gguf ]; then args=(--model "kq=$GGUF"); else args=(--model "kq=$HF" --quantize "$FMT"); fi
    "$BIN" serve "${args[@]}" --port 18092 --max-num-seqs 8 >/tmp/qal-$v.log 2>&1 & SERVER=$!
    up 18092 600
    "$BIN" bench --endpoint http://127.0.0.1:18092 --model kq --name "$v" --prompt-tokens "$P" \
      --output-tokens "$N" --concurrency 1,8 --json "$OUT/qal-$STAMP-$v-r$r.json" >/dev/null
    down
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT" "$STAMP" "$ROUNDS" <<'PY'
import json, sys
out, stamp, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
for r in range(1, rounds + 1):
    for v in ["gguf", "at-load"]:
        ls = json.load(open(f"{out}/qal-{stamp}-{v}-r{r}.json"))["levels"]
        print(f"round {r} {v:8} " + "; ".join(
            f"{l['clients']} client(s): decode {l['decode_tok_s_per_stream']:.1f}/stream, aggregate {l['aggregate_tok_s']:.1f} tok/s"
            for l in ls))
PY
