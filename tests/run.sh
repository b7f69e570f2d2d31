#!/usr/bin/env bash
# The whole test suite on a fresh machine: fetches the default model, makes the Python venv
# the OpenAI-client test uses, then runs every Rust test (which drives the Python one too).
set -euo pipefail
cd "$(dirname "$0")/.."
bash models/fetch-default.sh >/dev/null
VENV="${CAMELID_TEST_VENV:-$HOME/.cache/camelid/test-venv}"
if ! "$VENV/bin/python" -c "import openai" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q -r tests/openai/requirements.txt
fi
export CAMELID_TEST_PYTHON="$VENV/bin/python"
cargo test --workspace "$@"
# The kernels' AVX2 flavours again on a machine with AVX-512 (where they would otherwise never
# run): the same unit tests against the same scalar references, the AVX-512 paths turned off.
CAMELID_NO_AVX512=1 cargo test -p camelid-kernels --lib "$@"
