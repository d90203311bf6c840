#!/usr/bin/env bash
# pgbench -S through a 2-shard config (pgbench_accounts hash-sharded by aid, each shard a
# database holding only its own rows) against the same through a one-shard pass-through.
#
# Usage: integration/two_shards.sh PORT   (a PostgreSQL 15 server on 127.0.0.1:PORT that
# trusts user postgres; build first: cargo build --release -p shardgate)
set -euo pipefail
PORT=${1:?usage: two_shards.sh PORT}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/target/release/shardgate"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
P="psql -h 127.0.0.1 -p $PORT -U postgres -X -q"
for db in whole shard0 shard1; do
  $P -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
done
pgbench -h 127.0.0.1 -p "$PORT" -U postgres -i -s 10 -q whole >/dev/null 2>&1
for i in 0 1; do
  pgbench -h 127.0.0.1 -p "$PORT" -U postgres -i -s 10 -q -I dtg "shard$i" >/dev/null 2>&1
  r1=$i; r2=$((i + 2))
  $P -d "shard$i" -c "CREATE TABLE ap (aid int) PARTITION BY HASH (aid)" \
    -c "DELETE FROM pgbench_accounts WHERE NOT (satisfies_hash_partition('ap'::regclass, 4, $r1, aid) OR satisfies_hash_partition('ap'::regclass, 4, $r2, aid))" \
    -c "ALTER TABLE pgbench_accounts ADD PRIMARY KEY (aid)" -c "VACUUM FULL ANALYZE pgbench_accounts"
done
cat > "$WORK/accounts.yaml" <<Y
name: accounts
type: hash
key_type: integer
partitions: 4
assign: { s0: [0, 2], s1: [1, 3] }
tables: [{ table: pgbench_accounts, column: aid }]
Y
cat > "$WORK/one.yaml" <<Y
listen: 127.0.0.1:6481
pool: { size: 20 }
users: [{ name: postgres, auth: trust }]
databases:
  postgres:
    shards:
      s0: { primary: "postgres://postgres@127.0.0.1:$PORT/whole" }
Y
cat > "$WORK/two.yaml" <<Y
listen: 127.0.0.1:6482
pool: { size: 10 }
users: [{ name: postgres, auth: trust }]
databases:
  postgres:
    shard_maps: [accounts.yaml]
    shards:
      s0: { primary: "postgres://postgres@127.0.0.1:$PORT/shard0" }
      s1: { primary: "postgres://postgres@127.0.0.1:$PORT/shard1" }
Y
"$BIN" run --config "$WORK/one.yaml" 2>/dev/null &
"$BIN" run --config "$WORK/two.yaml" 2>/dev/null &
sleep 1
for mode in simple prepared; do
  for c in 16 64; do
    one=0; two=0
    for round in 1 2; do
      a=$(pgbench -h 127.0.0.1 -p 6481 -U postgres -n -S -M $mode -c $c -j 2 -T 8 postgres 2>&1 | awk '/^tps/ {print int($3)}')
      b=$(pgbench -h 127.0.0.1 -p 6482 -U postgres -n -S -M $mode -c $c -j 2 -T 8 postgres 2>&1 | awk '/^tps/ {print int($3)}')
      one=$((one + a)); two=$((two + b))
    done
    echo "$mode c=$c one-shard $((one / 2)) two-shard $((two / 2)) ratio $(python3 -c "print(round($two / $one, 2))")"
  done
done
