#!/usr/bin/env bash
# camelid vs llama.cpp b11434 on 1B-class GGUFs (default: the random Llama-3.2-1B-shaped
# Q4_K_M that make-1b-model.sh writes; give several files to measure them in one run). Per
# file both servers are started and stay up (each idle while the other is measured), and
# every measurement alternates between them in ROUNDS rounds, the first server switching
# from round to round: decode at 1 client, decode at 8 (P prompt tokens, N outputs), then
# prefill of a 512-token prompt (one client). Each camelid number thus has its llama.cpp
# pair taken within the same minute: this VM's speed moves up to 2x over minutes, and a
# whole server's measurements in a row (the previous layout) fell in different phases.
# Per round a two-thread memory-bandwidth probe (benches/bandwidth.c), the single-stream
# roofline being bandwidth / model bytes. Prints per-round numbers, then medians of the
# per-round ratios.
# BIN: the camelid binary to measure (default target/release/camelid); CAMELID_ARGS: more
# `camelid serve` flags (e.g. `--max-step-stretch 0`, llama.cpp's unbounded prefill steps).
#   [ROUNDS=2] [P=64] [N=32] [BIN=...] [CAMELID_ARGS=...] bash benches/kquant-1b.sh [MODEL.gguf ...]
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=("$@"); [ ${#MODELS[@]} -gt 0 ] || MODELS=("$(bash benches/make-1b-model.sh Q4_K_M)")
P="${P:-64}"; N="${N:-32}"; ROUNDS="${ROUNDS:-2}"; BIN="${BIN:-./target/release/camelid}"
LLAMA_BIN="$(bash benches/build-llama-cpp.sh)"
BW="$(mktemp -d)/bandwidth"; gcc -O3 -march=native -fopenmp benches/bandwidth.c -o "$BW"
# The compute probe: `vpdpbusd` zmm (the VNNI kernels) and `tdpbusd` (the AMX ones), one
# thread and two. On this VM the two vCPUs sometimes run as one core's two hyperthreads: two
# threads then issue no more vector work than one (session 47), and every compute-bound
# number (prompts, batched decode) halves while a bandwidth-bound single stream barely moves.
PEAK="$(dirname "$BW")/peak"; gcc -O2 -march=native -fopenmp benches/compute-peak.c -o "$PEAK"
compute() { "$PEAK" 2 | awk '/^vpdpbusd z|^tdpbusd/ {printf "%s %s/%s GMAC/s  ", $1, $(NF-7), $(NF-3)}'; }
source benches/servers.sh
# Both servers of a file: camelid on 18090, llama.cpp on 18091 (stopped when the script exits).
SERVERS=()
trap '[ ${#SERVERS[@]} -gt 0 ] && kill "${SERVERS[@]}" 2>/dev/null || true' EXIT
declare -A PORT=([camelid]=18090 [llama.cpp]=18091) TAG=([camelid]=camelid [llama.cpp]=llamacpp)
# measure server kind tag: decode1 / decode8 (P prompt tokens, N outputs) or prefill (512 tokens).
measure() {
  local args
  case "$2" in
    decode1) args=(--prompt-tokens "$P" --output-tokens "$N" --concurrency 1) ;;
    decode8) args=(--prompt-tokens "$P" --output-tokens "$N" --concurrency 8) ;;
    prefill) args=(--prompt-tokens 512 --output-tokens 4 --concurrency 1 --requests-per-client 3) ;;
  esac
  "$BIN" bench --endpoint "http://127.0.0.1:${PORT[$1]}" --model kq --name "$1" "${args[@]}" \
    --json "$OUT/kq-$3-$2.json" >/dev/null
}
lscpu | grep -E "Model name|L2 cache|L3 cache|^CPU\(s\)"
echo "vector extensions: $(grep -o -w -E 'avx2|avx512f|avx512bw|avx512_vnni|avx_vnni|f16c|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "P=$P N=$N rounds=$ROUNDS camelid flags: ${CAMELID_ARGS:-none}  llama.cpp AMX kernels: ${LLAMA_AMX:-0}  load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for m in "${MODELS[@]}"; do
  f="$(basename "$m" .gguf)"
  "$BIN" serve --model "kq=$m" --port 18090 --max-num-seqs 8 ${CAMELID_ARGS:-} >/tmp/kq-camelid.log 2>&1 &
  SERVERS+=($!)
  up 18090 600
  "$LLAMA_BIN/llama-server" -m "$m" --port 18091 --parallel 8 -t "$(nproc)" -c 8192 \
    >/tmp/kq-llama.log 2>&1 &
  SERVERS+=($!)
  up 18091 600
  for r in $(seq "$ROUNDS"); do
    order=(camelid llama.cpp); [ $((r % 2)) -eq 0 ] && order=(llama.cpp camelid)
    echo "round $r $f: $("$BW" 2 | tee "$OUT/kq-$STAMP-$f-r$r-bw.txt")  load $(cut -d' ' -f1 /proc/loadavg)  first: ${order[0]}"
    echo "  compute (1/2 threads): $(compute)"
    for kind in decode1 decode8 prefill; do
      for s in "${order[@]}"; do measure "$s" "$kind" "$STAMP-$f-r$r-${TAG[$s]}"; done
    done
  done
  kill "${SERVERS[@]}"; wait "${SERVERS[@]}" 2>/dev/null || true; SERVERS=()
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT" "$STAMP" "$ROUNDS" "${MODELS[@]}" <<'PY'
import json, os, statistics, sys
out, stamp, rounds, models = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
def level(tag, kind, clients):
    for l in json.load(open(f"{out}/kq-{tag}-{kind}.json"))["levels"]:
        if l["clients"] == clients:
            return l
med = lambda xs: statistics.median(xs)
print("| file | MiB | camelid 1 client | llama.cpp 1 | ratio | roofline % | camelid 8 clients | "
      "llama.cpp 8 | ratio | prefill 512 camelid | llama.cpp | ratio |")
print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for m in models:
    f = os.path.basename(m)[:-5]
    size = os.path.getsize(m)
    rows = {k: [] for k in "d1c d1l a8c a8l pc pl roof".split()}
    for r in range(1, rounds + 1):
        c, l = f"{stamp}-{f}-r{r}-camelid", f"{stamp}-{f}-r{r}-llamacpp"
        bw = float(open(f"{out}/kq-{stamp}-{f}-r{r}-bw.txt").read().split()[0])
        rows["d1c"].append(level(c, "decode1", 1)["decode_tok_s_per_stream"])
        rows["d1l"].append(level(l, "decode1", 1)["decode_tok_s_per_stream"])
        rows["a8c"].append(level(c, "decode8", 8)["aggregate_tok_s"])
        rows["a8l"].append(level(l, "decode8", 8)["aggregate_tok_s"])
        rows["pc"].append(level(c, "prefill", 1)["prefill_tok_s_p50"])
        rows["pl"].append(level(l, "prefill", 1)["prefill_tok_s_p50"])
        rows["roof"].append(100 * rows["d1c"][-1] * size / (bw * 1e9))
        print(f"round {r} {f}: bandwidth {bw} GB/s; camelid {rows['d1c'][-1]:.1f} / {rows['a8c'][-1]:.1f} / "
              f"{rows['pc'][-1]:.0f}; llama.cpp {rows['d1l'][-1]:.1f} / {rows['a8l'][-1]:.1f} / {rows['pl'][-1]:.0f}",
              file=sys.stderr)
    ratio = lambda a, b: med([x / y for x, y in zip(rows[a], rows[b])])
    print(f"| {f} | {size / 2**20:.0f} | {med(rows['d1c']):.1f} | {med(rows['d1l']):.1f} | {ratio('d1c', 'd1l'):.2f}× "
          f"| {med(rows['roof']):.0f} % | {med(rows['a8c']):.1f} | {med(rows['a8l']):.1f} | {ratio('a8c', 'a8l'):.2f}× "
          f"| {med(rows['pc']):.0f} | {med(rows['pl']):.0f} | {ratio('pc', 'pl'):.2f}× |")
PY
