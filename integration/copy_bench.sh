#!/usr/bin/env bash
# COPY FROM STDIN of N rows (default 1,000,000 pgbench_accounts-like rows) with psql's \copy:
# straight to one database, against through shardgate into two shards (hash on aid), where the
# proxy cuts the data into rows and sends each to its shard.
#
# Usage: integration/copy_bench.sh PORT [ROWS]   (a PostgreSQL 15 server on 127.0.0.1:PORT
# that trusts user postgres; build first: cargo build --release -p shardgate)
set -euo pipefail
PORT=${1:?usage: copy_bench.sh PORT [ROWS]}
ROWS=${2:-1000000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/target/release/shardgate"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
P="psql -h 127.0.0.1 -p $PORT -U postgres -X -q"
TABLE="CREATE TABLE accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))"
for db in copy_one copy_s0 copy_s1; do
  $P -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  $P -d $db -c "$TABLE"
done
python3 -c "
import sys
out = sys.stdout
for i in range(1, $ROWS + 1):
    out.write(f'{i}\t{1 + i // 100000}\t0\t\n')
" > "$WORK/rows.txt"
cat > "$WORK/map.yaml" <<Y
name: accounts
type: hash
key_type: integer
partitions: 8
assign: { s0: [0, 1, 2, 3], s1: [4, 5, 6, 7] }
tables: [{ table: accounts, column: aid }]
Y
cat > "$WORK/two.yaml" <<Y
listen: 127.0.0.1:6483
users: [{ name: postgres, auth: trust }]
databases:
  postgres:
    shard_maps: [map.yaml]
    shards:
      s0: { primary: "postgres://postgres@127.0.0.1:$PORT/copy_s0" }
      s1: { primary: "postgres://postgres@127.0.0.1:$PORT/copy_s1" }
Y
"$BIN" run --config "$WORK/two.yaml" 2>/dev/null &
sleep 1
t0=$(date +%s.%N)
$P -d copy_one -c "\\copy accounts FROM '$WORK/rows.txt'"
t1=$(date +%s.%N)
psql -h 127.0.0.1 -p 6483 -U postgres -X -q -d postgres -c "\\copy accounts FROM '$WORK/rows.txt'"
t2=$(date +%s.%N)
n0=$($P -d copy_s0 -At -c "SELECT count(*) FROM accounts")
n1=$($P -d copy_s1 -At -c "SELECT count(*) FROM accounts")
python3 -c "
one = $t1 - $t0; two = $t2 - $t1
print(f'rows $ROWS: one database {one:.2f} s ({$ROWS / one:,.0f} rows/s); two shards through shardgate {two:.2f} s ({$ROWS / two:,.0f} rows/s), s0 {$n0} + s1 {$n1} rows')
"
