#!/usr/bin/env bash
# Sourced by the test scripts: makes sure PostgreSQL answers on 127.0.0.1:5432 and exports
# KB_TEST_POSTGRES_URL for the tests. Installs and starts a server when none is running;
# fails loudly rather than letting PostgreSQL tests be skipped.
pg_url="${KB_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
pg_up() { command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! pg_up; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "postgres: installing"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
  fi
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  echo "postgres: starting cluster $version/main"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  pg_up || { echo "postgres: server did not come up" >&2; exit 1; }
fi
# A packaged server refuses password-less TCP logins: give the test user a password then.
if ! psql "$pg_url" -qAtc 'select 1' >/dev/null 2>&1; then
  as_root su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
  pg_url="postgres://postgres:postgres@127.0.0.1:5432/postgres"
  psql "$pg_url" -qAtc 'select 1' >/dev/null || { echo "postgres: cannot log in as postgres" >&2; exit 1; }
fi
export KB_TEST_POSTGRES_URL="$pg_url"
echo "postgres: ready"
