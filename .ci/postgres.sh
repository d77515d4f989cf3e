# Sourced by .ci/run: a throwaway PostgreSQL server for tests/test_search_postgres.py
# (`tuneforge search --storage postgresql://... --jobs 2`). It lives in a temporary folder: initdb there, a free
# port on 127.0.0.1, the unix socket in that folder too; stopped and removed when the CI script exits.
# Exports TUNEFORGE_TEST_POSTGRES_URL (the test's database) and TUNEFORGE_REQUIRE_POSTGRES=1 (the test fails
# rather than skips without it).

postgres_bin() {  # the folder holding initdb, pg_ctl and createdb: Debian's versioned folder, else PATH's
  local debian
  debian="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [ -n "$debian" ] && [ -x "$debian/createdb" ]; then echo "$debian"; return; fi
  if command -v createdb >/dev/null 2>&1; then dirname "$(command -v createdb)"; fi
}

start_test_postgres() {
  local bin port as_postgres=()
  bin="$(postgres_bin)"
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ] || [ ! -x "$bin/pg_ctl" ]; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bin="$(postgres_bin)"
  fi
  TEST_POSTGRES_DIR="$(mktemp -d)"
  port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  if [ "$(id -u)" = 0 ]; then  # initdb refuses to run as root: the server runs as Debian's postgres user
    chown postgres "$TEST_POSTGRES_DIR"
    as_postgres=(runuser -u postgres --)
  fi
  TEST_POSTGRES_AS=("${as_postgres[@]}")
  TEST_POSTGRES_BIN="$bin"
  "${as_postgres[@]}" "$bin/initdb" -D "$TEST_POSTGRES_DIR/data" -U tuneforge --auth=trust -E UTF8 >/dev/null
  "${as_postgres[@]}" "$bin/pg_ctl" -D "$TEST_POSTGRES_DIR/data" -l "$TEST_POSTGRES_DIR/server.log" -w \
    -o "-p $port -k $TEST_POSTGRES_DIR -c listen_addresses=127.0.0.1" start >/dev/null
  trap stop_test_postgres EXIT
  "${as_postgres[@]}" "$bin/createdb" -h "$TEST_POSTGRES_DIR" -p "$port" -U tuneforge tuneforge_test
  export TUNEFORGE_TEST_POSTGRES_URL="postgresql://tuneforge@127.0.0.1:$port/tuneforge_test"
  export TUNEFORGE_REQUIRE_POSTGRES=1
  echo "$("$bin/postgres" --version) for the tests on 127.0.0.1:$port"
}

stop_test_postgres() {
  if [ -n "${TEST_POSTGRES_DIR:-}" ] && [ -d "$TEST_POSTGRES_DIR/data" ]; then
    "${TEST_POSTGRES_AS[@]}" "$TEST_POSTGRES_BIN/pg_ctl" -D "$TEST_POSTGRES_DIR/data" -m fast -w stop >/dev/null || true
  fi
  [ -n "${TEST_POSTGRES_DIR:-}" ] && rm -rf "$TEST_POSTGRES_DIR"
  return 0
}
