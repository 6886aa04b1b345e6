#!/usr/bin/env bash
# Starts PostgreSQL and Redis on 127.0.0.1 when they are down. Under CI=true, failing to reach
# them is an error: the real-stack tests never skip there.
set -uo pipefail
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! up 5432; then
  echo "==> starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
fi
if ! up 6379; then
  echo "==> starting Redis"
  if command -v redis-server >/dev/null 2>&1; then
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  fi
fi
for _ in $(seq 1 30); do
  if up 5432 && up 6379; then exit 0; fi
  sleep 1
done
msg="PostgreSQL (5432) or Redis (6379) is not reachable on 127.0.0.1"
if [ "${CI:-}" = "true" ]; then
  echo "error: $msg" >&2
  exit 1
fi
echo "warning: $msg; the real-stack tests will be skipped" >&2
