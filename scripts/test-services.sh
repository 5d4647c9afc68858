#!/usr/bin/env bash
# Install (as root, when missing) and start what the test suite needs: dockerd, Redis and
# PostgreSQL on loopback, and Chromium for the browser tests. Idempotent: checks before acting.
set -euo pipefail

REDIS_PORT=${LAUNCHER_TEST_REDIS_PORT:-6391}
PACKAGES=(docker.io docker-compose busybox-static redis-server postgresql chromium debootstrap)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  [ "$(id -u)" = 0 ] || { echo "need root to apt-get install ${missing[*]}" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

wait_for() {  # wait_for <seconds> <description> <command...>
  local limit=$1 what=$2; shift 2
  for _ in $(seq 1 $((limit * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "timed out waiting for $what" >&2; return 1
}

# dockerd
if ! docker info >/dev/null 2>&1; then
  echo "starting dockerd"
  (setsid dockerd >/var/log/dockerd.log 2>&1 &)
  wait_for 60 dockerd docker info
fi

# Redis on its own loopback port, no persistence
if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  echo "starting redis on 127.0.0.1:$REDIS_PORT"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --maxclients 10000 --logfile /tmp/launcher-test-redis.log
  wait_for 20 redis redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping
fi

# PostgreSQL: Debian's cluster, plus a superuser role the tests connect as
PG_VERSION=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h 2>/dev/null | grep -q .; then
  pg_createcluster "$PG_VERSION" main >/dev/null
fi
if ! pg_isready -h 127.0.0.1 -q; then
  echo "starting postgresql $PG_VERSION"
  pg_ctlcluster "$PG_VERSION" main start
  wait_for 30 postgresql pg_isready -h 127.0.0.1 -q
fi
su postgres -c "psql -tAc \"select 1 from pg_roles where rolname='launcher'\"" | grep -q 1 || \
  su postgres -c "psql -qc \"create role launcher login superuser password 'launcher'\""
su postgres -c "psql -tAc \"select 1 from pg_database where datname='launcher'\"" | grep -q 1 || \
  su postgres -c "createdb -O launcher launcher"

echo "services ready: dockerd, redis 127.0.0.1:$REDIS_PORT, postgresql 127.0.0.1:5432"
