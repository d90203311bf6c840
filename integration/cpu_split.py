#!/usr/bin/env python3
"""Where a pgbench transaction's CPU goes, proxy by proxy: the whole machine split by process.

Starts PostgreSQL 15 (scale 10), PgBouncer and shardgate as bench.py does, then runs one
pgbench select-only cell against the two proxies side by side for a number of rounds (in turn
first and last) and prints, per round and as medians, CPU microseconds per transaction of
the proxy, of pgbench and of every `postgres` process together (utime + stime from /proc),
and the machine's busy and idle time per transaction (/proc/stat). It answers whether a
throughput difference between the proxies is the proxies' own cost or the machine's.

    cargo build --release -p shardgate
    python3 integration/cpu_split.py --mode simple --clients 16 --duration 10 --rounds 12
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
FIELDS = ("proxy", "pgbench", "postgres", "busy", "idle")


def machine_ticks() -> tuple[int, int]:
    """(all, idle) clock ticks of the machine so far: the first line of /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return sum(values), values[3] + values[4]


def postgres_seconds() -> float:
    """User + system CPU time so far of every process named `postgres`."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.index("(") + 1:stat.rindex(")")] == "postgres":
            fields = stat.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def one_run(target: bench.Target, mode: str, clients: int, duration: int) -> dict[str, float]:
    cmd = ["pgbench", "-n", "-S", "-M", mode, "-c", str(clients), "-T", str(duration),
           "-h", "127.0.0.1", "-p", str(target.port), "-U", bench.PG_USER, bench.DBNAME]
    proxy0, pg0, (all0, idle0), own0 = (bench.cpu_seconds(target.proc.pid), postgres_seconds(),
                                        machine_ticks(), os.times())
    out = subprocess.run(cmd, capture_output=True, text=True, env=bench.clean_env(), check=True)
    proxy1, pg1, (all1, idle1), own1 = (bench.cpu_seconds(target.proc.pid), postgres_seconds(),
                                        machine_ticks(), os.times())
    done = bench.PROCESSED_RE.search(out.stdout)
    tps = bench.TPS_RE.search(out.stdout)
    if not done or not tps:
        raise RuntimeError(f"pgbench printed no result:\n{out.stdout}{out.stderr}")
    per_tx = 1e6 / int(done.group(1))
    pgbench = (own1.children_user + own1.children_system) - (own0.children_user + own0.children_system)
    idle = (idle1 - idle0) / TICKS
    return {
        "tps": float(tps.group(1)),
        "proxy": (proxy1 - proxy0) * per_tx,
        "pgbench": pgbench * per_tx,
        "postgres": (pg1 - pg0) * per_tx,
        "busy": ((all1 - all0) / TICKS - idle) * per_tx,
        "idle": idle * per_tx,
    }


def show(name: str, r: dict[str, float]) -> str:
    return f"{name:<10} tps {r['tps']:>8.0f}  " + "  ".join(f"{k} {r[k]:5.1f}" for k in FIELDS)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="simple", choices=("simple", "extended"))
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--shardgate", default="target/release/shardgate")
    args = p.parse_args()
    repo = Path(__file__).resolve().parent.parent
    sg_bin = Path(args.shardgate) if Path(args.shardgate).is_absolute() else repo / args.shardgate
    pgb_bin = bench.find_pgbouncer()
    if not sg_bin.exists() or pgb_bin is None:
        print(f"needs {sg_bin} (cargo build --release -p shardgate) and pgbouncer", file=sys.stderr)
        return 2

    cleanup = bench.Cleanup()
    root = Path(tempfile.mkdtemp(prefix="shardgate-cpu-split-"))
    cleanup.push(f"remove {root}", lambda: shutil.rmtree(root, ignore_errors=True))
    bench.chown_to_pg(root)
    pg_port, pgb_port, sg_port = bench.free_ports(3)
    try:
        cluster = bench.Cluster(root, pg_port)
        cluster.init()
        cleanup.push("stop PostgreSQL", cluster.stop)
        cluster.start()
        cluster.prepare(10)
        pgb = bench.start_pgbouncer(pgb_bin, root, pgb_port, pg_port, 20, 2000)
        cleanup.push("stop pgbouncer", lambda: bench.stop_process(pgb.proc))
        sg = bench.start_shardgate(sg_bin, root, sg_port, pg_port, 20, 5000)
        cleanup.push("stop shardgate", lambda: bench.stop_process(sg.proc))
        targets = {"pgbouncer": pgb, "shardgate": sg}
        for t in targets.values():
            bench.wait_ready(t)
            one_run(t, args.mode, args.clients, 3)  # warm-up, not reported
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for k in range(args.rounds):
            order = list(targets) if k % 2 == 0 else list(targets)[::-1]
            for name in order:
                r = one_run(targets[name], args.mode, args.clients, args.duration)
                runs[name].append(r)
                print(f"[{k + 1}/{args.rounds}] " + show(name, r), flush=True)
        ratios = [s["tps"] / b["tps"] for s, b in zip(runs["shardgate"], runs["pgbouncer"])]
        print(f"\nselect-only {args.mode}, {args.clients} clients, {args.rounds} rounds of "
              f"{args.duration} s; CPU µs per transaction, medians")
        for name, rs in runs.items():
            print(show(name, {k: statistics.median(r[k] for r in rs) for k in ("tps", *FIELDS)}))
        print(f"sg/pgbouncer by round: {' '.join(f'{x:.2f}' for x in ratios)}; "
              f"median {statistics.median(ratios):.2f}, mean {statistics.mean(ratios):.2f}")
    finally:
        cleanup.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
