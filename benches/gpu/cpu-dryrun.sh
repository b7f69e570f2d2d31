#!/usr/bin/env bash
# benches/gpu/run.sh's correctness stage on this CPU, before a GPU session spends its minutes:
# the device's transformers (5.17) and torch (2.11) in a cached venv, the SmolLM2-shaped
# random model written by models.py as it will be there, its logits from transformers' own
# LlamaForCausalLM in f32 (and bf16), and camelid's (`camelid score`, CPU: f32 contiguous, bf16
# paged) compared by the same gates (models.py compare: f32 top-1 >= 0.99 and mean KL < 1e-6;
# bf16 clear top-1 >= 0.95 and mean KL < 5x transformers' own bf16). What it caught first:
# transformers 5 writes the rope base as `rope_parameters`, which camelid then read as 10 000
# (top-1 0.69).
#   bash benches/gpu/cpu-dryrun.sh      (~5 GB venv once, in ~/.cache/camelid/gpu-dryrun-venv)
#   BUILD=0 bash benches/gpu/cpu-dryrun.sh   target/release/camelid as it is, no cargo build
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE="${CAMELID_CACHE:-$HOME/.cache/camelid}"
VENV="$CACHE/gpu-dryrun-venv"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import torch, transformers' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==2.11.0" "transformers==5.17.0" numpy safetensors
fi
M="$(mktemp -d)"; trap 'rm -rf "$M"' EXIT
bash models/fetch-default.sh >/dev/null
[ "${BUILD:-1}" = 0 ] || cargo build --release -q -p camelid
BIN=target/release/camelid
# The default model's tokenizer, as build-cuda.sh stage puts it in .gpu/.
"$BIN" convert --out "$M/hf" --dtype bf16 >/dev/null
CAMELID_TORCH_DEVICE=cpu "$VENV/bin/python" benches/gpu/models.py make "$M/models" smol
cp "$M/hf/tokenizer.json" "$M/models/smol/"
IDS=$(seq -s, 1 97 9000 | cut -d, -f1-90)
export VOCAB=49152
CAMELID_TORCH_DEVICE=cpu "$VENV/bin/python" benches/gpu/models.py logits "$M/models/smol" "$IDS" "$M/ref.f32"
CAMELID_TORCH_DEVICE=cpu "$VENV/bin/python" benches/gpu/models.py logits "$M/models/smol" "$IDS" "$M/hf-bf16.f32" bfloat16
"$BIN" score --model "$M/models/smol" --device cpu --dtype f32 --ids "$IDS" --out "$M/cpu-f32.f32"
"$BIN" score --model "$M/models/smol" --device cpu --dtype bf16 --ids "$IDS" --paged --out "$M/cpu-bf16-paged.f32"
"$VENV/bin/python" benches/gpu/models.py compare "$M/ref.f32" --gate f32 "$M/cpu-f32.f32" \
  --gate bf16 --base "$M/hf-bf16.f32" "$M/hf-bf16.f32" "$M/cpu-bf16-paged.f32" | tee "$M/compare.jsonl"
! grep -q '"pass": false' "$M/compare.jsonl"
