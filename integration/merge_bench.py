#!/usr/bin/env python3
"""Merges across shards: 3 shards through shardgate against one PostgreSQL holding all rows.

What it measures
----------------
Four reads without a shard key, each answered by the proxy by running a rewritten query on
every shard and merging the shards' rows (see docs/merge.md), against the same statement run
directly on one PostgreSQL database that holds all the rows:

    top100   SELECT id, x FROM t ORDER BY x LIMIT 100             (MergeSort + Limit)
    groupby  SELECT g, count(*), avg(x::numeric) FROM t GROUP BY g (Aggregate, 1,000 groups)
    count    SELECT count(*) FROM t                                (Aggregate, no groups)
    all      SELECT * FROM t ORDER BY id                           (MergeSort of every row)

The table is `t(id bigint primary key, g int, x double precision, pad text)` with ids
1..3N (N rows per shard, 1,000,000 by default): g = id % 1000 (1,000 groups), x derived from
hashint8(id) (deterministic, in [-1, 1)), pad = md5(id::text). Each shard generates the
whole id range and keeps the ids the proxy's hash map sends to it, filtered with
PostgreSQL's `satisfies_hash_partition` for the map's modulus and the shard's remainders
(the proxy hashes keys as PostgreSQL's hash partitioning does); the single database holds
them all. Table and primary key are built in one transaction (wal_level minimal: no WAL),
then VACUUM ANALYZE. Before measuring, the script checks the placement (sample ids looked up
through the proxy by key must each come back) and that the proxy's answer to each query is
the single database's (queries 1-3: the same text, groups compared as sets; query 4: the
same SHA-256 of psql's output).

Each query runs --runs times (--runs-all for query 4) per target, the targets alternating
run by run, after one unrecorded warm-up run each, with `psql -X -A -t` (simple protocol,
FETCH_COUNT unset: psql reads the whole result into memory and then prints it to
/dev/null). The time reported is psql's `\\timing`: from sending the query to the whole
result received, before printing; the connection set-up is not included.

During every proxy run a thread samples the proxy's VmRSS (/proc/<pid>/status) every 20 ms;
the kernel's peak (VmHWM, reset through /proc/<pid>/clear_refs before each run when
allowed) is read after the run as a check on the sampling. Reported per query: the RSS
before the query's first run (idle; the first run is the warm-up and check), the highest
peak of any run above the RSS just before that run, the highest peak itself, and the
proxy's CPU time per run (utime + stime from /proc/<pid>/stat, 10 ms ticks). Last, a slow
reader (a raw connection reading 16 KiB every 10 ms) fetches the full ORDER BY id for
--slow-seconds while the proxy's RSS is sampled: the proxy must hold the shards back (TCP
flow control) instead of buffering their rows.

Everything runs on this machine: 3 shard clusters and the single one (PostgreSQL 15, as the
`postgres` OS user when run as root) on fixed 127.0.0.1 ports from --base-port (shards
base..base+2, single base+3, proxy base+4), all removed at the end (also on Ctrl-C).

How to run
----------
    cargo build --release -p shardgate
    python3 integration/merge_bench.py --markdown /tmp/merge.md
    python3 integration/merge_bench.py --rows-per-shard 100000 --runs 3 --runs-all 2   # quick

Requires Python 3.11 (standard library only), PostgreSQL 15 binaries in
/usr/lib/postgresql/15/bin and psql on PATH. Uses integration/bench.py's helpers.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
from bench import DBNAME, PASSWORD, PG_BIN, PG_USER, Cleanup, Cluster, Target, log  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARDS = 3
# 12 hash partitions dealt to the 3 shards in turn.
PARTITIONS = 12
ASSIGN = {s: [p for p in range(PARTITIONS) if p % SHARDS == s] for s in range(SHARDS)}


@dataclass(frozen=True)
class Query:
    name: str
    sql: str
    ordered: bool  # the answer's row order is defined (compare as text, not as a set)
    big: bool = False  # the whole table: --runs-all runs, compared by hash


QUERIES = [
    Query("top100", "SELECT id, x FROM t ORDER BY x LIMIT 100", ordered=True),
    Query("groupby", "SELECT g, count(*), avg(x::numeric) FROM t GROUP BY g", ordered=False),
    Query("count", "SELECT count(*) FROM t", ordered=True),
    Query("all", "SELECT * FROM t ORDER BY id", ordered=True, big=True),
]


# --------------------------------------------------------------------------- measuring


@dataclass
class Run:
    ms: float | None = None  # psql's \timing
    wall_ms: float = 0.0  # the whole psql process
    error: str = ""
    idle_kb: int = 0  # proxy RSS just before the run
    peak_kb: int = 0  # highest sampled RSS during the run
    hwm_kb: int | None = None  # the kernel's peak during the run (VmHWM after a reset)
    cpu_ms: float | None = None  # proxy utime + stime during the run
    samples: int = 0


@dataclass
class Cell:
    """The runs of one query against one target."""

    runs: list[Run] = field(default_factory=list)
    first: Run | None = None  # the unrecorded warm-up and check run (memory only)

    def times(self) -> list[float]:
        return [r.ms for r in self.runs if r.ms is not None and not r.error]

    def errors(self) -> list[str]:
        return [r.error for r in self.runs if r.error]


def proc_status(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_hwm(pid: int) -> bool:
    """Resets the process's VmHWM to its current RSS (Linux: 5 > clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_ms(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[11], fields[12]: utime, stime (the 14th and 15th fields of the line)
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a thread; keeps the maximum."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while True:
            kb = proc_status(self.pid, "VmRSS")
            if kb is not None:
                self.peak = max(self.peak, kb)
                self.samples += 1
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        kb = proc_status(self.pid, "VmRSS")  # one last sample
        if kb is not None:
            self.peak = max(self.peak, kb)
            self.samples += 1


class Watch:
    """Fills `run`'s memory and CPU figures for the proxy while the block runs."""

    def __init__(self, pid: int, interval: float, run: Run) -> None:
        self.pid, self.run = pid, run
        self.sampler = RssSampler(pid, interval)

    def __enter__(self) -> "Watch":
        self.run.idle_kb = proc_status(self.pid, "VmRSS") or 0
        self.hwm_ok = reset_hwm(self.pid)
        self.cpu0 = cpu_ms(self.pid)
        self.sampler.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sampler.__exit__(*exc)
        cpu1 = cpu_ms(self.pid)
        self.run.peak_kb, self.run.samples = self.sampler.peak, self.sampler.samples
        if self.hwm_ok:
            self.run.hwm_kb = proc_status(self.pid, "VmHWM")
        if self.cpu0 is not None and cpu1 is not None:
            self.run.cpu_ms = cpu1 - self.cpu0


def conninfo(port: int) -> str:
    return f"host=127.0.0.1 port={port} user={PG_USER} dbname={DBNAME} connect_timeout=10"


TIME_RE = re.compile(r"^Time: ([0-9.]+) ms", re.M)


def timed_psql(port: int, sql: str, timeout: float) -> Run:
    """Runs `sql` once with psql, its rows printed to /dev/null; psql's \\timing is the time."""
    cmd = ["psql", conninfo(port), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
           "-c", "\\timing on", "-c", "\\o /dev/null", "-c", sql]
    start = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env=bench.clean_env(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Run(wall_ms=(time.monotonic() - start) * 1000, error=f"psql did not finish within {timeout:.0f} s")
    r = Run(wall_ms=(time.monotonic() - start) * 1000)
    m = TIME_RE.search(p.stdout)
    if p.returncode != 0 or m is None:
        err = " | ".join(l for l in p.stderr.splitlines() if l.strip())[-500:]
        r.error = f"psql exit {p.returncode}: {err or 'no Time line'}"
    else:
        r.ms = float(m.group(1))
    return r


def measure(target: Target, q: Query, timeout: float, interval: float) -> Run:
    if target.proc is None:
        return timed_psql(target.port, q.sql, timeout)
    probe = Run()
    with Watch(target.proc.pid, interval, probe):
        r = timed_psql(target.port, q.sql, timeout)
    r.idle_kb, r.peak_kb, r.hwm_kb, r.cpu_ms, r.samples = (
        probe.idle_kb, probe.peak_kb, probe.hwm_kb, probe.cpu_ms, probe.samples)
    if not target.check_alive():
        r.error = (r.error + "; " if r.error else "") + f"proxy {target.broken}"
    return r


def answer(port: int, sql: str, timeout: float) -> tuple[str, str]:
    """The query's output as psql prints it unaligned (small results), or ("", error)."""
    p = subprocess.run(["psql", conninfo(port), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
                       capture_output=True, text=True, timeout=timeout, env=bench.clean_env(),
                       stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        return "", (p.stderr.strip() or f"psql exit {p.returncode}")
    return p.stdout, ""


def answer_digest(port: int, sql: str, timeout: float) -> tuple[str, int, str]:
    """SHA-256 and line count of psql's unaligned output of `sql`, streamed; or error."""
    p = subprocess.Popen(["psql", conninfo(port), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=bench.clean_env(),
                         stdin=subprocess.DEVNULL)
    h = hashlib.sha256()
    lines = 0
    deadline = time.monotonic() + timeout
    assert p.stdout is not None and p.stderr is not None
    while chunk := p.stdout.read(1 << 20):
        h.update(chunk)
        lines += chunk.count(b"\n")
        if time.monotonic() > deadline:
            p.kill()
            break
    err = p.stderr.read().decode(errors="replace").strip()
    rc = p.wait()
    if rc != 0:
        return "", lines, err or f"psql exit {rc}"
    return h.hexdigest(), lines, ""


def slow_reader(proxy: Target, sql: str, seconds: float, interval: float) -> tuple[Run, int]:
    """Sends `sql` through the proxy on a raw connection and reads its answer slowly (16 KiB
    every 10 ms, a small receive buffer) for `seconds`, then drains it: the proxy must hold
    the shards back rather than buffer their rows. Returns the memory figures of the slow
    part and the bytes read then."""
    r = Run()
    c = bench.PgClient("127.0.0.1", proxy.port, timeout=60)
    try:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        c.login(PG_USER, PASSWORD, DBNAME)
        c.send(b"Q", sql.encode() + b"\0")
        slow = 0
        with Watch(proxy.proc.pid, interval, r):
            start = time.monotonic()
            while time.monotonic() - start < seconds:
                chunk = c.sock.recv(16 * 1024)
                if not chunk:
                    raise bench.ProtocolError("the proxy closed the connection")
                slow += len(chunk)
                time.sleep(0.01)
        r.wall_ms = (time.monotonic() - start) * 1000
        tail_bytes = b""
        while True:  # the rest, as fast as it comes, up to ReadyForQuery
            chunk = c.sock.recv(1 << 20)
            if not chunk:
                raise bench.ProtocolError("the proxy closed the connection")
            tail_bytes = (tail_bytes + chunk)[-6:]
            if tail_bytes == b"Z\0\0\0\5I":
                break
    except (OSError, bench.ProtocolError) as e:
        r.error = str(e)
    finally:
        c.close()
    return r, slow


# --------------------------------------------------------------------------- setup


def check_ports_free(ports: list[int]) -> None:
    for port in ports:
        with socket.socket() as s:
            # as the servers bind: a port whose old connections are in TIME_WAIT is free
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError as e:
                raise RuntimeError(f"port {port} is not free ({e}): pick another --base-port") from e


def make_cluster(root: Path, name: str, port: int, shared_buffers: str) -> Cluster:
    d = root / name
    d.mkdir()
    bench.chown_to_pg(d)
    c = Cluster(d, port)
    c.init()
    with (c.data / "postgresql.conf").open("a") as f:
        f.write(f"# merge benchmark\nshared_buffers = {shared_buffers}\nmax_connections = 50\n"
                "wal_level = minimal\nmax_wal_senders = 0\nmax_wal_size = 256MB\n")
    return c


def psql_run(port: int, sql: str, timeout: float, dbname: str = DBNAME) -> str:
    return bench.run(["psql", f"host=127.0.0.1 port={port} user={PG_USER} dbname={dbname}", "-X", "-q",
                      "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
                     timeout=timeout, env=bench.clean_env()).stdout


def load_sql(total: int, remainders: list[int] | None) -> str:
    """The table built in one transaction: all ids, or those of the given hash remainders."""
    where = ""
    pre = ""
    if remainders is not None:
        pre = "CREATE TEMP TABLE hp (id bigint) PARTITION BY HASH (id);\n"
        where = "WHERE " + " OR ".join(
            f"satisfies_hash_partition('hp'::regclass, {PARTITIONS}, {r}, i)" for r in remainders)
    return f"""{pre}BEGIN;
CREATE TABLE t (id bigint NOT NULL, g int NOT NULL, x double precision NOT NULL, pad text NOT NULL);
INSERT INTO t SELECT i, (i % 1000)::int, hashint8(i)::float8 / 2147483648.0, md5(i::text)
  FROM generate_series(1::bigint, {total}::bigint) AS i {where};
ALTER TABLE t ADD PRIMARY KEY (id);
COMMIT;
VACUUM ANALYZE t;
"""


def load(port: int, total: int, remainders: list[int] | None) -> int:
    p = subprocess.run(["psql", f"host=127.0.0.1 port={port} user={PG_USER} dbname={DBNAME}", "-X", "-q",
                        "-v", "ON_ERROR_STOP=1"], input=load_sql(total, remainders), capture_output=True,
                       text=True, timeout=3600, env=bench.clean_env())
    if p.returncode != 0:
        raise RuntimeError(f"loading on port {port} failed:\n{p.stdout}{p.stderr}")
    return int(psql_run(port, "SELECT count(*) FROM t", 600).strip())


def start_proxy(binary: Path, root: Path, port: int, shard_ports: list[int], merge_memory: int | None) -> Target:
    d = root / "shardgate"
    d.mkdir()
    assign = ", ".join(f"s{s}: [{', '.join(map(str, ps))}]" for s, ps in ASSIGN.items())
    (d / "t.yaml").write_text(f"""\
name: t
type: hash
key_type: bigint
partitions: {PARTITIONS}
assign: {{ {assign} }}
tables: [{{ table: t, column: id }}]
""")
    limits = "" if merge_memory is None else f"limits: {{ merge_memory: {merge_memory} }}\n"
    shards = "".join(
        f'      s{i}: {{ primary: "postgres://{PG_USER}:{PASSWORD}@127.0.0.1:{p}/{DBNAME}" }}\n'
        for i, p in enumerate(shard_ports))
    config = d / "shardgate.yaml"
    config.write_text(f"""\
listen: 127.0.0.1:{port}
pool: {{ mode: transaction, size: 4, min_idle: 0, checkout_timeout_ms: 10000 }}
{limits}users:
  - {{ name: {PG_USER}, password: {PASSWORD}, auth: scram-sha-256 }}
databases:
  {DBNAME}:
    shard_maps: [t.yaml]
    shards:
{shards}""")
    out = d / "shardgate.log"
    with out.open("w") as o:
        proc = subprocess.Popen([str(binary), "run", "--config", str(config)], stdout=o,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=d,
                                start_new_session=True)
    return Target("shardgate", port, proc, log=out)


def check_placement(proxy_port: int, total: int, n: int = 300) -> str:
    """Looks up n ids spread over the range through the proxy by key: each must come back."""
    ids = sorted({1 + (k * 7919 * 1009) % total for k in range(n)})
    script = "".join(f"SELECT id FROM t WHERE id = {i};\n" for i in ids)
    p = subprocess.run(["psql", conninfo(proxy_port), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"],
                       input=script, capture_output=True, text=True, timeout=300, env=bench.clean_env())
    if p.returncode != 0:
        return f"lookups by key failed: {p.stderr.strip()}"
    got = [int(l) for l in p.stdout.split()]
    if got != ids:
        missing = sorted(set(ids) - set(got))
        return f"{len(missing)} of {len(ids)} ids not found through the proxy by key (e.g. {missing[:5]})"
    return ""


# --------------------------------------------------------------------------- report


def fmt_ms(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def time_cell(c: Cell) -> str:
    t = c.times()
    if not t:
        return "FAIL"
    return f"{fmt_ms(statistics.median(t))} ({fmt_ms(min(t))}–{fmt_ms(max(t))})"


def mib(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def result_rows(queries: list[Query], results: dict[tuple[str, str], Cell],
                rowcounts: dict[str, int]) -> tuple[list[str], list[list[str]]]:
    headers = ["query", "rows", "direct ms median (min–max)", "shardgate ms median (min–max)", "sg/direct",
               "proxy CPU ms", "proxy RSS idle MiB", "peak above idle MiB (sampled / VmHWM)", "peak MiB"]
    rows = []
    for q in queries:
        d, s = results[(q.name, "direct")], results[(q.name, "shardgate")]
        dt, st = d.times(), s.times()
        ratio = f"{statistics.median(st) / statistics.median(dt):.2f}" if dt and st else "-"
        ok = [r for r in s.runs if not r.error]
        cpu = [r.cpu_ms for r in ok if r.cpu_ms is not None]
        mem = ([s.first] if s.first else []) + s.runs
        idle = mem[0].idle_kb if mem else 0
        above = max((r.peak_kb - r.idle_kb for r in mem), default=0)
        hwm = [r.hwm_kb - r.idle_kb for r in mem if r.hwm_kb is not None]
        rows.append([
            q.name, f"{rowcounts.get(q.name, 0):,}", time_cell(d), time_cell(s), ratio,
            fmt_ms(statistics.median(cpu)) if cpu else "-",
            mib(idle), f"{mib(above)} / {mib(max(hwm))}" if hwm else mib(above),
            mib(max((r.peak_kb for r in mem), default=0)),
        ])
    return headers, rows


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows-per-shard", type=int, default=1_000_000,
                   help="rows per shard; the table has 3 times as many (default 1,000,000)")
    p.add_argument("--runs", type=int, default=7, help="measured runs of queries 1-3 per target (default 7)")
    p.add_argument("--runs-all", type=int, default=5, help="measured runs of the full ORDER BY id (default 5)")
    p.add_argument("--base-port", type=int, default=25460,
                   help="shards on base..base+2, the single database base+3, the proxy base+4 (default 25460)")
    p.add_argument("--shared-buffers", default="256MB", help="shared_buffers of every cluster (default 256MB)")
    p.add_argument("--merge-memory", type=int, help="the proxy's limits.merge_memory in bytes (default: its default)")
    p.add_argument("--sample-ms", type=float, default=20, help="RSS sampling interval (default 20 ms)")
    p.add_argument("--timeout", type=float, default=600, help="seconds one query may take (default 600)")
    p.add_argument("--shardgate", default="target/release/shardgate",
                   help="shardgate binary, relative to the repository root unless absolute")
    p.add_argument("--markdown", type=Path, help="also write the results as markdown to this file")
    p.add_argument("--slow-seconds", type=float, default=10,
                   help="seconds of the slow reader of the full ORDER BY id (0: none; default 10)")
    p.add_argument("--hold", action="store_true",
                   help="after measuring, keep everything running until Ctrl-C (to look around)")
    p.add_argument("--only", help="comma list of queries to measure: " + ",".join(q.name for q in QUERIES))
    a = p.parse_args(argv)
    if a.rows_per_shard < 1000 or a.runs < 1 or a.runs_all < 1:
        p.error("--rows-per-shard must be at least 1000, --runs and --runs-all at least 1")
    if not 1024 <= a.base_port <= 32763:
        p.error("--base-port must be in 1024..32763")
    names = {q.name for q in QUERIES}
    a.queries = [q for q in QUERIES if not a.only or q.name in {n.strip() for n in a.only.split(",")}]
    if a.only and not {n.strip() for n in a.only.split(",")} <= names:
        p.error(f"--only takes {', '.join(sorted(names))}")
    return a


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return f"{os.cpu_count()} × {model}, {mem_kb / 1024 / 1024:.0f} GiB"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, bench.on_sigterm)
    if not (PG_BIN / "initdb").exists() or not shutil.which("psql"):
        log(f"need {PG_BIN}/initdb and psql")
        return 2
    sg_bin = Path(args.shardgate)
    if not sg_bin.is_absolute():
        sg_bin = REPO_ROOT / sg_bin
    if not os.access(sg_bin, os.X_OK):
        log(f"shardgate binary {sg_bin} not found (cargo build --release -p shardgate)")
        return 2
    base = args.base_port
    shard_ports = [base + i for i in range(SHARDS)]
    single_port, proxy_port = base + SHARDS, base + SHARDS + 1
    total = SHARDS * args.rows_per_shard

    cleanup = Cleanup()
    root = Path(tempfile.mkdtemp(prefix="shardgate-merge-bench-"))
    cleanup.push(f"remove {root}", lambda: shutil.rmtree(root, ignore_errors=True))
    bench.chown_to_pg(root)
    failed = False
    try:
        check_ports_free([*shard_ports, single_port, proxy_port])
        clusters = {}
        for name, port in [*((f"s{i}", p) for i, p in enumerate(shard_ports)), ("single", single_port)]:
            c = make_cluster(root, name, port, args.shared_buffers)
            cleanup.push(f"stop PostgreSQL {name}", c.stop)
            c.start()
            psql_run(port, f"CREATE DATABASE {DBNAME}", 60, dbname="postgres")
            clusters[name] = c
        version = clusters["single"].version()
        log(f"{version}: shards on {shard_ports}, single on {single_port}; loading {total:,} rows ...")
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=SHARDS + 1) as pool:
            futures = {f"s{i}": pool.submit(load, p, total, ASSIGN[i]) for i, p in enumerate(shard_ports)}
            futures["single"] = pool.submit(load, single_port, total, None)
            counts = {k: f.result() for k, f in futures.items()}
        log(f"loaded in {time.monotonic() - t0:.0f} s: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        if sum(counts[f"s{i}"] for i in range(SHARDS)) != total or counts["single"] != total:
            raise RuntimeError(f"row counts do not add up to {total}: {counts}")

        proxy = start_proxy(sg_bin, root, proxy_port, shard_ports, args.merge_memory)
        cleanup.push("stop shardgate", lambda: bench.stop_process(proxy.proc))
        bench.wait_ready(proxy)
        direct = Target("direct", single_port)
        log(f"shardgate ready on 127.0.0.1:{proxy_port} (pid {proxy.proc.pid})")
        problem = check_placement(proxy_port, total)
        if problem:
            raise RuntimeError(f"the shards do not hold the rows the proxy's map sends them: {problem}")
        time.sleep(1)
        idle_start = proc_status(proxy.proc.pid, "VmRSS") or 0
        log(f"placement checked; proxy RSS idle {idle_start} KiB")

        notes: list[str] = []
        rowcounts: dict[str, int] = {}
        results: dict[tuple[str, str], Cell] = {}
        for q in args.queries:
            # The warm-up run of each target is also the check that both answer alike; the
            # proxy's memory is sampled during it too (a first run may allocate what later
            # runs reuse).
            first = Run()
            with Watch(proxy.proc.pid, args.sample_ms / 1000, first):
                if q.big:
                    (dd, dn, de), (sd, sn, se) = (answer_digest(t.port, q.sql, args.timeout)
                                                  for t in (direct, proxy))
                else:
                    (da, de), (sa, se) = (answer(t.port, q.sql, args.timeout) for t in (direct, proxy))
            if q.big:
                rowcounts[q.name] = dn
                wrong = (dd, dn) != (sd, sn)
                why = f"{sn:,} rows sha256 {sd[:16]} against {dn:,} rows sha256 {dd[:16]} directly"
            else:
                rowcounts[q.name] = len(da.splitlines())
                wrong = da != sa if q.ordered else sorted(da.splitlines()) != sorted(sa.splitlines())
                why = f"first lines {sa.splitlines()[:3]} against {da.splitlines()[:3]} directly"
            if de or se:
                notes.append(f"{q.name}: direct: {de or 'ok'}; shardgate: {se or 'ok'}")
            elif wrong:
                notes.append(f"{q.name}: WRONG ANSWER through the proxy: {why}")
            log(f"{q.name:<8} checked: {rowcounts[q.name]:,} rows, " + ("different" if wrong else "same answer")
                + f"; proxy RSS idle {first.idle_kb} KiB, peak +{first.peak_kb - first.idle_kb} KiB")
            runs = args.runs_all if q.big else args.runs
            cells = {"direct": Cell(), "shardgate": Cell(first=first)}
            for i in range(runs):
                for t in (direct, proxy):
                    r = measure(t, q, args.timeout, args.sample_ms / 1000)
                    cells[t.name].runs.append(r)
                    extra = ""
                    if t.proc is not None:
                        extra = (f"  RSS idle {r.idle_kb} KiB, peak +{r.peak_kb - r.idle_kb} KiB"
                                 + (f" (VmHWM +{r.hwm_kb - r.idle_kb})" if r.hwm_kb is not None else "")
                                 + (f", CPU {r.cpu_ms:.0f} ms" if r.cpu_ms is not None else "")
                                 + f", {r.samples} samples")
                    log(f"{q.name:<8} run {i + 1}/{runs} {t.name:<9} "
                        + (f"{r.ms:10.1f} ms (wall {r.wall_ms:.0f})" if r.ms is not None else f"FAIL: {r.error}")
                        + extra)
            for name, c in cells.items():
                results[(q.name, name)] = c
                for e in sorted(set(c.errors())):
                    notes.append(f"{q.name} {name}: {e}")
        slow_line = ""
        if args.slow_seconds > 0 and any(q.big for q in args.queries):
            big = next(q for q in args.queries if q.big)
            sr, slow_bytes = slow_reader(proxy, big.sql, args.slow_seconds, args.sample_ms / 1000)
            if sr.error:
                notes.append(f"slow reader: {sr.error}")
            slow_line = (f"slow reader of '{big.name}' ({args.slow_seconds:g} s at 16 KiB per 10 ms, "
                         f"{slow_bytes / 1e6:.1f} MB read then): proxy RSS idle {mib(sr.idle_kb)} MiB, "
                         f"peak above idle {mib(sr.peak_kb - sr.idle_kb)} MiB"
                         + (f" (VmHWM {mib(sr.hwm_kb - sr.idle_kb)})" if sr.hwm_kb is not None else ""))
            log(slow_line)
        if not proxy.check_alive():
            notes.append(proxy.broken_note())

        headers, rows = result_rows(args.queries, results, rowcounts)
        header = (f"{args.rows_per_shard:,} rows per shard ({total:,}; shards "
                  + ", ".join(f"{counts[f's{i}']:,}" for i in range(SHARDS)) + f"), {machine()}; "
                  f"{args.runs} runs ({args.runs_all} of 'all') per target after a warm-up; "
                  f"proxy idle RSS at start {mib(idle_start)} MiB; {version}; shared_buffers {args.shared_buffers}")
        print()
        print(header)
        print()
        print(bench.format_text(headers, rows))
        if slow_line:
            print()
            print(slow_line)
        if notes:
            print()
            print("\n".join(f"note: {n}" for n in notes))
        failed = bool(notes)
        if args.markdown:
            md = [f"# Merge benchmark\n\n{header}\n", bench.format_markdown(headers, rows)]
            if slow_line:
                md.append(f"\n{slow_line}")
            if notes:
                md += ["\n## Notes\n", "\n".join(f"- {n}" for n in notes)]
            args.markdown.write_text("\n".join(md) + "\n")
            log(f"markdown written to {args.markdown}")
        if args.hold:
            log(f"holding (Ctrl-C ends): proxy psql '{conninfo(proxy_port)}', single port {single_port}, "
                f"shards {shard_ports}, password {PASSWORD}, data in {root}")
            while True:
                time.sleep(3600)
        return 1 if failed else 0
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    except RuntimeError as e:
        log(f"merge benchmark failed: {e}")
        return 1
    finally:
        cleanup.run()


if __name__ == "__main__":
    sys.exit(main())
