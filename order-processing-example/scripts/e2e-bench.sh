#!/usr/bin/env bash
# The end-to-end measurement of the example on the real backends.
#
# For each phase it starts a fresh system (`order-processing all`, release build) on a database,
# a RabbitMQ vhost and a Redis database of its own, runs the load generator against it with the
# backend URLs (so it prints the budget of an order: transactions, rows, messages, Redis calls,
# CPU per process, and the ceiling they imply), stops the system and drops what it made:
#   1. closed loop: `loadtest --orders $ORDERS --concurrency $CONCURRENCY` (1000 and 32),
#      $CLOSED_RUNS times (3), each on a fresh system; the median run counts;
#   2. open loop at half the throughput of that run: `loadtest --rate R --duration 60s`.
# The load generator vacuums and analyzes the system's tables before each measured phase (the
# machines here run PostgreSQL with autovacuum off; a production server has it on).
#
# It then writes a table with the machine, the backends' versions and the commit between the
# `<!-- e2e-bench -->` markers of order-processing-example/README.md and docs/benchmarks.md
# (WRITE_DOCS=0 only prints it), and keeps the raw JSON reports in $OUT (target/e2e-bench).
#
# Usage (from anywhere in the repository):
#   order-processing-example/scripts/e2e-bench.sh
# Settings (environment): ORDERS, CONCURRENCY, OPEN_DURATION (60s), HOT=1 (every order on one
# product), PG_URL (an administrative connection, default the standard local port), AMQP_HOST,
# REDIS_DB (13), PORT_BASE (6101: the five services on 6101..6105), NOTE (a line printed
# under the table, e.g. what else ran on the machine), WRITE_DOCS (1), CLOSED_RUNS (3: the closed
# loop's repeats; the table shows the median run and lists every run's rate).
# Needs: psql, rabbitmqctl, redis-cli, jq, curl; PostgreSQL, RabbitMQ and Redis running.
set -euo pipefail

ROOT=$(git rev-parse --show-toplevel)
cd "$ROOT"
ORDERS=${ORDERS:-1000}
CONCURRENCY=${CONCURRENCY:-32}
OPEN_DURATION=${OPEN_DURATION:-60s}
PG_URL=${PG_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
PG_BASE=${PG_URL%/*}
AMQP_HOST=${AMQP_HOST:-guest:guest@127.0.0.1:5672}
REDIS_DB=${REDIS_DB:-13}
PORT_BASE=${PORT_BASE:-6101}
WRITE_DOCS=${WRITE_DOCS:-1}
CLOSED_RUNS=${CLOSED_RUNS:-3}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${OUT:-$TARGET_DIR/e2e-bench}
BIN=$TARGET_DIR/release/order-processing
HOT_FLAG=()
MIX="orders spread over the load test's 50 products"
if [ "${HOT:-0}" = 1 ]; then HOT_FLAG=(--hot); MIX="every order on one product (--hot)"; fi
mkdir -p "$OUT"

cargo build --release -p order-processing-example >&2

ports=(--order-port "$PORT_BASE" --inventory-port $((PORT_BASE + 1)) --payment-port $((PORT_BASE + 2))
  --notification-port $((PORT_BASE + 3)) --analytics-port $((PORT_BASE + 4)))

SYSTEM_PID=
NAME=
cleanup() {
  if [ -n "$SYSTEM_PID" ]; then
    kill -INT "$SYSTEM_PID" 2>/dev/null || true
    wait "$SYSTEM_PID" 2>/dev/null || true
    SYSTEM_PID=
  fi
  if [ -n "$NAME" ]; then
    psql -q "$PG_URL" -c "DROP DATABASE IF EXISTS \"$NAME\" WITH (FORCE)" >/dev/null || true
    rabbitmqctl -q delete_vhost "$NAME" >/dev/null 2>&1 || true
    NAME=
  fi
}
trap cleanup EXIT

# Starts a fresh system; sets NAME, SYSTEM_PID and the URLs.
start_system() {
  NAME="e2e_$(date +%s)_$$"
  psql -q "$PG_URL" -c "CREATE DATABASE \"$NAME\"" >/dev/null
  rabbitmqctl -q add_vhost "$NAME" >/dev/null
  rabbitmqctl -q set_permissions -p "$NAME" guest '.*' '.*' '.*' >/dev/null
  redis-cli -n "$REDIS_DB" flushdb >/dev/null
  DATABASE_URL="$PG_BASE/$NAME"
  AMQP_URL="amqp://$AMQP_HOST/$NAME"
  REDIS_URL="redis://127.0.0.1:6379/$REDIS_DB"
  RUST_LOG=${RUST_LOG:-warn} "$BIN" all --database-url "$DATABASE_URL" --amqp-url "$AMQP_URL" \
    --redis-url "$REDIS_URL" "${ports[@]}" >"$OUT/system-$1.log" 2>&1 &
  SYSTEM_PID=$!
  for port in $(seq "$PORT_BASE" $((PORT_BASE + 4))); do
    for _ in $(seq 1 300); do
      if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then break; fi
      sleep 0.2
    done
  done
}

loadtest() {
  "$BIN" loadtest --database-url "$DATABASE_URL" --amqp-url "$AMQP_URL" --redis-url "$REDIS_URL" \
    --target "http://127.0.0.1:$PORT_BASE" --inventory-target "http://127.0.0.1:$((PORT_BASE + 1))" \
    --pid "$SYSTEM_PID" "${HOT_FLAG[@]}" --json "$@"
}

throughput() { jq '(.orders.confirmed + .orders.cancelled) / .elapsedSeconds' "$1"; }

# The closed loop is a short burst and its rate moves from run to run on a shared machine: run
# it CLOSED_RUNS times, each on a fresh system, and report the median run (and every rate).
runs=()
for i in $(seq 1 "$CLOSED_RUNS"); do
  echo "phase 1 ($i of $CLOSED_RUNS): closed loop, $ORDERS orders, $CONCURRENCY in flight" >&2
  start_system "closed-$i"
  loadtest --orders "$ORDERS" --concurrency "$CONCURRENCY" >"$OUT/closed-$i.json"
  cleanup
  runs+=("$(throughput "$OUT/closed-$i.json") $i")
done
median=$(printf '%s\n' "${runs[@]}" | sort -g | awk -v n="$CLOSED_RUNS" 'NR == int((n + 1) / 2) {print $2}')
cp "$OUT/closed-$median.json" "$OUT/closed.json"
closed_rates=$(printf '%s\n' "${runs[@]}" | awk '{printf "%.1f\n", $1}' | paste -sd, - | sed 's/,/, /g')
RATE=$(jq -n "[($(throughput "$OUT/closed.json") / 2 | floor), 1] | max")
echo "phase 2: open loop, $RATE orders/s for $OPEN_DURATION" >&2
start_system open
loadtest --rate "$RATE" --duration "$OPEN_DURATION" >"$OUT/open.json"
cleanup

# ---- the table ----------------------------------------------------------------------------
cores=$(nproc)
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
memory=$(free -g | awk '/^Mem:/ {print $2 " GiB"}')
pg_version=$(psql -tA "$PG_URL" -c 'SHOW server_version' | cut -d' ' -f1)
rabbit_version=$(rabbitmqctl -q version 2>/dev/null || echo '?')
redis_version=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
commit=$(git rev-parse --short HEAD)
if ! git diff --quiet HEAD -- . ':!*.md'; then commit="$commit (with uncommitted changes)"; fi
load=$(cut -d' ' -f1-3 /proc/loadavg)

row() { # name file
  jq -r --arg name "$1" '
    def ms: if . == null then "–" else (. * 10 | round / 10 | tostring) end;
    def lat(s): if s == null then "–" else "\(s.p50Ms | ms) / \(s.p99Ms | ms) ms" end;
    "| \($name) | \((.orders.confirmed + .orders.cancelled) / .elapsedSeconds * 10 | round / 10) | \(.orders.confirmed) / \(.orders.cancelled) / \(.orders.unfinished) | \(lat(.latency.request)) | \(lat(.latency.endToEnd)) | \(.slowestStage // "–") |"' "$2"
}

budget() { # label jq-expression-per-order closed open
  local label=$1 expr=$2
  local a b
  a=$(jq -r "(.budget // {}) as \$b | (\$b.orders // 0) as \$n | if \$n == 0 then \"–\" else ($expr) end" "$OUT/closed.json")
  b=$(jq -r "(.budget // {}) as \$b | (\$b.orders // 0) as \$n | if \$n == 0 then \"–\" else ($expr) end" "$OUT/open.json")
  echo "| $label | $a | $b |"
}
per='def per(x): if x == null then "–" else (x / $n * 10 | round / 10 | tostring) end;'
cpu_ms='def cpu(g): if $b.cpuMs[g] == null then "–" else ($b.cpuMs[g] / $n * 100 | round / 100 | tostring) + " ms" end;'
total='([$b.cpuMs | to_entries[] | select(.key != "loadGenerator") | .value] | add) / $n'

# What the load generator did for the statistics, said under the table.
VACUUMED=$(jq -r 'if (.vacuumed // "") | test("autovacuum is off") then "Between phases and during each run the load generator analyzes the tables (autovacuum is off on this machine)." else "" end' "$OUT/open.json")

TABLE=$(cat <<EOF
Measured $(date -u +%Y-%m-%d) by \`order-processing-example/scripts/e2e-bench.sh\` at commit $commit:
$cores cores (${cpu:-unknown CPU}), $memory, load average at the end $load; PostgreSQL $pg_version,
RabbitMQ $rabbit_version, Redis $redis_version on loopback; \`order-processing all\` (release build),
a fresh database, vhost and Redis database for each run; $MIX.
The closed loop ran $CLOSED_RUNS times ($closed_rates orders/s); its rows show the median run.
$VACUUMED
${NOTE:-}

| run | orders/s | confirmed / cancelled / unfinished | POST p50 / p99 | end to end p50 / p99 | slowest stage |
|---|---|---|---|---|---|
$(row "closed loop, $ORDERS orders, $CONCURRENCY in flight" "$OUT/closed.json")
$(row "open loop, $RATE orders/s for $OPEN_DURATION" "$OUT/open.json")

| per order | closed loop | open loop |
|---|---|---|
$(budget "PostgreSQL transactions" "$per per(\$b.postgres.transactions)")
$(budget "rows inserted / updated / deleted" "$per \"\(per(\$b.postgres.rowsInserted)) / \(per(\$b.postgres.rowsUpdated)) / \(per(\$b.postgres.rowsDeleted))\"")
$(budget "rows fetched / returned" "$per \"\(per(\$b.postgres.rowsFetched)) / \(per(\$b.postgres.rowsReturned))\"")
$(budget "messages published / delivered" "$per \"\(per(\$b.broker.published)) / \(per(\$b.broker.delivered))\"")
$(budget "Redis calls" "$per per(\$b.redisCalls)")
$(budget "CPU order-processing" "$cpu_ms cpu(\"system\")")
$(budget "CPU PostgreSQL" "$cpu_ms cpu(\"postgres\")")
$(budget "CPU RabbitMQ" "$cpu_ms cpu(\"rabbitmq\")")
$(budget "CPU Redis" "$cpu_ms cpu(\"redis\")")
$(budget "CPU in all" "($total * 100 | round / 100 | tostring) + \" ms\"")
$(budget "**ceiling on $cores cores**" "\"**\" + (\$b.cores * 1000 / ($total) | round | tostring) + \" orders/s**\"")
EOF
)

echo "$TABLE"
if [ "$WRITE_DOCS" = 1 ]; then
  for doc in order-processing-example/README.md docs/benchmarks.md; do
    python3 - "$doc" "$TABLE" <<'PY'
import sys
path, table = sys.argv[1], sys.argv[2]
text = open(path).read()
start, end = "<!-- e2e-bench -->", "<!-- /e2e-bench -->"
if start in text and end in text:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    text = head + start + "\n" + table + "\n" + end + tail
else:
    text = text.rstrip("\n") + "\n\n" + start + "\n" + table + "\n" + end + "\n"
open(path, "w").write(text)
PY
    echo "wrote the table into $doc" >&2
  done
fi
