# Sourced by the benchmark scripts (from the repository root): one server at a time in
# $SERVER, stopped when the script exits; results under $OUT, named with $STAMP.
OUT=benches/results; mkdir -p "$OUT"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
SERVER=""
trap '[ -n "$SERVER" ] && kill $SERVER 2>/dev/null || true' EXIT
# up PORT [SECONDS]: wait for its /health (120 s; a 1B model loading from disk takes longer).
up() {
  for _ in $(seq "${2:-120}"); do curl -sf "http://127.0.0.1:$1/health" >/dev/null && return; sleep 1; done
  echo "server on port $1 did not come up" >&2; exit 1
}
down() { kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""; }
