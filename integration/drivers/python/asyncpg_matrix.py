"""asyncpg's part of the driver matrix (tests/tests/drivers.rs).

A fixed script of statements run against the database named on the command line, writing one
line per operation to the result file, so that the run through shardgate can be compared
with the run against one plain PostgreSQL holding the same rows.

Usage: python3 asyncpg_matrix.py postgres://USER:PASSWORD@HOST:PORT/DB RESULT_FILE

Keys (customers.id = orders.customer_id) of this program, 4 hash partitions, s0 owning
remainders 0 and 2, s1 owning 1 and 3 (the test checks the placement):
  s0: 3003 3007 3013 3014 3015 3018 3019
  s1: 3000 3001 3002 3004 3005 3006 3008 3009 3010 3011 3012 3016 3017
Rows it inserts have order ids from 3100000 up.
"""

import asyncio
import json
import sys
from decimal import Decimal

import asyncpg

S0 = [3003, 3007, 3013, 3014, 3015, 3018, 3019]
S1 = [3000, 3001, 3002, 3004, 3005, 3006, 3008, 3009, 3010, 3011, 3012, 3016, 3017]

ORDERS_OF = "SELECT id, amount FROM orders WHERE customer_id = $1 ORDER BY id"

out = []


def text(v):
    return None if v is None else str(v)


def rows(rs):
    return [[text(v) for v in r] for r in rs]


def emit(label, result):
    out.append(f"{label}: {json.dumps(result, separators=(',', ':'))}")


def error(label, e):
    state = getattr(e, "sqlstate", None) or type(e).__name__
    out.append(f"{label}: ERROR {state}")
    print(f"{label}: ERROR {state} {e}", flush=True)


async def step(label, coro_fn):
    """Runs one operation; its result, or `ERROR <sqlstate>`, is the operation's line."""
    try:
        emit(label, await coro_fn())
        return True
    except asyncpg.PostgresError as e:
        error(label, e)
        return False


class Rollback(Exception):
    """Raised inside a transaction block to make it roll back."""


async def prepared(conn):
    stmt = await conn.prepare(ORDERS_OF)
    for rnd in range(1, 4):
        for key in (S0[0], S1[0]):
            await step(f"prepared round={rnd} key={key}", lambda k=key: _rows(stmt.fetch(k)))
    agg = await conn.prepare("SELECT count(*), sum(amount) FROM orders WHERE customer_id = $1")
    for key in (S0[1], S1[1]):
        await step(f"prepared fetchrow key={key}", lambda k=key: _row(agg.fetchrow(k)))
        await step(f"prepared fetchval key={key}", lambda k=key: _text(agg.fetchval(k)))


async def _rows(coro):
    return rows(await coro)


async def _row(coro):
    r = await coro
    return None if r is None else [text(v) for v in r]


async def _text(coro):
    return text(await coro)


async def fetch_keys(conn):
    # Queries with key parameters, no explicit prepare (asyncpg prepares behind the scenes).
    for key in (S0[2], S1[2]):
        await step(f"fetch customer key={key}", lambda k=key: _rows(conn.fetch(
            "SELECT id, name, country FROM customers WHERE id = $1", k)))
        await step(f"fetch orders key={key}", lambda k=key: _rows(conn.fetch(ORDERS_OF, k)))
        await step(f"fetch any key={key}", lambda k=key: _rows(conn.fetch(
            "SELECT id FROM orders WHERE customer_id = ANY($1::bigint[]) ORDER BY id", [k])))
    # An IN list over both shards: no ORDER BY, so the rows are sorted here.
    await step("in-list both shards", lambda: _sorted(conn.fetch(
        "SELECT id, customer_id, amount FROM orders WHERE customer_id IN ($1, $2) AND id < 1000000",
        S0[2], S1[2])))


async def _sorted(coro):
    return sorted(rows(await coro))


async def transactions(conn):
    # A committed transaction on s1 keys, then one that rolls back.
    key = S1[3]
    label = f"transaction commit key={key}"
    try:
        async with conn.transaction():
            emit(f"{label} select", rows(await conn.fetch(ORDERS_OF, key)))
            emit(f"{label} update", await conn.execute(
                "UPDATE orders SET amount = amount + 3 WHERE customer_id = $1", key))
            emit(f"{label} insert", await conn.execute(
                "INSERT INTO orders (id, customer_id, amount) VALUES ($1, $2, $3)", 3100000, key, Decimal(1)))
            emit(f"{label} select again", rows(await conn.fetch(ORDERS_OF, key)))
    except asyncpg.PostgresError as e:
        error(label, e)
    await step(f"{label} after", lambda: _rows(conn.fetch(ORDERS_OF, key)))

    key = S1[4]
    label = f"transaction rollback key={key}"
    try:
        async with conn.transaction():
            emit(f"{label} update", await conn.execute(
                "UPDATE orders SET amount = 0 WHERE customer_id = $1", key))
            emit(f"{label} select", rows(await conn.fetch(ORDERS_OF, key)))
            raise Rollback()
    except Rollback:
        emit(f"{label} rolled back", "ok")
    except asyncpg.PostgresError as e:
        error(label, e)
    await step(f"{label} after", lambda: _rows(conn.fetch(ORDERS_OF, key)))

    # A transaction whose first statement is prepared, on each shard.
    for key in (S1[5], S0[3]):
        label = f"transaction prepared key={key}"
        try:
            async with conn.transaction():
                stmt = await conn.prepare("SELECT name FROM customers WHERE id = $1")
                emit(f"{label} select", _plain(await stmt.fetchrow(key)))
                emit(f"{label} update", await conn.execute(
                    "UPDATE customers SET name = name || '+' WHERE id = $1", key))
        except asyncpg.PostgresError as e:
            error(label, e)
        await step(f"{label} after", lambda k=key: _rows(conn.fetch(
            "SELECT name FROM customers WHERE id = $1", k)))


def _plain(r):
    return None if r is None else [text(v) for v in r]


async def executemany(conn):
    # INSERTs whose keys all live on one shard.
    order_id = 3100100
    for shard, keys in (("s1", S1[6:8]), ("s0", S0[4:6])):
        label = f"executemany shard={shard}"
        args = [(order_id + i, keys[i % 2], Decimal(f"{i}.50")) for i in range(50)]
        try:
            await conn.executemany(
                "INSERT INTO orders (id, customer_id, amount) VALUES ($1, $2, $3)", args)
            emit(label, "ok")
        except asyncpg.PostgresError as e:
            error(label, e)
        await step(f"{label} read back", lambda k=keys, first=order_id: _row(conn.fetchrow(
            "SELECT count(*), sum(amount) FROM orders WHERE customer_id IN ($1, $2) AND id >= $3",
            k[0], k[1], first)))
        order_id += 100


async def cursors(conn):
    # Cursors (portals fetched a few rows at a time) inside a transaction, on each shard.
    for key in (S1[8], S0[6]):
        label = f"cursor key={key}"
        try:
            async with conn.transaction():
                got = []
                async for r in conn.cursor(ORDERS_OF, key, prefetch=2):
                    got.append([text(v) for v in r])
                emit(f"{label} iterate prefetch=2", got)
                cur = await conn.cursor(ORDERS_OF, key)
                emit(f"{label} fetch(2)", rows(await cur.fetch(2)))
                emit(f"{label} forward(1)", await cur.forward(1))
                emit(f"{label} fetchrow", _plain(await cur.fetchrow()))
                emit(f"{label} fetch(10)", rows(await cur.fetch(10)))
        except asyncpg.PostgresError as e:
            error(label, e)


async def main():
    if len(sys.argv) != 3:
        sys.exit("usage: asyncpg_matrix.py postgres://USER:PASSWORD@HOST:PORT/DB RESULT_FILE")
    url, result_file = sys.argv[1], sys.argv[2]
    # asyncpg's statement cache is left on, as applications use it.
    conn = await asyncpg.connect(url)
    try:
        await prepared(conn)
        await fetch_keys(conn)
        await transactions(conn)
        await executemany(conn)
        await cursors(conn)
    finally:
        await conn.close()
    with open(result_file, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
