#!/usr/bin/env python3
"""Throughput and idle-memory benchmark: direct PostgreSQL vs PgBouncer vs shardgate.

What it measures
----------------
* pgbench throughput (tps, without initial connection time) through three targets
  that all reach the same PostgreSQL 15 cluster:
    - direct     PostgreSQL itself
    - pgbouncer  PgBouncer in transaction mode
    - shardgate  shardgate in transaction mode, one shard pointing at the cluster
  Workloads: select-only (`-S`) with `-M simple`, `-M extended` and `-M prepared`
  at each client count of --clients-list, and TPC-B (pgbench's default script)
  with `-M simple` at --tpcb-clients clients. PgBouncer 1.18 cannot serve
  `-M prepared` in transaction mode, so that cell is "n/a". A run whose pgbench
  exits non-zero, prints no tps, or reports failed transactions is "FAIL".
* Idle-client memory of PgBouncer and shardgate: the growth of the process RSS
  (VmRSS) after N clients have logged in (startup + SCRAM-SHA-256) and stay idle,
  divided by N.

Everything runs on this machine: the script creates a throw-away PostgreSQL
cluster, PgBouncer and shardgate, each on a free 127.0.0.1 port, and removes
them at the end (also on Ctrl-C or an error). When run as root, PostgreSQL and
PgBouncer run as the `postgres` OS user, and PgBouncer is installed with apt-get
if it is missing.

pgbench, the servers and the proxies share the machine's cores, so the numbers
compare the targets with one another under the same conditions; they are not
absolute capacity figures. Targets are run back to back for each cell so that
drift affects all of them alike. On a small shared machine one run of a cell moves
by ±5%; `--rounds N` runs each cell N times per target, alternating which target
goes first, and reports the medians: of tps and CPU per target, and of the
rounds' ratios (each round's ratio is printed too).

How to run
----------
    cargo build --release -p shardgate          # optional: without it, shardgate is skipped
    python3 integration/bench.py                # full matrix, 15 s per run
    python3 integration/bench.py --duration 3 --clients-list 1,16 --idle-clients 200
    python3 integration/bench.py --only direct,shardgate --markdown /tmp/bench.md
    python3 integration/bench.py --only pgbouncer,shardgate --clients-list 16,64 --rounds 5 --skip-idle

Requires Python 3.11 (standard library only), PostgreSQL 15 binaries in
/usr/lib/postgresql/15/bin, and pgbench/psql on PATH.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import functools
import grp
import hashlib
import hmac
import os
import pwd
import re
import resource
import secrets
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
PASSWORD = "bench"
DBNAME = "bench"
TARGETS = ("direct", "pgbouncer", "shardgate")
MODES = ("simple", "extended", "prepared")
REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Workload:
    """One row of the matrix: a pgbench script, protocol mode and client count."""

    script: str  # "select-only" or "tpcb"
    mode: str  # pgbench -M value
    clients: int

    @property
    def label(self) -> str:
        return f"{self.script} {self.mode}"

    def pgbench_args(self) -> list[str]:
        args = ["-M", self.mode, "-c", str(self.clients), "-j", str(min(self.clients, 2))]
        if self.script == "select-only":
            args.append("-S")
        return args


@dataclass
class RunResult:
    """The outcome of one pgbench run against one target."""

    status: str  # "ok", "FAIL" or "n/a"
    tps: float | None = None
    failed_tx: int | None = None
    detail: str = ""
    # The proxy's CPU time (user + system, from /proc) per transaction, in microseconds.
    cpu_us_per_tx: float | None = None

    def cell(self) -> str:
        if self.status == "ok" and self.tps is not None:
            return f"{self.tps:.0f}"
        return self.status


@dataclass
class IdleResult:
    """RSS growth of one proxy process while N idle, logged-in clients are held."""

    target: str
    requested: int
    opened: int = 0
    still_open: int = 0
    rss_before_kb: int = 0
    rss_after_kb: int = 0
    error: str = ""

    @property
    def bytes_per_client(self) -> float | None:
        if self.opened == 0:
            return None
        return (self.rss_after_kb - self.rss_before_kb) * 1024 / self.opened


@dataclass
class Target:
    """A place pgbench can connect to, and the process behind it (None for direct)."""

    name: str
    port: int
    proc: subprocess.Popen | None = None
    log: Path | None = None
    broken: str = ""  # why the target can no longer be used, once it cannot

    def check_alive(self) -> bool:
        if self.proc is not None and not self.broken and self.proc.poll() is not None:
            self.broken = f"exited with code {self.proc.returncode}"
        return not self.broken

    def broken_note(self) -> str:
        note = f"{self.name} unusable: {self.broken}"
        if self.log:
            note += f"; last lines of {self.log.name}:\n" + "\n".join(
                "    " + l for l in tail(self.log, 10).splitlines())
        return note


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(cannot read {path}: {e})"


def is_root() -> bool:
    return os.geteuid() == 0


def as_pg_user() -> dict:
    """Popen keyword arguments that run a child as the postgres OS user when we are root."""
    if not is_root():
        return {}
    return {"user": PG_USER, "group": grp.getgrgid(pwd.getpwnam(PG_USER).pw_gid).gr_name, "extra_groups": []}


def chown_to_pg(path: Path) -> None:
    if is_root():
        pw = pwd.getpwnam(PG_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def clean_env() -> dict:
    """The environment for client tools: no stray PG* settings, our password."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = PASSWORD
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


# Below Linux's ephemeral range (32768 and up): an outgoing connection is never given one of
# these as its source port between the moment it is picked and the moment a server binds it.
# The same range as the cluster crate's free_port, clear of merge_bench.py's 25460 and up.
PORT_RANGE = range(16000, 25000)


def free_ports(n: int) -> list[int]:
    """n loopback ports that were free a moment ago, from PORT_RANGE (this process starts
    at its own place in it)."""
    ports: list[int] = []
    start = (os.getpid() * 7919) % len(PORT_RANGE)
    for i in range(len(PORT_RANGE)):
        port = PORT_RANGE[(start + i) % len(PORT_RANGE)]
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"no {n} free ports on 127.0.0.1 in {PORT_RANGE}")


def run(cmd: list[str], *, timeout: float, env: dict | None = None, pg_user: bool = False,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a short command, raising with its output when it fails."""
    kwargs = as_pg_user() if pg_user else {}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                       cwd=cwd, stdin=subprocess.DEVNULL, **kwargs)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {p.returncode}:\n{p.stdout}{p.stderr}")
    return p


def psql_ok(port: int, timeout: float = 5) -> tuple[bool, str]:
    cmd = ["psql", f"host=127.0.0.1 port={port} user={PG_USER} dbname={DBNAME} connect_timeout=3",
           "-XAtc", "select 1"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env(),
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, "psql timed out"
    return p.returncode == 0 and p.stdout.strip() == "1", (p.stderr or p.stdout).strip()


def wait_ready(target: Target, limit: float = 30) -> None:
    """Poll with psql until the target answers `select 1`, or raise after `limit` seconds."""
    deadline = time.monotonic() + limit
    last = ""
    while time.monotonic() < deadline:
        if not target.check_alive():
            raise RuntimeError(target.broken)
        ok, last = psql_ok(target.port)
        if ok:
            return
        time.sleep(0.2)
    raise RuntimeError(f"did not accept connections within {limit:.0f} s: {last}")


def stop_process(proc: subprocess.Popen, grace: float = 10) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    if hard != resource.RLIM_INFINITY and hard < want:
        if is_root():
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
                return
            except (ValueError, OSError):
                pass  # a container without CAP_SYS_RESOURCE: the hard limit it is
        want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Cleanup:
    """A stack of undo actions, run last-in first-out; each one's failure is reported, not raised."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, action: Callable[[], None]) -> None:
        self._actions.append((what, action))

    def run(self) -> None:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            while self._actions:
                what, action = self._actions.pop()
                try:
                    action()
                except Exception as e:  # noqa: BLE001 - cleanup must go on
                    log(f"cleanup: {what} failed: {e}")
        finally:
            signal.signal(signal.SIGINT, old)


# --------------------------------------------------------------------------- PostgreSQL


class Cluster:
    """A temporary PostgreSQL 15 cluster owned by the postgres OS user."""

    def __init__(self, root: Path, port: int) -> None:
        self.dir = root / "pg"
        self.data = self.dir / "data"
        self.port = port
        self.logfile = self.dir / "postgres.log"

    def init(self) -> None:
        self.dir.mkdir()
        chown_to_pg(self.dir)
        pwfile = self.dir / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        chown_to_pg(pwfile)
        run([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", PG_USER, f"--pwfile={pwfile}",
             "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C",
             "--no-sync"], timeout=120, pg_user=True, cwd=self.dir)
        pwfile.unlink()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.data}'",
            "max_connections": "300",
            "fsync": "off",
            "synchronous_commit": "off",
            "shared_buffers": "128MB",
            "password_encryption": "'scram-sha-256'",
        }
        with (self.data / "postgresql.conf").open("a") as f:
            f.write("\n# benchmark settings\n")
            f.writelines(f"{k} = {v}\n" for k, v in settings.items())
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )

    def start(self) -> None:
        with (self.dir / "pg_ctl.out").open("w") as out:
            p = subprocess.run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile),
                                "-w", "-t", "60", "start"], stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, timeout=90, cwd=self.dir,
                               start_new_session=True, **as_pg_user())
        if p.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed:\n{tail(self.dir / 'pg_ctl.out')}\n{tail(self.logfile)}")

    def stop(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        try:
            subprocess.run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                            "-t", "30", "stop"], capture_output=True, stdin=subprocess.DEVNULL,
                           timeout=45, cwd=self.dir, **as_pg_user())
        except subprocess.TimeoutExpired:
            pass
        pidfile = self.data / "postmaster.pid"
        if pidfile.exists():
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)

    def prepare(self, scale: int) -> None:
        env = clean_env()
        run(["psql", f"host=127.0.0.1 port={self.port} user={PG_USER} dbname=postgres", "-X",
             "-v", "ON_ERROR_STOP=1", "-c", f"create database {DBNAME}"], timeout=60, env=env)
        log(f"pgbench -i -s {scale} ...")
        run(["pgbench", "-i", "-q", "-s", str(scale), "-h", "127.0.0.1", "-p", str(self.port),
             "-U", PG_USER, DBNAME], timeout=1800, env=env)

    def version(self) -> str:
        return run([str(PG_BIN / "postgres"), "--version"], timeout=10).stdout.strip()


# --------------------------------------------------------------------------- PgBouncer


def find_pgbouncer() -> str | None:
    """pgbouncer's path; when missing and we are root, apt-get installs it."""
    for cand in (shutil.which("pgbouncer"), "/usr/sbin/pgbouncer"):
        if cand and os.access(cand, os.X_OK):
            return cand
    if not is_root() or not shutil.which("apt-get"):
        return None
    log("pgbouncer not found: installing the Debian package with apt-get ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update"], timeout=600, env=env)
    run(["apt-get", "install", "-y", "--no-install-recommends", "pgbouncer"], timeout=600, env=env)
    return shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)


def start_pgbouncer(binary: str, root: Path, port: int, pg_port: int, pool: int,
                    max_clients: int) -> Target:
    d = root / "pgbouncer"
    d.mkdir()
    chown_to_pg(d)
    userlist = d / "userlist.txt"
    userlist.write_text(f'"{PG_USER}" "{PASSWORD}"\n')
    ini = d / "pgbouncer.ini"
    ini.write_text(f"""\
[databases]
{DBNAME} = host=127.0.0.1 port={pg_port} dbname={DBNAME} user={PG_USER} password={PASSWORD}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {userlist}
pool_mode = transaction
default_pool_size = {pool}
max_client_conn = {max_clients}
logfile = {d / 'pgbouncer.log'}
pidfile = {d / 'pgbouncer.pid'}
ignore_startup_parameters = extra_float_digits,options
""")
    for f in (userlist, ini):
        chown_to_pg(f)
    out = d / "pgbouncer.out"
    with out.open("w") as o:
        proc = subprocess.Popen([binary, str(ini)], stdout=o, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=d, start_new_session=True,
                                **as_pg_user())
    return Target("pgbouncer", port, proc, log=d / "pgbouncer.log")


# --------------------------------------------------------------------------- shardgate


def start_shardgate(binary: Path, root: Path, port: int, pg_port: int, pool: int,
                    max_clients: int) -> Target:
    d = root / "shardgate"
    d.mkdir()
    config = d / "shardgate.yaml"
    config.write_text(f"""\
listen: 127.0.0.1:{port}
pool: {{ mode: transaction, size: {pool}, min_idle: 0, checkout_timeout_ms: 10000 }}
limits: {{ max_client_connections: {max_clients} }}
users:
  - {{ name: {PG_USER}, password: {PASSWORD}, auth: scram-sha-256 }}
databases:
  {DBNAME}:
    shards:
      s0: {{ primary: "postgres://{PG_USER}:{PASSWORD}@127.0.0.1:{pg_port}/{DBNAME}" }}
""")
    out = d / "shardgate.log"
    with out.open("w") as o:
        proc = subprocess.Popen([str(binary), "run", "--config", str(config)], stdout=o,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=d,
                                start_new_session=True)
    return Target("shardgate", port, proc, log=out)


# --------------------------------------------------------------------------- pgbench

TPS_RE = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
FAILED_RE = re.compile(r"^number of failed transactions: (\d+)", re.M)
PROCESSED_RE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are the 14th and 15th fields; the split starts at the 3rd.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def parse_pgbench(returncode: int, stdout: str, stderr: str) -> RunResult:
    tps = TPS_RE.search(stdout)
    failed = FAILED_RE.search(stdout)
    failed_tx = int(failed.group(1)) if failed else None
    problems = []
    if returncode != 0:
        problems.append(f"exit code {returncode}")
    if tps is None:
        problems.append("no tps line")
    if failed_tx:
        problems.append(f"{failed_tx} failed transactions")
    if problems:
        errors = [l for l in stderr.splitlines() if l.strip()]
        detail = "; ".join(problems)
        if errors:
            detail += ": " + " | ".join(errors[-3:])
        return RunResult("FAIL", float(tps.group(1)) if tps else None, failed_tx, detail)
    return RunResult("ok", float(tps.group(1)), failed_tx)


def run_pgbench(target: Target, w: Workload, duration: int) -> RunResult:
    if target.name == "pgbouncer" and w.mode == "prepared":
        return RunResult("n/a", detail="PgBouncer 1.18 has no prepared statements in transaction mode")
    if not target.check_alive():
        return RunResult("FAIL", detail=f"{target.name} unusable")
    cmd = ["pgbench", "-n", "-T", str(duration), *w.pgbench_args(), "-h", "127.0.0.1",
           "-p", str(target.port), "-U", PG_USER, DBNAME]
    cpu_before = cpu_seconds(target.proc.pid) if target.proc else None
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 90,
                           env=clean_env(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return RunResult("FAIL", detail=f"pgbench did not finish within {duration + 90} s")
    result = parse_pgbench(p.returncode, p.stdout, p.stderr)
    processed = PROCESSED_RE.search(p.stdout)
    if cpu_before is not None and processed and int(processed.group(1)) > 0:
        used = cpu_seconds(target.proc.pid) - cpu_before
        result.cpu_us_per_tx = used * 1e6 / int(processed.group(1))
    if not target.check_alive():
        result = RunResult("FAIL", detail=f"{target.name} {target.broken} during the run")
    return result


def build_matrix(clients_list: list[int], tpcb_clients: int) -> list[Workload]:
    rows = [Workload("select-only", m, c) for m in MODES for c in clients_list]
    rows.append(Workload("tpcb", "simple", tpcb_clients))
    return rows


# --------------------------------------------------------------------------- idle clients


class ProtocolError(Exception):
    pass


@functools.lru_cache(maxsize=64)
def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)


class PgClient:
    """Just enough of the frontend protocol to start a session and log in."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ProtocolError("server closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_message(self) -> tuple[bytes, bytes]:
        header = self._read(5)
        kind, length = header[:1], struct.unpack("!i", header[1:])[0]
        return kind, self._read(length - 4)

    def send(self, kind: bytes, payload: bytes) -> None:
        self.sock.sendall(kind + struct.pack("!i", len(payload) + 4) + payload)

    def query_extended(self, sql: str, param: str) -> None:
        """Runs `sql` with one text parameter as a driver does without prepared statements:
        unnamed Parse, Bind, Describe, Execute, Sync in one write; reads to ReadyForQuery."""
        def msg(kind: bytes, payload: bytes) -> bytes:
            return kind + struct.pack("!i", len(payload) + 4) + payload
        value = param.encode()
        self.sock.sendall(
            msg(b"P", b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))
            + msg(b"B", b"\0\0" + struct.pack("!hhi", 0, 1, len(value)) + value + struct.pack("!h", 0))
            + msg(b"D", b"P\0") + msg(b"E", b"\0" + struct.pack("!i", 0)) + msg(b"S", b""))
        while True:
            kind, body = self.read_message()
            if kind == b"E":
                raise ProtocolError(self.error_text(body))
            if kind == b"Z":
                return

    @staticmethod
    def error_text(body: bytes) -> str:
        fields = {f[:1]: f[1:].decode(errors="replace") for f in body.split(b"\0") if f}
        return f"{fields.get(b'S', 'ERROR')} {fields.get(b'C', '')}: {fields.get(b'M', '')}"

    def expect_auth(self) -> tuple[int, bytes]:
        while True:
            kind, body = self.read_message()
            if kind == b"E":
                raise ProtocolError(self.error_text(body))
            if kind == b"N":
                continue
            if kind != b"R":
                raise ProtocolError(f"expected an authentication message, got {kind!r}")
            return struct.unpack("!i", body[:4])[0], body[4:]

    def login(self, user: str, password: str, database: str) -> None:
        params = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in
                          (("user", user), ("database", database), ("application_name", "bench-idle")))
        payload = struct.pack("!i", 196608) + params + b"\0"
        self.sock.sendall(struct.pack("!i", len(payload) + 4) + payload)
        code, data = self.expect_auth()
        if code == 10:
            mechanisms = [m.decode() for m in data.split(b"\0") if m]
            if "SCRAM-SHA-256" not in mechanisms:
                raise ProtocolError(f"no SCRAM-SHA-256 among {mechanisms}")
            self._scram(password)
            code, data = self.expect_auth()
        elif code == 3:
            self.send(b"p", password.encode() + b"\0")
            code, data = self.expect_auth()
        elif code == 5:
            inner = hashlib.md5(password.encode() + user.encode()).hexdigest().encode()
            self.send(b"p", b"md5" + hashlib.md5(inner + data[:4]).hexdigest().encode() + b"\0")
            code, data = self.expect_auth()
        if code != 0:
            raise ProtocolError(f"unexpected authentication request {code}")
        while True:
            kind, body = self.read_message()
            if kind == b"Z":
                return
            if kind == b"E":
                raise ProtocolError(self.error_text(body))

    def _scram(self, password: str) -> None:
        nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        first_bare = f"n=,r={nonce}"
        first = ("n,," + first_bare).encode()
        self.send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
        code, data = self.expect_auth()
        if code != 11:
            raise ProtocolError(f"expected SASLContinue, got {code}")
        server_first = data.decode()
        attrs = dict(part.split("=", 1) for part in server_first.split(","))
        if not attrs.get("r", "").startswith(nonce):
            raise ProtocolError("server nonce does not extend the client nonce")
        salted = salted_password(password, base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        final_bare = f"c=biws,r={attrs['r']}"
        auth_message = f"{first_bare},{server_first},{final_bare}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self.send(b"p", f"{final_bare},p={base64.b64encode(proof).decode()}".encode())
        code, data = self.expect_auth()
        if code != 12:
            raise ProtocolError(f"expected SASLFinal, got {code}")
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        expected = base64.b64encode(hmac.digest(server_key, auth_message, "sha256")).decode()
        if data.decode() != f"v={expected}":
            raise ProtocolError("server signature does not verify")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"X" + struct.pack("!i", 4))
        with contextlib.suppress(OSError):
            self.sock.close()


def count_open(clients: list[PgClient]) -> int:
    """How many sockets the server has not closed (no EOF or error pending)."""
    poller = select.poll()
    by_fd = {}
    for c in clients:
        by_fd[c.sock.fileno()] = c
        poller.register(c.sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    closed = 0
    for fd, events in poller.poll(0):
        if events & (select.POLLERR | select.POLLHUP):
            closed += 1
            continue
        try:
            by_fd[fd].sock.setblocking(False)
            if by_fd[fd].sock.recv(1, socket.MSG_PEEK) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return len(clients) - closed


def measure_idle(target: Target, n: int, settle: float = 2.0, workers: int = 4, query: bool = False,
                 limit: float = 300) -> IdleResult:
    result = IdleResult(target.name, n)
    if not target.check_alive():
        result.error = f"{target.name} unusable"
        return result
    pid = target.proc.pid
    time.sleep(0.5)
    result.rss_before_kb = rss_kb(pid)
    clients: list[PgClient] = []
    lock = threading.Lock()
    errors: list[str] = []
    deadline = time.monotonic() + limit

    def open_one(_: int) -> None:
        if time.monotonic() > deadline or len(errors) > 20:
            return
        c = None
        try:
            c = PgClient("127.0.0.1", target.port, timeout=15)
            c.login(PG_USER, PASSWORD, DBNAME)
            if query:
                c.query_extended("SELECT abalance FROM pgbench_accounts WHERE aid = $1", "1")
            with lock:
                clients.append(c)
        except (OSError, ProtocolError) as e:
            if c:
                c.close()
            with lock:
                errors.append(str(e))

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(open_one, range(n)))
        result.opened = len(clients)
        time.sleep(settle)
        result.rss_after_kb = rss_kb(pid)
        result.still_open = count_open(clients)
        if errors:
            result.error = f"{len(errors)} logins failed, first: {errors[0]}"
        if time.monotonic() > deadline:
            result.error = (result.error + "; " if result.error else "") + f"stopped after {limit:.0f} s"
    finally:
        for c in clients:
            c.close()
    if not target.check_alive():
        result.error = (result.error + "; " if result.error else "") + f"{target.name} {target.broken}"
    return result


# --------------------------------------------------------------------------- report


def ratio(a: RunResult | None, b: RunResult | None) -> str:
    if a is None or b is None or a.status != "ok" or b.status != "ok" or not b.tps:
        return "-"
    return f"{a.tps / b.tps:.2f}"


def paired_ratio(a: list[RunResult] | None, b: list[RunResult] | None) -> str:
    ratios = [x.tps / y.tps for x, y in zip(a or [], b or [])
              if x.status == "ok" and y.status == "ok" and x.tps and y.tps]
    if not a or not b or len(ratios) < len(a):
        return "-"
    return f"{statistics.median(ratios):.2f}"


def median_result(runs: list[RunResult]) -> RunResult:
    """One cell from its rounds: a failed round fails it, else the medians of tps and CPU."""
    for r in runs:
        if r.status != "ok":
            return r
    cpus = [r.cpu_us_per_tx for r in runs if r.cpu_us_per_tx is not None]
    return RunResult("ok", tps=statistics.median(r.tps for r in runs),
                     failed_tx=sum(r.failed_tx or 0 for r in runs),
                     cpu_us_per_tx=statistics.median(cpus) if cpus else None)


def table_rows(matrix: list[Workload], targets: list[str],
               results: dict[tuple[Workload, str], RunResult],
               rounds: dict[tuple[Workload, str], list[RunResult]] | None = None,
               ) -> tuple[list[str], list[list[str]]]:
    headers = ["workload", "clients", *targets]
    pairs = [(a, b, name) for a, b, name in
             (("shardgate", "direct", "sg/direct"), ("shardgate", "pgbouncer", "sg/pgbouncer"),
              ("pgbouncer", "direct", "pgb/direct")) if a in targets and b in targets]
    headers += [p[2] for p in pairs]
    proxies = [t for t in ("pgbouncer", "shardgate") if t in targets]
    headers += [f"{t} CPU µs/tx" for t in proxies]
    per_round = rounds is not None and "shardgate" in targets and "pgbouncer" in targets
    if per_round:
        headers.append("sg/pgbouncer by round")
    rows = []
    for w in matrix:
        row = [w.label, str(w.clients)]
        row += [results[(w, t)].cell() for t in targets]
        if rounds is None:
            row += [ratio(results.get((w, a)), results.get((w, b))) for a, b, _ in pairs]
        else:
            # Over rounds: the median of each round's ratio (the two runs side by side).
            row += [paired_ratio(rounds.get((w, a)), rounds.get((w, b))) for a, b, _ in pairs]
        for t in proxies:
            cpu = results[(w, t)].cpu_us_per_tx
            row.append("-" if cpu is None or results[(w, t)].status != "ok" else f"{cpu:.1f}")
        if per_round:
            row.append(" ".join(ratio(a, b) for a, b in
                                zip(rounds[(w, "shardgate")], rounds[(w, "pgbouncer")])))
        rows.append(row)
    return headers, rows


def format_text(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, rows)])


def format_markdown(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def idle_rows(idle: list[IdleResult]) -> tuple[list[str], list[list[str]]]:
    headers = ["target", "clients", "still open", "RSS before (KiB)", "RSS after (KiB)", "bytes/idle client"]
    rows = []
    for r in idle:
        per = r.bytes_per_client
        rows.append([r.target, f"{r.opened}/{r.requested}", str(r.still_open), str(r.rss_before_kb),
                     str(r.rss_after_kb), "FAIL" if per is None else f"{per:.0f}"])
    return headers, rows


def failure_notes(matrix: list[Workload], targets: list[str],
                  results: dict[tuple[Workload, str], RunResult], idle: list[IdleResult]) -> list[str]:
    """One line per failed cell, except those of a target that never worked (noted once instead)."""
    notes = []
    for w in matrix:
        for t in targets:
            r = results[(w, t)]
            if r.status == "FAIL" and r.detail != f"{t} unusable":
                notes.append(f"{w.label} c={w.clients} {t}: {r.detail}")
    notes += [f"idle {r.target}: {r.error}" for r in idle if r.error and r.error != f"{r.target} unusable"]
    return notes


# --------------------------------------------------------------------------- main


def on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=15, help="seconds per pgbench run (default 15)")
    p.add_argument("--clients-list", default="1,16,64", help="client counts for select-only (default 1,16,64)")
    p.add_argument("--tpcb-clients", type=int, default=16, help="clients for the TPC-B run (default 16)")
    p.add_argument("--pool-size", type=int, default=20, help="server pool size of both proxies (default 20)")
    p.add_argument("--scale", type=int, default=10, help="pgbench scale factor (default 10)")
    p.add_argument("--shardgate", default="target/release/shardgate",
                   help="shardgate binary, relative to the repository root unless absolute")
    p.add_argument("--markdown", type=Path, help="also write the results as markdown to this file")
    p.add_argument("--idle-clients", type=int, default=1000, help="idle clients for the memory test (default 1000)")
    p.add_argument("--login-threads", type=int, default=4,
                   help="threads logging the idle clients in (default 4; 1: one after another)")
    p.add_argument("--skip-idle", action="store_true", help="skip the idle-client memory test")
    p.add_argument("--idle-query", action="store_true",
                   help="each idle client first runs one extended-protocol query (unnamed statement)")
    p.add_argument("--only", help="comma list of targets to run: direct,pgbouncer,shardgate")
    p.add_argument("--rounds", type=int, default=1,
                   help="runs of each cell per target, alternating which goes first; medians reported (default 1)")
    p.add_argument("--warmup", type=int, default=2, help="seconds of unreported warm-up per target (0: none)")
    a = p.parse_args(argv)
    a.clients = [int(c) for c in a.clients_list.split(",") if c.strip()]
    a.targets = [t.strip() for t in a.only.split(",")] if a.only else list(TARGETS)
    unknown = set(a.targets) - set(TARGETS)
    if unknown:
        p.error(f"unknown targets in --only: {', '.join(sorted(unknown))}")
    if not a.clients or min(a.clients) < 1 or a.duration < 1 or a.rounds < 1:
        p.error("--clients-list, --duration and --rounds must be positive")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    if not (PG_BIN / "initdb").exists() or not shutil.which("pgbench") or not shutil.which("psql"):
        log(f"need {PG_BIN}/initdb, pgbench and psql")
        return 2
    raise_fd_limit(max(4096, args.idle_clients + 512))

    targets = [t for t in TARGETS if t in args.targets]
    sg_bin = Path(args.shardgate)
    if not sg_bin.is_absolute():
        sg_bin = REPO_ROOT / sg_bin
    notes: list[str] = []
    if "shardgate" in targets and not os.access(sg_bin, os.X_OK):
        msg = f"shardgate binary {sg_bin} not found: shardgate columns skipped (cargo build --release -p shardgate)"
        log(msg)
        notes.append(msg)
        targets.remove("shardgate")
    pgb_bin = None
    if "pgbouncer" in targets:
        pgb_bin = find_pgbouncer()
        if pgb_bin is None:
            msg = "pgbouncer not found and cannot be installed: pgbouncer columns skipped"
            log(msg)
            notes.append(msg)
            targets.remove("pgbouncer")
    if not targets:
        log("no target left to run")
        return 2

    cleanup = Cleanup()
    root = Path(tempfile.mkdtemp(prefix="shardgate-bench-"))
    cleanup.push(f"remove {root}", lambda: shutil.rmtree(root, ignore_errors=True))
    chown_to_pg(root)
    max_clients = max(2000, args.idle_clients + 100)
    pg_port, pgb_port, sg_port = free_ports(3)
    versions: list[str] = []
    failed = False
    try:
        cluster = Cluster(root, pg_port)
        cluster.init()
        cleanup.push("stop PostgreSQL", cluster.stop)
        cluster.start()
        versions.append(cluster.version())
        log(f"PostgreSQL on 127.0.0.1:{pg_port}, data in {cluster.data}")
        cluster.prepare(args.scale)

        live: dict[str, Target] = {}
        if "direct" in targets:
            live["direct"] = Target("direct", pg_port)
        if pgb_bin:
            t = start_pgbouncer(pgb_bin, root, pgb_port, pg_port, args.pool_size, max_clients)
            cleanup.push("stop pgbouncer", lambda t=t: stop_process(t.proc))
            live["pgbouncer"] = t
            versions.append(run([pgb_bin, "-V"], timeout=10).stdout.splitlines()[0])
        if "shardgate" in targets:
            t = start_shardgate(sg_bin, root, sg_port, pg_port, args.pool_size, max(5000, max_clients))
            cleanup.push("stop shardgate", lambda t=t: stop_process(t.proc))
            live["shardgate"] = t
            versions.append(f"shardgate {sg_bin}")
        for t in live.values():
            try:
                wait_ready(t)
                log(f"{t.name} ready on 127.0.0.1:{t.port}" + (f" (pid {t.proc.pid})" if t.proc else ""))
            except RuntimeError as e:
                t.broken = t.broken or str(e)
                log(t.broken_note())
                failed = True

        matrix = build_matrix(args.clients, args.tpcb_clients)
        if args.warmup > 0:
            warm = Workload("select-only", "simple", max(args.clients))
            for t in live.values():
                if not t.broken:
                    log(f"warm-up {t.name} ({args.warmup} s)")
                    run_pgbench(t, warm, args.warmup)
        results: dict[tuple[Workload, str], RunResult] = {}
        rounds: dict[tuple[Workload, str], list[RunResult]] = {}
        total = len(matrix) * len(targets) * args.rounds
        step = 0
        for w in matrix:
            for k in range(args.rounds):
                # Each round runs the targets back to back, in turn first and last.
                for name in (targets if k % 2 == 0 else targets[::-1]):
                    step += 1
                    r = run_pgbench(live[name], w, args.duration)
                    rounds.setdefault((w, name), []).append(r)
                    log(f"[{step:>2}/{total}] {w.label:<22} c={w.clients:<3} {name:<9} {r.cell():>8}"
                        + (f"  ({r.detail})" if r.status == "FAIL" else "")
                        + (f"  {r.cpu_us_per_tx:.1f} µs/tx" if r.cpu_us_per_tx else ""))
            for name in targets:
                results[(w, name)] = median_result(rounds[(w, name)])

        idle: list[IdleResult] = []
        if not args.skip_idle and args.idle_clients > 0:
            for name in ("pgbouncer", "shardgate"):
                if name in live:
                    log(f"idle clients: {args.idle_clients} logins to {name} ...")
                    r = measure_idle(live[name], args.idle_clients, workers=args.login_threads,
                                     query=args.idle_query)
                    idle.append(r)
                    per = r.bytes_per_client
                    log(f"idle {name}: {r.opened} open, "
                        + ("FAIL" if per is None else f"{per:.0f} bytes/client")
                        + (f" ({r.error})" if r.error else ""))

        headers, rows = table_rows(matrix, targets, results, rounds if args.rounds > 1 else None)
        if args.rounds > 1:
            notes.append("tps and CPU are the medians of the rounds; a ratio is the median of "
                         "the rounds' ratios (each of two runs side by side)")
        ih, irows = idle_rows(idle)
        notes += failure_notes(matrix, targets, results, idle)
        notes += [t.broken_note() for t in live.values() if t.broken]
        failed = failed or any(r.status == "FAIL" for r in results.values()) or any(
            r.bytes_per_client is None or r.error for r in idle)
        header = (f"duration {args.duration} s"
                  + (f" × {args.rounds} rounds (medians)" if args.rounds > 1 else "")
                  + f", scale {args.scale}, pool size {args.pool_size}, "
                  f"{os.cpu_count()} CPUs; " + "; ".join(versions))

        print()
        print(header)
        print()
        print(format_text(headers, rows))
        if idle:
            print()
            print(format_text(ih, irows))
        if notes:
            print()
            print("\n".join(f"note: {n}" for n in notes))
        if args.markdown:
            md = [f"# shardgate benchmark\n\n{header}\n", "## pgbench tps\n", format_markdown(headers, rows)]
            if idle:
                md += ["\n## Idle-client memory\n", format_markdown(ih, irows)]
            if notes:
                md += ["\n## Notes\n", "\n".join(f"- {n}" for n in notes)]
            args.markdown.write_text("\n".join(md) + "\n")
            log(f"markdown written to {args.markdown}")
        return 1 if failed else 0
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        cleanup.run()


if __name__ == "__main__":
    sys.exit(main())
