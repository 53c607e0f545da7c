#!/usr/bin/env bash
# The OpenAPI document against the server it describes: schemathesis with every check, on a
# fresh sync-server (SQLite, the shipped defaults but two) with a token that may call every
# operation. Exits non-zero on any error or failure, or when schemathesis is missing.
#
# Lifted, and why: the per-user REST budgets for reconcile (10 a minute) and the long-polling
# lane (60 a minute). schemathesis sends a few hundred requests a minute as one user; at the
# shipped budgets nearly every reconcile, delta, event poll and document sync would be a 429,
# and their schemas would go unchecked. The budgets are tested by
# sync-server/tests/api.rs (rate_limits_answer_429_with_retry_after).
set -euo pipefail
cd "$(dirname "$0")/../.."
ST=${SCHEMATHESIS:-target/schemathesis/bin/st}
BIN=${PF2_SERVER_BIN:-target/debug/sync-server}
[ -x "$ST" ] || { echo "schemathesis is not installed at $ST (make prereqs installs it)" >&2; exit 1; }
DATA=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SECRET=openapi-check-secret-openapi-check-secret
PF2_DATABASE_URL="sqlite://$DATA/pf2.db" PF2_LISTEN="127.0.0.1:$PORT" PF2_JWT_SECRET=$SECRET \
  PF2_DATA_DIR="$DATA" PF2_LOG=error PF2_RATE_RECONCILE=100000 PF2_RATE_POLL=100000 "$BIN" serve & # why: above (the budgets would answer 429 to nearly every case)
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.05; done
TOKEN=$(PF2_JWT_SECRET=$SECRET PF2_DATA_DIR="$DATA" "$BIN" token --tenant openapi --user operator \
  --role admin --role service --ttl 3600)
# Every example the document gives is valid against its schema (tests/openapi/examples.py).
curl -sf "http://127.0.0.1:$PORT/openapi.json" > "$DATA/openapi.json"
"$(dirname "$ST")/python" tests/openapi/examples.py "$DATA/openapi.json"
"$ST" --config-file tests/openapi/schemathesis.toml run "http://127.0.0.1:$PORT/openapi.json" \
  -H "Authorization: Bearer $TOKEN" \
  --checks all \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-50}" \
  --workers 1 \
  --seed "${SCHEMATHESIS_SEED:-1}"
