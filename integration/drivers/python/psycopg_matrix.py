"""psycopg 3's part of the driver matrix (tests/tests/drivers.rs).

A fixed script of statements run against the database named on the command line, writing one
line per operation to the result file, so that the run through shardgate can be compared
with the run against one plain PostgreSQL holding the same rows.

Usage: python3 psycopg_matrix.py postgres://USER:PASSWORD@HOST:PORT/DB RESULT_FILE

Keys (customers.id = orders.customer_id) of this program, 4 hash partitions, s0 owning
remainders 0 and 2, s1 owning 1 and 3 (the test checks the placement):
  s0: 2000 2001 2002 2003 2004 2007 2008 2009 2013 2016 2017 2019
  s1: 2005 2006 2010 2011 2012 2014 2015 2018
Rows it inserts have order ids from 2100000 up.
With DRIVERS_TRACE set, libpq traces every protocol message to stderr.
"""

import json
import os
import sys

import psycopg
from psycopg import pq

S0 = [2000, 2001, 2002, 2003, 2004, 2007, 2008, 2009, 2013, 2016, 2017, 2019]
S1 = [2005, 2006, 2010, 2011, 2012, 2014, 2015, 2018]

ORDERS_OF = "SELECT id, amount FROM orders WHERE customer_id = %s ORDER BY id"

out = []


def text(v):
    return None if v is None else str(v)


def rows(rs):
    return [[text(v) for v in r] for r in rs]


def connect(url, autocommit=False):
    conn = psycopg.connect(url, autocommit=autocommit)
    if os.environ.get("DRIVERS_TRACE"):
        conn.pgconn.trace(sys.stderr.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
    return conn


def one(r):
    return None if r is None else [text(v) for v in r]


def emit(label, result):
    out.append(f"{label}: {json.dumps(result, separators=(',', ':'))}")


def step(label, fn):
    """Runs one operation; its result, or `ERROR <sqlstate>`, is the operation's line."""
    try:
        emit(label, fn())
        return True
    except psycopg.Error as e:
        out.append(f"{label}: ERROR {e.sqlstate}")
        print(f"{label}: ERROR {e.sqlstate} {e}", flush=True)
        return False


def prepared(conn):
    # Server-side prepared statements: prepare=True prepares on first use and reuses after.
    for rnd in range(1, 4):
        for key in (S0[0], S1[0]):
            step(f"prepared round={rnd} key={key}",
                 lambda k=key: rows(conn.execute(ORDERS_OF, (k,), prepare=True).fetchall()))
    # The same text with another key of each shard, prepared already.
    for key in (S0[1], S1[1]):
        step(f"prepared other key={key}",
             lambda k=key: rows(conn.execute(ORDERS_OF, (k,), prepare=True).fetchall()))


def binary(conn):
    # Binary results; %b also sends the key in binary (psycopg picks int2/int4/int8 by value).
    for key in (S0[2], S1[2]):
        for fmt in ("%s", "%b"):
            def run(k=key, f=fmt):
                cur = conn.cursor(binary=True)
                cur.execute(
                    f"SELECT c.id, c.name, c.country, o.id, o.amount FROM customers c "
                    f"JOIN orders o ON o.customer_id = c.id "
                    f"WHERE c.id = {f} AND o.customer_id = {f} ORDER BY o.id",
                    (k, k))
                return rows(cur.fetchall())
            step(f"binary params={fmt} key={key}", run)
    # Binary results of a prepared statement, several times.
    for rnd in range(1, 3):
        for key in (S0[2], S1[2]):
            def run(k=key):
                cur = conn.cursor(binary=True)
                cur.execute("SELECT count(*), sum(amount), min(amount) FROM orders WHERE customer_id = %b",
                            (k,), prepare=True)
                return rows(cur.fetchall())
            step(f"binary prepared round={rnd} key={key}", run)


def named_cursor(url):
    # A server-side cursor (DECLARE ... CURSOR FOR) inside a transaction, fetched 2 rows at a
    # time, then an UPDATE of the same key in that transaction.
    with connect(url, autocommit=True) as conn:
        for key in (S1[3], S0[3]):
            label = f"named cursor key={key}"
            try:
                with conn.transaction():
                    with conn.cursor(name=f"orders_{key}") as cur:
                        cur.itersize = 2
                        cur.execute(ORDERS_OF, (key,))
                        emit(f"{label} iterate", rows(cur))
                    with conn.cursor(name=f"again_{key}") as cur:
                        cur.execute(ORDERS_OF, (key,))
                        emit(f"{label} fetchmany(2)", rows(cur.fetchmany(2)))
                        emit(f"{label} fetchone", one(cur.fetchone()))
                        emit(f"{label} fetchall", rows(cur.fetchall()))
                    cur = conn.execute("UPDATE orders SET amount = amount * 2 WHERE customer_id = %s", (key,))
                    emit(f"{label} update", cur.rowcount)
            except psycopg.Error as e:
                out.append(f"{label}: ERROR {e.sqlstate}")
                print(f"{label}: ERROR {e.sqlstate} {e}", flush=True)
            step(f"{label} after", lambda k=key: rows(conn.execute(ORDERS_OF, (k,)).fetchall()))


def implicit_transaction(url):
    # autocommit off: psycopg starts the transaction itself before the first statement.
    with connect(url) as conn:
        for key in (S1[4], S0[4]):
            label = f"implicit transaction key={key}"
            ok = step(f"{label} select", lambda k=key: rows(conn.execute(ORDERS_OF, (k,)).fetchall()))
            ok = ok and step(f"{label} update", lambda k=key: conn.execute(
                "UPDATE customers SET name = name || '-tx' WHERE id = %s", (k,)).rowcount)
            if ok:
                step(f"{label} commit", lambda: conn.commit() or "ok")
            else:
                conn.rollback()
            step(f"{label} after", lambda k=key: rows(conn.execute(
                "SELECT name FROM customers WHERE id = %s", (k,)).fetchall()))
            conn.commit()


def executemany(conn):
    # 50 INSERTs whose keys all live on one shard; in autocommit, and inside a transaction.
    order_id = 2100000
    for shard, keys in (("s1", S1[5:7]), ("s0", S0[5:7])):
        for in_tx in (False, True):
            label = f"executemany shard={shard} transaction={in_tx}"
            params = [(order_id + i, keys[i % 2], f"{i}.50") for i in range(50)]

            def run(p=params, t=in_tx):
                cur = conn.cursor()
                if t:
                    with conn.transaction():
                        cur.executemany("INSERT INTO orders (id, customer_id, amount) VALUES (%s, %s, %s)", p)
                else:
                    cur.executemany("INSERT INTO orders (id, customer_id, amount) VALUES (%s, %s, %s)", p)
                return cur.rowcount
            step(label, run)
            step(f"{label} read back", lambda k=keys, first=order_id: rows(conn.execute(
                "SELECT count(*), sum(amount) FROM orders WHERE customer_id IN (%s, %s) AND id >= %s",
                (k[0], k[1], first)).fetchall()))
            order_id += 100


def pipeline(conn):
    # Pipeline mode: several single-shard statements sent without waiting.
    key = S1[7]
    label = f"pipeline one shard key={key}"
    try:
        with conn.pipeline():
            c1 = conn.execute(ORDERS_OF, (key,))
            c2 = conn.execute("UPDATE orders SET amount = amount + 0.01 WHERE customer_id = %s", (key,))
            c3 = conn.execute(ORDERS_OF, (key,))
            c4 = conn.execute("SELECT name FROM customers WHERE id = %s", (key,))
        emit(f"{label} select", rows(c1.fetchall()))
        emit(f"{label} update", c2.rowcount)
        emit(f"{label} select again", rows(c3.fetchall()))
        emit(f"{label} customer", rows(c4.fetchall()))
    except psycopg.Error as e:
        out.append(f"{label}: ERROR {e.sqlstate}")
        print(f"{label}: ERROR {e.sqlstate} {e}", flush=True)

    # Statements of both shards, each shard's part ended by a sync of its own.
    a, b = S0[7], S1[7]
    label = f"pipeline two shards keys={a},{b}"
    try:
        with conn.pipeline() as p:
            c1 = conn.execute(ORDERS_OF, (a,))
            c2 = conn.execute("UPDATE orders SET amount = amount + 0.02 WHERE customer_id = %s", (a,))
            p.sync()
            c3 = conn.execute(ORDERS_OF, (b,))
            p.sync()
            c4 = conn.execute(ORDERS_OF, (a,))
        emit(f"{label} select s0", rows(c1.fetchall()))
        emit(f"{label} update s0", c2.rowcount)
        emit(f"{label} select s1", rows(c3.fetchall()))
        emit(f"{label} select s0 again", rows(c4.fetchall()))
    except psycopg.Error as e:
        out.append(f"{label}: ERROR {e.sqlstate}")
        print(f"{label}: ERROR {e.sqlstate} {e}", flush=True)


def in_list(conn):
    # An IN list over both shards: no ORDER BY, so the rows are sorted here.
    step("in-list both shards", lambda: sorted(rows(conn.execute(
        "SELECT id, customer_id, amount FROM orders WHERE customer_id IN (%s, %s) AND id < 1000000",
        (S0[8], S1[0])).fetchall())))


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: psycopg_matrix.py postgres://USER:PASSWORD@HOST:PORT/DB RESULT_FILE")
    url, result_file = sys.argv[1], sys.argv[2]
    with connect(url, autocommit=True) as conn:
        prepared(conn)
        binary(conn)
    named_cursor(url)
    implicit_transaction(url)
    with connect(url, autocommit=True) as conn:
        executemany(conn)
    with connect(url, autocommit=True) as conn:
        pipeline(conn)
    with connect(url, autocommit=True) as conn:
        in_list(conn)
    with open(result_file, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
