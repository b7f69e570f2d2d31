#!/usr/bin/env bash
# Structured output's cost on the default model: builds the release binary, starts
# `camelid serve` alone on a free port, runs benches/structured.py (8 clients, JSON schema vs
# unconstrained, mask time from /metrics), stops the server. `[ROUNDS=2] bash benches/structured.sh`
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p camelid >&2
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/release/camelid serve --port "$PORT" >/tmp/camelid-structured-bench.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
lscpu | grep -E '^Model name' || true
uptime
python3 benches/structured.py "http://127.0.0.1:$PORT" default "${ROUNDS:-2}"
