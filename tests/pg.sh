#!/usr/bin/env bash
# A throwaway PostgreSQL for the arena store's tests, on a loopback port.
#   tests/pg.sh install      installs Debian's postgresql if its binaries are absent
#   tests/pg.sh start DIR    initdb + postgres in DIR/pg (socket there too); prints the URL
#   tests/pg.sh stop DIR     stops it (immediate shutdown)
# PostgreSQL refuses to run as root: as root the server runs as the `postgres` user.
set -euo pipefail

bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
  return 1
}

as_db_user() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "${1:-}" in
  install)
    if bindir >/dev/null; then exit 0; fi
    # As root, or through sudo as tests/run.sh installs Chromium.
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    if [ -n "$SUDO" ] && ! command -v sudo >/dev/null; then
      echo "pg.sh: postgresql is not installed and this user cannot install it (CAMELID_SKIP_POSTGRES=1 skips its tests)" >&2; exit 1
    fi
    apt="$SUDO env DEBIAN_FRONTEND=noninteractive apt-get"
    $apt install -y -q postgresql >/dev/null 2>&1 \
      || { $apt update -q >/dev/null && $apt install -y -q postgresql >/dev/null; }
    bindir >/dev/null || { echo "pg.sh: no initdb after installing postgresql" >&2; exit 1; }
    ;;
  start)
    dir=${2:?usage: pg.sh start DIR}
    bin=$(bindir) || { echo "pg.sh: postgresql is not installed (tests/pg.sh install)" >&2; exit 1; }
    data="$dir/pg"
    mkdir -p "$data"
    if [ "$(id -u)" = 0 ]; then
      chmod 755 "$dir"
      chown postgres "$data"
    fi
    chmod 700 "$data"
    as_db_user "$bin/initdb" -D "$data/data" -U postgres --auth=trust -E UTF8 >"$dir/pg-initdb.log" 2>&1 \
      || { cat "$dir/pg-initdb.log" >&2; exit 1; }
    port=$(free_port)
    as_db_user "$bin/pg_ctl" -D "$data/data" -l "$data/server.log" -w -t 60 \
      -o "-h 127.0.0.1 -p $port -k $data -c fsync=on" start >/dev/null \
      || { cat "$data/server.log" >&2; exit 1; }
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    dir=${2:?usage: pg.sh stop DIR}
    bin=$(bindir)
    as_db_user "$bin/pg_ctl" -D "$dir/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
    ;;
  *)
    echo "usage: tests/pg.sh install | start DIR | stop DIR" >&2; exit 2
    ;;
esac
