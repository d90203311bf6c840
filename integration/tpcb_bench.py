#!/usr/bin/env python3
"""TPC-B over three shards (two-phase commit) next to TPC-B through one shard.

What it measures
----------------
pgbench's built-in TPC-B script, unchanged, through shardgate in transaction mode on the
same pgbench schema placed two ways, both served by one throw-away PostgreSQL 15 cluster:

    3 shards   pgbench_accounts and pgbench_history by aid, pgbench_tellers by tid,
               pgbench_branches by bid, each a hash map over three databases: most
               transactions write on two or three shards and commit by two-phase commit
               (PREPARE TRANSACTION on all but one, the decision row and COMMIT on that
               one, COMMIT PREPARED on the rest; see docs/transactions.md)
    1 shard    the same maps over one database: every transaction commits plainly

and, for reference, the same script straight on one PostgreSQL database (`direct`).
`pgbench -i -s SCALE` runs through each proxy (through the proxy, so -i itself is a
transaction over every shard), then each workload (-M simple, -M prepared) runs
--duration seconds per target with --clients clients, the targets alternating, --rounds
times. Reported: tps and pgbench's average latency; the cost of two-phase commit per
transaction is the latency difference between 3 shards and 1 shard at the same load.

Afterwards the script checks TPC-B's invariants on the 3-shard placement, read straight
from the databases: sum(abalance) = sum(tbalance) = sum(bbalance) = sum(delta).

The servers, the proxy and pgbench share the machine's cores; the figures compare the
placements with one another, they are not capacity figures.

How to run
----------
    cargo build --release -p shardgate
    python3 integration/tpcb_bench.py                       # scale 5, 16 clients, 30 s
    python3 integration/tpcb_bench.py --duration 10 --rounds 1 --markdown /tmp/tpcb.md

Requires Python 3.11 (standard library only), PostgreSQL 15 binaries in
/usr/lib/postgresql/15/bin, and pgbench/psql on PATH. Uses integration/bench.py's helpers.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
from bench import PASSWORD, PG_USER, Cleanup, Cluster, Target, log  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAT_RE = re.compile(r"^latency average = ([0-9.]+) ms", re.M)


def map_yaml(name: str, tables: list[tuple[str, str]], shards: int) -> str:
    parts = 6
    assign = ", ".join(f"s{i}: [{', '.join(str(p) for p in range(parts) if p % shards == i)}]"
                       for i in range(shards))
    listed = ", ".join(f"{{ table: {t}, column: {c} }}" for t, c in tables)
    return (f"name: {name}\ntype: hash\nkey_type: integer\npartitions: {parts}\n"
            f"assign: {{ {assign} }}\ntables: [{listed}]\n")


def start_proxy(binary: Path, root: Path, name: str, port: int, pg_port: int,
                databases: list[str], pool: int) -> Target:
    d = root / name
    d.mkdir()
    n = len(databases)
    (d / "aid.yaml").write_text(map_yaml("aid", [("pgbench_accounts", "aid"),
                                                 ("pgbench_history", "aid")], n))
    (d / "tid.yaml").write_text(map_yaml("tid", [("pgbench_tellers", "tid")], n))
    (d / "bid.yaml").write_text(map_yaml("bid", [("pgbench_branches", "bid")], n))
    shards = "".join(
        f'      s{i}: {{ primary: "postgres://{PG_USER}:{PASSWORD}@127.0.0.1:{pg_port}/{db}" }}\n'
        for i, db in enumerate(databases))
    config = d / "shardgate.yaml"
    config.write_text(f"""\
listen: 127.0.0.1:{port}
pool: {{ mode: transaction, size: {pool}, min_idle: 0, checkout_timeout_ms: 10000 }}
users:
  - {{ name: {PG_USER}, password: {PASSWORD}, auth: scram-sha-256 }}
databases:
  bench:
    shard_maps: [aid.yaml, tid.yaml, bid.yaml]
    shards:
{shards}""")
    out = d / "shardgate.log"
    with out.open("w") as o:
        proc = subprocess.Popen([str(binary), "run", "--config", str(config)], stdout=o,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=d,
                                start_new_session=True)
    return Target(name, port, proc, log=out)


def pgbench(port: int, db: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["pgbench", *args, "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, db],
                          capture_output=True, text=True, timeout=timeout, env=bench.clean_env(),
                          stdin=subprocess.DEVNULL)


def psql(port: int, db: str, sql: str) -> str:
    return bench.run(["psql", f"host=127.0.0.1 port={port} user={PG_USER} dbname={db}", "-X",
                      "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql], timeout=300,
                     env=bench.clean_env()).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=5)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--binary", type=Path, default=ROOT / "target/release/shardgate")
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    if not args.binary.exists():
        print(f"{args.binary} is missing: cargo build --release -p shardgate", file=sys.stderr)
        return 2
    cleanup = Cleanup()
    try:
        return measure(args, cleanup)
    finally:
        cleanup.run()


def measure(args: argparse.Namespace, cleanup: Cleanup) -> int:
    with tempfile.TemporaryDirectory(prefix="sg-tpcb-") as tmp:
        root = Path(tmp)
        bench.chown_to_pg(root)
        pg_port, p3, p1 = bench.free_ports(3)
        cluster = Cluster(root, pg_port)
        cluster.init()
        with (cluster.data / "postgresql.conf").open("a") as f:
            f.write("max_prepared_transactions = 100\n")
        cleanup.push("stop PostgreSQL", cluster.stop)
        cluster.start()
        three = ["tpcb_s0", "tpcb_s1", "tpcb_s2"]
        for db in [*three, "tpcb_one", "tpcb_direct"]:
            psql(pg_port, "postgres", f"CREATE DATABASE {db}")
        pool = args.clients + 8
        proxies = [start_proxy(args.binary, root, "3 shards", p3, pg_port, three, pool),
                   start_proxy(args.binary, root, "1 shard", p1, pg_port, ["tpcb_one"], pool)]
        for t in proxies:
            cleanup.push(f"stop {t.name}", lambda t=t: bench.stop_process(t.proc))
            bench.wait_ready(t)
        targets = [(t.name, t.port, "bench") for t in proxies] + [("direct", pg_port, "tpcb_direct")]
        for name, port, db in targets:
            log(f"pgbench -i -s {args.scale} through {name} ...")
            started = time.monotonic()
            p = pgbench(port, db, ["-i", "-q", "-s", str(args.scale)], timeout=1800)
            if p.returncode != 0:
                print(f"pgbench -i through {name} failed:\n{p.stderr}", file=sys.stderr)
                return 1
            log(f"  {time.monotonic() - started:.1f} s")
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for mode in ["simple", "prepared"]:
                for name, port, db in targets:
                    p = pgbench(port, db, ["-n", "-c", str(args.clients), "-j", "2", "-T",
                                           str(args.duration), "-M", mode],
                                timeout=args.duration + 120)
                    r = bench.parse_pgbench(p.returncode, p.stdout, p.stderr)
                    lat = LAT_RE.search(p.stdout)
                    if r.status != "ok" or lat is None:
                        print(f"{name} -M {mode}: {r.detail}\n{p.stdout}\n{p.stderr}", file=sys.stderr)
                        return 1
                    log(f"{name:9} -M {mode:8} {r.tps:8.1f} tps  {float(lat.group(1)):7.2f} ms")
                    results.setdefault((name, mode), []).append((r.tps, float(lat.group(1))))
        sums = [sum(int(psql(pg_port, db, f"SELECT coalesce(sum({c}), 0) FROM {t}")) for db in three)
                for t, c in [("pgbench_accounts", "abalance"), ("pgbench_tellers", "tbalance"),
                             ("pgbench_branches", "bbalance"), ("pgbench_history", "delta")]]
        prepared = sum(int(psql(pg_port, db, "SELECT count(*) FROM pg_prepared_xacts")) for db in three)
        ok = len(set(sums)) == 1 and prepared == 0
        log(f"invariants on 3 shards: {sums} prepared left {prepared}: {'ok' if ok else 'BROKEN'}")

    def best(name: str, mode: str) -> tuple[float, float]:
        runs = results[(name, mode)]
        return max(r[0] for r in runs), min(r[1] for r in runs)

    headers = ["workload", "direct tps", "1 shard tps", "3 shards tps", "3 / 1",
               "1 shard latency", "3 shards latency", "two-phase cost per transaction"]
    rows = []
    for mode in ["simple", "prepared"]:
        d, _ = best("direct", mode)
        o_tps, o_lat = best("1 shard", mode)
        t_tps, t_lat = best("3 shards", mode)
        rows.append([f"TPC-B -M {mode}, {args.clients} clients", f"{d:.0f}", f"{o_tps:.0f}",
                     f"{t_tps:.0f}", f"{t_tps / o_tps:.2f}", f"{o_lat:.2f} ms", f"{t_lat:.2f} ms",
                     f"{t_lat - o_lat:+.2f} ms"])
    print(bench.format_text(headers, rows))
    if args.markdown:
        args.markdown.write_text(bench.format_markdown(headers, rows) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
