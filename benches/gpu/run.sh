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
# At most 8 files come back from $OUT: results.jsonl, log.txt (the GPU, each stage's tail and
# the servers' last lines), the two test outputs, one bench JSON per shape.
# Prepare here first:  bash kernels/build-cuda.sh stage
# (fills .gpu/ with the stripped CUDA binary, the kernel-test and runtime-test binaries and the
# default model's tokenizer.json, xz-compressed: ~31 MB) and carry `.gpu`. If /tmp/camelid-default.gguf exists on the machine (the
# 98 MB default model does not fit one call's 64 MiB: send it in two halves over warm calls,
# see benches/gpu/README.md), correctness also runs on the real weights.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/camelid-gpu}"; mkdir -p "$OUT"
RES="$OUT/results.jsonl"; : > "$RES"
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
log() { echo "== $*" | tee -a "$OUT/log.txt"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/log.txt"

# Step 5 on one shape: camelid serve + camelid bench, then transformers eager as the peer
# (on a folder of safetensors; a GGUF file has no peer here).
# PEER=0 skips transformers eager, AB=0 the graphs-off run, AB_VARIANTS="N=V ..." (7b) serves
# once more under each, JSON=0 the bench JSON (the table is in log.txt either way).
# GRAPHS=0 serves without CUDA graphs (the name gets "-eager"; its table is in log.txt, not a
# JSON of its own: at most 8 files come back), for the A/B in the same call.
# VARIANT="NAME=VALUE" serves with that in the environment (the name gets "-NAME=VALUE"),
# likewise without a JSON or a peer.
speed() {
  local name=$1 model=${2:-$M/$1}
  [ "${GRAPHS:-1}" = 0 ] && name="$name-eager"
  [ -n "${VARIANT:-}" ] && name="$name-$VARIANT"
  # Every step traced (decodes, prefill tokens, step and forward ms): summarised after the bench.
  env ${VARIANT:-} CAMELID_CUDA_GRAPHS=${GRAPHS:-1} RUST_LOG=info,camelid_engine::step=debug,camelid_model::runtime::cuda_graph=debug $BIN serve --model "$model" --device cuda --port 18100 --max-num-seqs 64 --kv-cache-mb 16384 >"/tmp/serve-$name.log" 2>&1 &
  local srv=$!
  if $PY benches/gpu/models.py health http://127.0.0.1:18100/health $srv; then
    timeout 150 $BIN bench --endpoint http://127.0.0.1:18100 --name "camelid-$name" --prompt-tokens 128 \
      --output-tokens 256 --concurrency 1,16,32,64 --requests-per-client 1 \
      $([ "${GRAPHS:-1}" = 0 ] || [ "${JSON:-1}" = 0 ] || [ -n "${VARIANT:-}" ] || echo --json "$OUT/bench-$name.json") | tee -a "$OUT/log.txt"
  else
    log "serve $name never became healthy"
  fi
  kill $srv 2>/dev/null; wait $srv 2>/dev/null
  { echo "-- serve-$name.log (last 30 lines)"; grep -v -e camelid_engine::step -e "captured a decode graph" "/tmp/serve-$name.log" | tail -30; } >> "$OUT/log.txt"
  $PY benches/gpu/models.py steps "/tmp/serve-$name.log" "$name" | tee -a "$RES"
  { echo "-- $name: CUDA graph captures"; grep -c "captured a decode graph" "/tmp/serve-$name.log";
    grep -m3 "graph capture failed" "/tmp/serve-$name.log"; } >> "$OUT/log.txt"
  [ -d "$model" ] && [ "${GRAPHS:-1}" != 0 ] && [ "${PEER:-1}" != 0 ] && [ -z "${VARIANT:-}" ] || return 0
  log "5b. peer: transformers eager on $name"
  timeout 120 $PY benches/gpu/models.py eager "$model" | tee -a "$RES"
}

if [ "${1:-}" = gguf ]; then
  RES="$OUT/results-gguf.jsonl"; : > "$RES"
  log "6. GGUF Q4_K_M on the GPU: a random 1B (Llama-3.2-1B shape, SmolLM2's tokenizer)"
  [ -f .gpu/llama-quantize ] || { log "no .gpu/llama-quantize: run benches/gpu/stage-gguf.sh here first"; exit 1; }
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/gguf-*.whl
  mkdir -p "$M"
  PYTHONPATH=/tmp/site timeout 180 $PY benches/random_gguf.py .gpu/gguf-tokenizer.json "$M/r1b.F16.gguf" llama random-llama-1b
  timeout 240 .gpu/llama-quantize "$M/r1b.F16.gguf" "$M/r1b.Q4_K_M.gguf" Q4_K_M "$(nproc)" 2>&1 | tail -3 | tee -a "$OUT/log.txt"
  export VOCAB=49152
  T="$(cat benches/gpu/prompt.txt)"
  timeout 120 $BIN score --model "$M/r1b.Q4_K_M.gguf" --device cpu --text "$T" --out /tmp/q4k-cpu.f32
  timeout 60 $BIN score --model "$M/r1b.Q4_K_M.gguf" --device cuda --text "$T" --out /tmp/q4k-cuda.f32
  timeout 60 $BIN score --model "$M/r1b.Q4_K_M.gguf" --device cuda --text "$T" --paged --out /tmp/q4k-cuda-kernels.f32
  # f32 activations on the GPU too: how much of the distance to the CPU is bf16's.
  timeout 60 $BIN score --model "$M/r1b.Q4_K_M.gguf" --device cuda --dtype f32 --text "$T" --out /tmp/q4k-cuda-f32.f32
  timeout 60 $BIN score --model "$M/r1b.Q4_K_M.gguf" --device cuda --dtype f32 --text "$T" --paged --out /tmp/q4k-cuda-kernels-f32.f32
  $PY benches/gpu/models.py compare /tmp/q4k-cpu.f32 /tmp/q4k-cuda.f32 /tmp/q4k-cuda-kernels.f32 \
    /tmp/q4k-cuda-f32.f32 /tmp/q4k-cuda-kernels-f32.f32 | tee -a "$RES"
  # SPEED=0: the correctness part alone.
  [ "${SPEED:-1}" = 0 ] || speed r1b-q4_k_m "$M/r1b.Q4_K_M.gguf"
  log "done"; cat "$RES"
  exit 0
fi

if [ "${1:-}" = 7b ]; then
  RES="$OUT/results-7b.jsonl"; : > "$RES"
  log "5. speed on the 7B shape"
  timeout 300 $PY benches/gpu/models.py make "$M" llama-7b 2>&1 | tail -3 | tee -a "$OUT/log.txt"
  cp .gpu/tokenizer.json "$M/llama-7b/" 2>/dev/null
  speed llama-7b
  [ "${AB:-1}" = 0 ] || GRAPHS=0 speed llama-7b
  for v in ${AB_VARIANTS:-}; do VARIANT=$v speed llama-7b; done
  log "done"; cat "$RES"
  exit 0
fi

log "1. kernels against CPU references"
QUICK=$([ "${1:-}" = quick ] && echo 1)
CAMELID_REQUIRE_GPU=1 timeout 180 .gpu/cuda-kernel-tests --test-threads 1 2>&1 | tee "$OUT/kernel-tests.txt" | tail -15
grep -q "test result: ok" "$OUT/kernel-tests.txt" && ! grep -q SKIPPED "$OUT/kernel-tests.txt" \
  && echo '{"check":"kernels","pass":true}' >> "$RES" || echo '{"check":"kernels","pass":false}' >> "$RES"

log "1b. every architecture: the CUDA kernel runtime against the tensor runtime"
# Run from the repository's root: the tests read the tokenizer fixture under tests/fixtures.
CAMELID_REQUIRE_GPU=1 timeout 240 .gpu/cuda-runtime-tests --test-threads 1 2>&1 | tee "$OUT/runtime-tests.txt" | tail -25
grep -q "test result: ok" "$OUT/runtime-tests.txt" && ! grep -q SKIPPED "$OUT/runtime-tests.txt" \
  && echo '{"check":"cuda-runtime","pass":true}' >> "$RES" || echo '{"check":"cuda-runtime","pass":false}' >> "$RES"

if [ -n "$QUICK" ]; then
  log "2-5 (quick): the 1B shape's speed, graphs on, no peer"
  timeout 240 $PY benches/gpu/models.py make "$M" llama-1b 2>&1 | tail -2 | tee -a "$OUT/log.txt"
  # SmolLM2's tokenizer, widened to the shape's 128 256 ids (each decodes to text).
  $PY benches/gpu/widen_tokenizer.py .gpu/tokenizer.json "$M/llama-1b"
  PEER=0 speed llama-1b
  log "done (quick)"; cat "$RES"
  exit 0
fi

log "2. random-weight models (transformers, on the GPU)"
timeout 240 $PY benches/gpu/models.py make "$M" smol llama-1b 2>&1 | tail -5 | tee -a "$OUT/log.txt"
# SmolLM2's tokenizer for every shape, widened to its vocabulary where that is larger (the 1B
# shape's 128 256 ids: past 49 152 they streamed no text, and bench timed only text).
for d in "$M"/*/; do [ -f "$d/tokenizer.json" ] || $PY benches/gpu/widen_tokenizer.py .gpu/tokenizer.json "$d"; done

log "3. correctness: camelid CUDA bf16 / CPU f32 vs transformers f32, same weights"
IDS=$(seq -s, 1 97 9000 | cut -d, -f1-90)
export VOCAB=49152
timeout 120 $PY benches/gpu/models.py logits "$M/smol" "$IDS" /tmp/ref.f32
# transformers itself in bf16: how far bf16 alone moves top-1 on these near-flat random logits.
timeout 120 $PY benches/gpu/models.py logits "$M/smol" "$IDS" /tmp/hf-bf16.f32 bfloat16
timeout 60 $BIN score --model "$M/smol" --device cuda --dtype bf16 --ids "$IDS" --out /tmp/cuda-bf16.f32
# --paged: the serving path (engine's paged cache, prompt in two chunks) = camelid's CUDA kernels;
# CAMELID_CUDA_KERNELS=0 gives candle's ops over the same paged cache.
timeout 60 $BIN score --model "$M/smol" --device cuda --dtype bf16 --ids "$IDS" --paged --out /tmp/cuda-bf16-kernels.f32
CAMELID_CUDA_KERNELS=0 timeout 60 $BIN score --model "$M/smol" --device cuda --dtype bf16 --ids "$IDS" --paged --out /tmp/cuda-bf16-candle-paged.f32
timeout 120 $BIN score --model "$M/smol" --device cpu --dtype f32 --ids "$IDS" --out /tmp/cpu-f32.f32
$PY benches/gpu/models.py compare /tmp/ref.f32 /tmp/hf-bf16.f32 /tmp/cuda-bf16.f32 /tmp/cuda-bf16-kernels.f32 /tmp/cuda-bf16-candle-paged.f32 /tmp/cpu-f32.f32 | tee -a "$RES"
if [ -f /tmp/camelid-default.gguf ]; then
  timeout 60 $BIN score --model /tmp/camelid-default.gguf --device cpu --text "$(cat benches/gpu/prompt.txt)" --out /tmp/gguf-cpu.f32
  timeout 60 $BIN score --model /tmp/camelid-default.gguf --device cuda --text "$(cat benches/gpu/prompt.txt)" --out /tmp/gguf-cuda.f32
  timeout 60 $BIN score --model /tmp/camelid-default.gguf --device cuda --text "$(cat benches/gpu/prompt.txt)" --paged --out /tmp/gguf-cuda-kernels.f32
  $PY benches/gpu/models.py compare /tmp/gguf-cpu.f32 /tmp/gguf-cuda.f32 /tmp/gguf-cuda-kernels.f32 | tee -a "$RES"
fi

log "4. roofline: device-to-device bandwidth"
timeout 60 $PY benches/gpu/models.py bandwidth | tee -a "$RES"

log "5. speed: camelid serve + camelid bench (128 prompt + 256 output tokens)"
speed llama-1b
[ "${AB:-1}" = 0 ] || GRAPHS=0 speed llama-1b
log "done (the 7B shape: bash benches/gpu/run.sh 7b)"; cat "$RES"
