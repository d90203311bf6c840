#!/usr/bin/env python3
"""Memory with ever new prepared statements: the proxy's and the backends' RSS.

Clients one after the other each prepare N distinct statements (Parse of a named statement,
Bind, Execute, Sync, pipelined in chunks), as ORMs and drivers' automatic preparation do over
days, and never close them. After each client, and after all have left, the script prints:

* the proxy's RSS (VmRSS of the shardgate process);
* the RSS of each PostgreSQL backend serving the proxy (from pg_stat_activity and /proc);
* how many statements the server connection the client last used holds
  (pg_prepared_statements, counted through the proxy on that connection).

Every statement's answer is checked (SELECT i + 1 must return i + 1), also after the client
ran them all a second time, when most had been evicted from the server connections.

How to run (as root or as a user who can run PostgreSQL; uses integration/bench.py's cluster):

    cargo build --release -p shardgate
    python3 integration/prepared_memory.py --statements 100000 --clients 1
    python3 integration/prepared_memory.py --statements 20000 --clients 3
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def msg(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!i", len(payload) + 4) + payload


def parse(name: str, sql: str) -> bytes:
    return msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))


def bind(stmt: str, value: str) -> bytes:
    v = value.encode()
    return msg(b"B", b"\0" + stmt.encode() + b"\0" + struct.pack("!hh", 0, 1)
               + struct.pack("!i", len(v)) + v + struct.pack("!h", 0))


EXECUTE = msg(b"E", b"\0" + struct.pack("!i", 0))
SYNC = msg(b"S", b"")


def run_statements(c: bench.PgClient, n: int, prepare: bool, chunk: int = 500) -> None:
    """Runs statements 0..n (preparing them first when `prepare`), checking every answer."""
    for start in range(0, n, chunk):
        ids = range(start, min(n, start + chunk))
        out = bytearray()
        for i in ids:
            if prepare:
                out += parse(f"s{i}", f"SELECT {i} + $1::int")
            out += bind(f"s{i}", "1") + EXECUTE + SYNC
        c.sock.sendall(out)
        got = []
        ready = 0
        while ready < len(ids):
            kind, body = c.read_message()
            if kind == b"E":
                raise RuntimeError(c.error_text(body))
            if kind == b"D":
                (length,) = struct.unpack("!i", body[2:6])
                got.append(int(body[6:6 + length]))
            elif kind == b"Z":
                ready += 1
        if got != [i + 1 for i in ids]:
            raise RuntimeError(f"wrong answers in statements {ids.start}..{ids.stop}")


def simple_value(c: bench.PgClient, sql: str) -> str:
    c.send(b"Q", sql.encode() + b"\0")
    value = ""
    while True:
        kind, body = c.read_message()
        if kind == b"E":
            raise RuntimeError(c.error_text(body))
        if kind == b"D":
            (length,) = struct.unpack("!i", body[2:6])
            value = body[6:6 + length].decode()
        elif kind == b"Z":
            return value


def backend_rss(cluster: bench.Cluster) -> list[int]:
    out = bench.run(["psql", f"host=127.0.0.1 port={cluster.port} user={bench.PG_USER} dbname=postgres",
                     "-XAtc", f"SELECT pid FROM pg_stat_activity WHERE datname = '{bench.DBNAME}' "
                              "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"],
                    timeout=30, env=bench.clean_env())
    pids = [int(p) for p in out.stdout.split()]
    return sorted((bench.rss_kb(p) for p in pids), reverse=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--statements", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--max-prepared", type=int, default=200)
    ap.add_argument("--binary", type=Path, default=ROOT / "target/release/shardgate")
    args = ap.parse_args()

    cleanup = bench.Cleanup()
    try:
        root = Path(tempfile.mkdtemp(prefix="sg-prepmem-"))
        bench.chown_to_pg(root)
        pg_port, port = bench.free_ports(2)
        cluster = bench.Cluster(root, pg_port)
        cluster.init()
        cluster.start()
        cleanup.push("PostgreSQL", cluster.stop)
        bench.run(["psql", f"host=127.0.0.1 port={pg_port} user={bench.PG_USER} dbname=postgres", "-X",
                   "-c", f"create database {bench.DBNAME}"], timeout=60, env=bench.clean_env())
        d = root / "shardgate"
        d.mkdir()
        config = d / "shardgate.yaml"
        config.write_text(f"""\
listen: 127.0.0.1:{port}
pool: {{ mode: transaction, size: 4, max_prepared_statements: {args.max_prepared} }}
users:
  - {{ name: {bench.PG_USER}, password: {bench.PASSWORD}, auth: scram-sha-256 }}
databases:
  {bench.DBNAME}:
    shards:
      s0: {{ primary: "postgres://{bench.PG_USER}:{bench.PASSWORD}@127.0.0.1:{pg_port}/{bench.DBNAME}" }}
""")
        import subprocess
        with (d / "shardgate.log").open("w") as o:
            proc = subprocess.Popen([str(args.binary), "run", "--config", str(config)], stdout=o,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=d,
                                    start_new_session=True)
        cleanup.push("shardgate", lambda: bench.stop_process(proc))
        time.sleep(1)
        print(f"proxy RSS idle: {bench.rss_kb(proc.pid) / 1024:.1f} MiB")
        for k in range(args.clients):
            c = bench.PgClient("127.0.0.1", port, 60)
            c.login(bench.PG_USER, bench.PASSWORD, bench.DBNAME)
            t = time.monotonic()
            run_statements(c, args.statements, prepare=True)
            first = time.monotonic() - t
            held = simple_value(c, "SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql")
            t = time.monotonic()
            run_statements(c, args.statements, prepare=False)
            again = time.monotonic() - t
            print(f"client {k + 1}: {args.statements} statements prepared and run in {first:.1f} s, "
                  f"run again (re-prepared after eviction) in {again:.1f} s, all answers right; "
                  f"its server connection holds {held} statements; "
                  f"proxy RSS {bench.rss_kb(proc.pid) / 1024:.1f} MiB; "
                  f"backends RSS (MiB) {[round(r / 1024, 1) for r in backend_rss(cluster)]}")
            c.close()
            time.sleep(0.5)
        time.sleep(2)
        print(f"after every client left: proxy RSS {bench.rss_kb(proc.pid) / 1024:.1f} MiB; "
              f"backends RSS (MiB) {[round(r / 1024, 1) for r in backend_rss(cluster)]}")
    finally:
        cleanup.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
