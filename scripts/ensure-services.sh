#!/usr/bin/env bash
# Make sure the PostgreSQL, Redis and headless Chromium *binaries* the integration tests need
# are installed. Idempotent: does nothing when all are present. It does not start any service:
# the tests run private throwaway servers on free ports (tests/services.py).
set -euo pipefail

missing=()
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
  echo "ensure-services: PostgreSQL present ($("$pg_bin/postgres" --version))"
else
  missing+=(postgresql)
fi
if command -v redis-server >/dev/null 2>&1; then
  echo "ensure-services: Redis present ($(redis-server --version | cut -d' ' -f1-3))"
else
  missing+=(redis-server)
fi
# redis-cli creates the tests' local Redis Cluster (tests/redis_topologies.py); Debian ships it
# in redis-tools, which redis-server depends on, so this only matters where it was removed.
if command -v redis-server >/dev/null 2>&1 && ! command -v redis-cli >/dev/null 2>&1; then
  missing+=(redis-tools)
fi
# Headless Chromium renders the HTML reconciliation report in tests/integration/test_report_html.py.
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  echo "ensure-services: Chromium present"
else
  missing+=(chromium)
fi

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-services: missing ${missing[*]} and no apt-get here; install them by hand" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "ensure-services: missing ${missing[*]}; need root or sudo to apt-get install" >&2
    exit 1
  fi
  sudo=(sudo)
fi

# Packages' maintainer scripts would start system-wide daemons (a Postgres cluster on 5432,
# Redis on 6379) that the tests never use; a policy-rc.d that answers 101 ("action forbidden")
# stops that, and is removed again unless one was already in place.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod 755 "$policy"
  added_policy=1
fi
cleanup() {
  if [ "$added_policy" -eq 1 ]; then
    "${sudo[@]}" rm -f "$policy"
  fi
}
trap cleanup EXIT

echo "ensure-services: installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  echo "ensure-services: PostgreSQL install did not provide initdb" >&2
  exit 1
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "ensure-services: Redis install did not provide redis-server" >&2
  exit 1
fi
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "ensure-services: Chromium install did not provide chromium" >&2
  exit 1
fi
echo "ensure-services: installed ${missing[*]}"
