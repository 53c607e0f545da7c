#!/usr/bin/env bash
# Start a three-process PF-2 Sync cluster on one PostgreSQL and Redis (ports 3001-3003), wait
# until every node says healthy, print how to reach it, and stop all three on Ctrl-C.
# Usage: tests/scripts/cluster.sh [postgres-url] [redis-url]   (make cluster)
set -euo pipefail
cd "$(dirname "$0")/../.."
DB=${1:-postgres://postgres@127.0.0.1:5432/test}
REDIS=${2:-redis://127.0.0.1:6379}
BIN=./target/release/sync-server
mkdir -p data/cluster
# One JWT secret and one webhook secret for every node (a token from any node works on all).
[ -s data/cluster/jwt-secret ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > data/cluster/jwt-secret
[ -s data/cluster/webhook-secret ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > data/cluster/webhook-secret
export PF2_JWT_SECRET=$(cat data/cluster/jwt-secret) PF2_WEBHOOK_SECRET=$(cat data/cluster/webhook-secret)
export PF2_DATABASE_URL=$DB PF2_REDIS_URL=$REDIS
"$BIN" migrate 2> data/cluster/migrate.log
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait' EXIT INT TERM
for n in 1 2 3; do
  PF2_LISTEN=127.0.0.1:300$n "$BIN" serve 2> "data/cluster/node-$n.log" &
  pids+=($!)
done
for n in 1 2 3; do
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:300$n/health" | grep -q '"status":"healthy"' && break
    sleep 0.1
  done
  echo "node $n: http://127.0.0.1:300$n  $(curl -s "http://127.0.0.1:300$n/health" | head -c 120)…"
done
echo
echo "Logs: data/cluster/node-{1,2,3}.log. A token for any node:"
echo "  PF2_JWT_SECRET=\$(cat data/cluster/jwt-secret) $BIN token --tenant demo --user alice --role service"
echo "Ctrl-C stops the three nodes."
wait
