#!/usr/bin/env bash
# camelid on the lent GPU machine; prints a table last and writes JSON lines under $OUT.
#   bash benches/gpu/run.sh        steps 1-4 and step 5 on the 1B shape (~5 min)
#   bash benches/gpu/run.sh 7b     step 5 on the 7B shape (making it writes 13.5 GB): a second
#                                  call on the still-warm machine, so a cut-off first call
#                                  cannot lose it and neither call nears the 10-minute limit
#   bash benches/gpu/run.sh quick  steps 1 and 5 on the 1B shape only (no peer): a re-run after
#                                  a kernel change
#   bash benches/gpu/run.sh gguf   step 6: a random 1B GGUF made and quantized to Q4_K_M there
#                                  (needs benches/gpu/stage-gguf.sh run here), CPU vs CUDA
#                                  logits on it, and step 5 on it
# At most 8 files come back from $OUT: results.jsonl (every mode run into this $OUT appends to
# it, after a line naming the mode), log.txt (the GPU, each stage's tail, every JSON line, the
# servers' last lines), the two test outputs, one bench JSON per shape served as built: run.sh +
# 7b + gguf (or quick + 7b + gguf) write 7.
# Prepare here first:  bash kernels/build-cuda.sh stage
# (fills .gpu/ with the stripped CUDA binary, the kernel-test and runtime-test binaries and the
# default model's tokenizer.json, xz-compressed: ~31 MB) and carry `.gpu`. If /tmp/camelid-default.gguf exists on the machine (the
# 98 MB default model does not fit one call's 64 MiB: send it in two halves over warm calls,
# see benches/gpu/README.md), correctness also runs on the real weights.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/camelid-gpu}"; mkdir -p "$OUT"
RES="$OUT/results.jsonl"; LOG="$OUT/log.txt"
# Appended to, never emptied: `run.sh quick; run.sh gguf` in one call keeps both. This run's
# lines (after START) are printed last.
START=$(cat "$RES" 2>/dev/null | wc -l)
PY=/opt/torch/.venv/bin/python3
CU13=$($PY -c 'import nvidia, os; print(os.path.join(os.path.dirname(nvidia.__path__[0]), "nvidia/cu13/lib"))' 2>/dev/null)
export LD_LIBRARY_PATH="$CU13${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
BIN=.gpu/camelid-cuda
# build-cuda.sh stage carries the binaries xz-compressed (64 MiB a call); unpack them with
# Python's lzma (xz itself may be missing there).
for z in .gpu/*.xz; do
  [ -e "$z" ] || continue
  "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$z" "${z%.xz}" \
    && rm -f "$z"
done
chmod +x .gpu/camelid-cuda .gpu/cuda-kernel-tests .gpu/cuda-runtime-tests .gpu/llama-quantize 2>/dev/null
M=/tmp/camelid-models
log() { echo "== $*" | tee -a "$LOG"; }
# JSON lines: into results.jsonl and the log (and on the screen).
rec() { tee -a "$RES" "$LOG"; }
finish() { log "$1"; tail -n +$((START + 1)) "$RES"; exit 0; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
echo "{\"mode\":\"${1:-full}\",\"started\":\"$(date -u +%FT%TZ)\"}" | rec
# score OUT SECONDS ARGS..: `camelid score ARGS --out OUT`, OUT removed first: a score that fails
# leaves no file, so the comparison cannot read an earlier run's on a warm machine.
score() { local out=$1 t=$2; shift 2; rm -f "$out"; timeout "$t" $BIN score "$@" --out "$out"; }
# stop PID: the server asked to end, up to 30 s for it, then killed.
stop() {
  kill "$1" 2>/dev/null
  for _ in $(seq 60); do kill -0 "$1" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$1" 2>/dev/null; wait "$1" 2>/dev/null
}

# Step 5 on one shape: camelid serve + camelid bench, then transformers eager as the peer
# (on a folder of safetensors; a GGUF file has no peer here).
# PEER=0 skips transformers eager, AB=0 the graphs-off run, AB_VARIANTS="N=V ..." (7b) serves
# once more under each, JSON=0 the bench JSON (the table is in log.txt either way).
# GRAPHS=0 serves without CUDA graphs (the name gets "-eager"; its table is in log.txt, not a
# JSON of its own: at most 8 files come back), for the A/B in the same call. Either way the
# graphs' captured / launches_est / failed counts go to results.jsonl, and every step line says
# graphs_valid: false where graphs on captured nothing (or failed), or graphs off captured any.
# VARIANT="NAME=VALUE" serves with that in the environment (the name gets "-NAME=VALUE"),
# likewise without a JSON or a peer.
speed() {
  local name=$1 model=${2:-$M/$1} json=
  [ "${GRAPHS:-1}" = 0 ] && name="$name-eager"
  [ -n "${VARIANT:-}" ] && name="$name-$VARIANT"
  [ "${GRAPHS:-1}" = 0 ] || [ "${JSON:-1}" = 0 ] || [ -n "${VARIANT:-}" ] || json="$OUT/bench-$name.json"
  [ -z "$json" ] || rm -f "$json"
  # Every step traced (decodes, prefill tokens, step and forward ms): summarised after the bench.
  env ${VARIANT:-} CAMELID_CUDA_GRAPHS=${GRAPHS:-1} RUST_LOG=info,camelid_engine::step=debug,camelid_model::runtime::cuda_graph=debug $BIN serve --model "$model" --device cuda --port 18100 --max-num-seqs 64 --kv-cache-mb 16384 >"/tmp/serve-$name.log" 2>&1 &
  local srv=$!
  if $PY benches/gpu/models.py health http://127.0.0.1:18100/health $srv; then
    timeout 150 $BIN bench --endpoint http://127.0.0.1:18100 --name "camelid-$name" --prompt-tokens 128 \
      --output-tokens 256 --concurrency 1,16,32,64 --requests-per-client 1 \
      ${json:+--json "$json"} | tee -a "$LOG"
  else
    log "serve $name never became healthy"
  fi
  stop $srv
  { echo "-- serve-$name.log (last 30 lines)"; grep -v -e camelid_engine::step -e "captured a decode graph" "/tmp/serve-$name.log" | tail -30; } >> "$LOG"
  $PY benches/gpu/models.py steps "/tmp/serve-$name.log" "$name" "${GRAPHS:-1}" | rec
  [ -d "$model" ] && [ "${GRAPHS:-1}" != 0 ] && [ "${PEER:-1}" != 0 ] && [ -z "${VARIANT:-}" ] || return 0
  log "5b. peer: transformers eager on $name"
  timeout 120 $PY benches/gpu/models.py eager "$model" | rec
}

if [ "${1:-}" = gguf ]; then
  log "6. GGUF Q4_K_M on the GPU: a random 1B (Llama-3.2-1B shape, SmolLM2's tokenizer)"
  [ -f .gpu/llama-quantize ] || { log "no .gpu/llama-quantize: run benches/gpu/stage-gguf.sh here first"; exit 1; }
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/gguf-*.whl
  mkdir -p "$M"; rm -f "$M/r1b.F16.gguf" "$M/r1b.Q4_K_M.gguf"
  PYTHONPATH=/tmp/site timeout 180 $PY benches/random_gguf.py .gpu/gguf-tokenizer.json "$M/r1b.F16.gguf" llama random-llama-1b
  timeout 240 .gpu/llama-quantize "$M/r1b.F16.gguf" "$M/r1b.Q4_K_M.gguf" Q4_K_M "$(nproc)" 2>&1 | tail -3 | tee -a "$LOG"
  export VOCAB=49152
  T="$(cat benches/gpu/prompt.txt)"
  G="$M/r1b.Q4_K_M.gguf"
  score /tmp/q4k-cpu.f32 120 --model "$G" --device cpu --text "$T"
  score /tmp/q4k-cuda.f32 60 --model "$G" --device cuda --text "$T"
  score /tmp/q4k-cuda-kernels.f32 60 --model "$G" --device cuda --text "$T" --paged
  # f32 activations on the GPU too: how much of the distance to the CPU is bf16's.
  score /tmp/q4k-cuda-f32.f32 60 --model "$G" --device cuda --dtype f32 --text "$T"
  score /tmp/q4k-cuda-kernels-f32.f32 60 --model "$G" --device cuda --dtype f32 --text "$T" --paged
  # The CPU is no truth here (it quantizes activations to 8 bits): the loose gate.
  $PY benches/gpu/models.py compare /tmp/q4k-cpu.f32 --gate loose /tmp/q4k-cuda.f32 /tmp/q4k-cuda-kernels.f32 \
    /tmp/q4k-cuda-f32.f32 /tmp/q4k-cuda-kernels-f32.f32 | rec
  # SPEED=0: the correctness part alone.
  [ "${SPEED:-1}" = 0 ] || speed r1b-q4_k_m "$G"
  finish "done (gguf)"
fi

if [ "${1:-}" = 7b ]; then
  log "5. speed on the 7B shape"
  timeout 300 $PY benches/gpu/models.py make "$M" llama-7b 2>&1 | tail -3 | tee -a "$LOG"
  cp .gpu/tokenizer.json "$M/llama-7b/" 2>/dev/null
  # Its roofline: the bytes a step reads (not the 262 MB input embedding: only its looked-up rows).
  timeout 60 $PY benches/gpu/models.py bandwidth "$M/llama-7b" | rec
  speed llama-7b
  [ "${AB:-1}" = 0 ] || GRAPHS=0 speed llama-7b
  for v in ${AB_VARIANTS:-}; do VARIANT=$v speed llama-7b; done
  finish "done (7b)"
fi

log "1. kernels against CPU references"
QUICK=$([ "${1:-}" = quick ] && echo 1)
CAMELID_REQUIRE_GPU=1 timeout 180 .gpu/cuda-kernel-tests --test-threads 1 2>&1 | tee "$OUT/kernel-tests.txt" | tail -15
grep -q "test result: ok" "$OUT/kernel-tests.txt" && ! grep -q SKIPPED "$OUT/kernel-tests.txt" \
  && echo '{"check":"kernels","pass":true}' | rec || echo '{"check":"kernels","pass":false}' | rec

log "1b. every architecture: the CUDA kernel runtime against the tensor runtime"
# Run from the repository's root: the tests read the tokenizer fixture under tests/fixtures.
CAMELID_REQUIRE_GPU=1 timeout 240 .gpu/cuda-runtime-tests --test-threads 1 2>&1 | tee "$OUT/runtime-tests.txt" | tail -25
grep -q "test result: ok" "$OUT/runtime-tests.txt" && ! grep -q SKIPPED "$OUT/runtime-tests.txt" \
  && echo '{"check":"cuda-runtime","pass":true}' | rec || echo '{"check":"cuda-runtime","pass":false}' | rec

if [ -n "$QUICK" ]; then
  log "2-5 (quick): the 1B shape's speed, graphs on, no peer"
  timeout 240 $PY benches/gpu/models.py make "$M" llama-1b 2>&1 | tail -2 | tee -a "$LOG"
  # SmolLM2's tokenizer, widened to the shape's 128 256 ids (each decodes to text).
  $PY benches/gpu/widen_tokenizer.py .gpu/tokenizer.json "$M/llama-1b"
  PEER=0 speed llama-1b
  finish "done (quick)"
fi

log "2. random-weight models (transformers, on the GPU)"
timeout 240 $PY benches/gpu/models.py make "$M" smol llama-1b 2>&1 | tail -5 | tee -a "$LOG"
# SmolLM2's tokenizer for every shape, widened to its vocabulary where that is larger (the 1B
# shape's 128 256 ids: past 49 152 they streamed no text, and bench timed only text).
for d in "$M"/*/; do [ -f "$d/tokenizer.json" ] || $PY benches/gpu/widen_tokenizer.py .gpu/tokenizer.json "$d"; done

log "3. correctness: camelid CUDA f32 / bf16, CPU f32 vs transformers f32, same weights"
IDS=$(seq -s, 1 97 9000 | cut -d, -f1-90)
export VOCAB=49152
S=(--model "$M/smol" --ids "$IDS")
rm -f /tmp/ref.f32 /tmp/hf-bf16.f32
timeout 120 $PY benches/gpu/models.py logits "$M/smol" "$IDS" /tmp/ref.f32
# transformers itself in bf16: how far bf16 alone moves the logits (the bf16 gate's KL scale).
timeout 120 $PY benches/gpu/models.py logits "$M/smol" "$IDS" /tmp/hf-bf16.f32 bfloat16
score /tmp/cuda-bf16.f32 60 "${S[@]}" --device cuda --dtype bf16
# --paged: the serving path (engine's paged cache, prompt in two chunks) = camelid's CUDA kernels;
# CAMELID_CUDA_KERNELS=0 gives candle's ops over the same paged cache.
score /tmp/cuda-bf16-kernels.f32 60 "${S[@]}" --device cuda --dtype bf16 --paged
CAMELID_CUDA_KERNELS=0 score /tmp/cuda-bf16-candle-paged.f32 60 "${S[@]}" --device cuda --dtype bf16 --paged
# f32 on CUDA: only summation order differs from the reference, so a kernel bug cannot hide in
# bf16's rounding or the random weights' near-ties (gate: top-1 >= 0.99, KL < 1e-6).
score /tmp/cuda-f32.f32 60 "${S[@]}" --device cuda --dtype f32
score /tmp/cuda-f32-kernels.f32 60 "${S[@]}" --device cuda --dtype f32 --paged
score /tmp/cpu-f32.f32 120 "${S[@]}" --device cpu --dtype f32
$PY benches/gpu/models.py compare /tmp/ref.f32 \
  --gate bf16 --base /tmp/hf-bf16.f32 /tmp/hf-bf16.f32 /tmp/cuda-bf16.f32 /tmp/cuda-bf16-kernels.f32 /tmp/cuda-bf16-candle-paged.f32 \
  --gate f32 /tmp/cuda-f32.f32 /tmp/cuda-f32-kernels.f32 /tmp/cpu-f32.f32 | rec
if [ -f /tmp/camelid-default.gguf ]; then
  P="$(cat benches/gpu/prompt.txt)"
  score /tmp/gguf-cpu.f32 60 --model /tmp/camelid-default.gguf --device cpu --text "$P"
  score /tmp/gguf-cuda.f32 60 --model /tmp/camelid-default.gguf --device cuda --text "$P"
  score /tmp/gguf-cuda-kernels.f32 60 --model /tmp/camelid-default.gguf --device cuda --text "$P" --paged
  $PY benches/gpu/models.py compare /tmp/gguf-cpu.f32 --gate loose /tmp/gguf-cuda.f32 /tmp/gguf-cuda-kernels.f32 | rec
fi

log "4. roofline: device-to-device bandwidth, the 1B shape's bytes a step"
timeout 60 $PY benches/gpu/models.py bandwidth "$M/llama-1b" | rec

log "5. speed: camelid serve + camelid bench (128 prompt + 256 output tokens)"
speed llama-1b
[ "${AB:-1}" = 0 ] || GRAPHS=0 speed llama-1b
finish "done (the 7B shape: bash benches/gpu/run.sh 7b)"
