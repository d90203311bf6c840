#!/usr/bin/env python3
"""User-space instructions per transaction of PgBouncer and shardgate, counted by callgrind.

Why
---
CPU time per transaction moves ±10% between runs on a shared 2-core machine; the number
of instructions a proxy executes per transaction does not. This script counts them with
valgrind's callgrind, the same way for both proxies, so that a change to the message path
can be judged by one exact number before it is timed (`bench.py`).

How
---
For each proxy, two runs under callgrind, each on a fresh PostgreSQL cluster and a fresh
proxy process: pgbench with `--short` and then `--long` transactions per client. Start-up,
logins and server connections are the same in both runs, so the difference of the two
totals divided by the difference of the transactions is what one transaction costs.
A `--dump` file of the long run (`callgrind_annotate FILE`) says where.

    cargo build --release -p shardgate
    python3 integration/instructions.py                       # select-only, extended
    python3 integration/instructions.py --mode simple --only shardgate

Four clients by default; `SG_INSTR_CLIENTS=16` runs more (under callgrind the proxy is the
bottleneck, so it waits less per transaction than it would at full speed).

Requires valgrind, pgbench and PostgreSQL 15, as `bench.py` does (whose helpers it uses).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

CLIENTS = int(os.environ.get("SG_INSTR_CLIENTS", "4"))


def total_instructions(out: Path) -> int:
    for line in out.read_text().splitlines():
        if line.startswith("totals:") or line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"{out}: no totals")


def run(proxy: str, binary: str, mode: str, per_client: int, out: Path) -> int:
    """Total instructions of the proxy process over a run of `per_client` transactions."""
    root = Path(tempfile.mkdtemp(prefix="sg-instr-"))
    bench.chown_to_pg(root)
    os.chmod(root, 0o755)
    pg_port, port = bench.free_ports(2)
    cluster = bench.Cluster(root, pg_port)
    target = None
    try:
        cluster.init()
        cluster.start()
        cluster.prepare(1)
        if out.exists():
            out.unlink()
        wrapper = root / "callgrind.sh"
        wrapper.write_text("#!/bin/sh\n"
                           f"exec valgrind --tool=callgrind --callgrind-out-file={out} "
                           f"{os.environ.get('SG_CALLGRIND_ARGS', '')} "
                           f"{binary} \"$@\"\n")
        wrapper.chmod(0o755)
        if proxy == "pgbouncer":
            target = bench.start_pgbouncer(str(wrapper), root, port, pg_port, 20, 100)
        else:
            target = bench.start_shardgate(wrapper, root, port, pg_port, 20, 100)
        bench.wait_ready(target, limit=60)
        args = ["-S", "-M", mode] if mode != "tpcb" else ["-M", "simple"]
        cmd = ["pgbench", "-n", "-t", str(per_client), *args, "-c", str(CLIENTS), "-j", "1",
               "-h", "127.0.0.1", "-p", str(port), "-U", bench.PG_USER, bench.DBNAME]
        p = subprocess.run(cmd, capture_output=True, text=True, env=bench.clean_env(),
                           timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"pgbench failed: {p.stderr[-500:]}")
    finally:
        if target is not None:
            bench.stop_process(target.proc)
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    for _ in range(50):
        if out.exists() and out.stat().st_size > 0:
            break
        time.sleep(0.1)
    return total_instructions(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", default="extended", choices=["simple", "extended", "tpcb"])
    ap.add_argument("--only", default="pgbouncer,shardgate")
    ap.add_argument("--short", type=int, default=250, help="transactions per client, short run")
    ap.add_argument("--long", type=int, default=2750, help="transactions per client, long run")
    ap.add_argument("--binary", default=str(Path(__file__).resolve().parent.parent
                                            / "target/release/shardgate"))
    ap.add_argument("--dump", default="/tmp", help="where the long runs' callgrind files go")
    a = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    for proxy in a.only.split(","):
        binary = bench.find_pgbouncer() if proxy == "pgbouncer" else a.binary
        if not binary:
            print(f"{proxy}: not found", file=sys.stderr)
            continue
        short = run(proxy, binary, a.mode, a.short, Path(a.dump) / f"callgrind-{proxy}-short.out")
        long_out = Path(a.dump) / f"callgrind-{proxy}-{a.mode}.out"
        long = run(proxy, binary, a.mode, a.long, long_out)
        per_tx = (long - short) / (CLIENTS * (a.long - a.short))
        print(f"{proxy:10s} {a.mode:9s} {per_tx:8.0f} instructions per transaction "
              f"(callgrind: {long_out})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
