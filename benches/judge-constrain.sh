#!/usr/bin/env bash
# Issue 20's judge measurement: the share of unparsable verdicts with and without
# `mtbench judge --constrain`, the default model as its own judge, on the first Q MT-bench
# questions (default 8, both turns). Two answer sets from the same model (FastChat's
# per-category temperatures, and greedy) give the pairwise games; single grading (with the
# reference answers for math, reasoning and coding) and pairwise-all with position swap.
# Needs ../shared/data/mt_bench. Writes under benches/results/judge-constrain-STAMP/.
#   [Q=8] [PARALLEL=4] [MODES="single pairwise-all"] bash benches/judge-constrain.sh
# PARALLEL above 4 fills the default KV pool with the long judge prompts.
set -euo pipefail
cd "$(dirname "$0")/.."
Q="${Q:-8}"; PAR="${PARALLEL:-4}"; MODES="${MODES:-single pairwise-all}"
DATA="$(cd .. && pwd)/shared/data/mt_bench"
OUT="benches/results/judge-constrain-$(date -u +%Y%m%dT%H%M%SZ)"; mkdir -p "$OUT/answers"
cargo build --release -p camelid >&2
BIN=./target/release/camelid
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" serve --port "$PORT" >"$OUT/server.log" 2>&1 & PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
E="http://127.0.0.1:$PORT"
lscpu | grep -E '^Model name' || true
echo "questions: first $Q; load $(cut -d' ' -f1-3 /proc/loadavg)"
"$BIN" mtbench answer --endpoint "$E" --model default --model-id smol --questions "$DATA/question.jsonl" \
  --out "$OUT/answers/smol.jsonl" --first-n "$Q" --parallel "$PAR" >&2
"$BIN" mtbench answer --endpoint "$E" --model default --model-id smol-greedy --force-temperature 0 \
  --questions "$DATA/question.jsonl" --out "$OUT/answers/smol-greedy.jsonl" --first-n "$Q" \
  --parallel "$PAR" >&2
for c in free constrained; do
  flag=(); [ "$c" = constrained ] && flag=(--constrain)
  for mode in $MODES; do
    "$BIN" mtbench judge --judge-endpoint "$E" --judge-model default --answers "$OUT/answers" \
      --mode "$mode" --questions "$DATA/question.jsonl" --judge-prompts "$DATA/judge_prompts.jsonl" \
      --references "$DATA/reference_answer/gpt-4.jsonl" --first-n "$Q" --parallel "$PAR" \
      --out "$OUT/$mode-$c.jsonl" "${flag[@]}" >&2
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print("| judge output | single: unparsable / judgments | pairwise: unparsable games / games |")
print("|---|--:|--:|")
import os
def lines(path):
    return [json.loads(l) for l in open(path)] if os.path.exists(path) else []
def share(bad, n):
    return f"{bad} / {n} ({100 * bad / n:.0f} %)" if n else "not run"
for c in ["free", "constrained"]:
    single = lines(f"{out}/single-{c}.jsonl")
    pair = lines(f"{out}/pairwise-all-{c}.jsonl")
    s_bad = sum(1 for j in single if j["score"] == -1)
    games = [w for j in pair for w in (j["g1_winner"], j["g2_winner"])]
    p_bad = sum(1 for w in games if w == "error")
    print(f"| {c} | {share(s_bad, len(single))} | {share(p_bad, len(games))} |")
PY
