"""Ingest benchmark: how close ``POST /api/v1/reports`` comes to PostgreSQL's own limit.

    scripts/bench ingest [--quick] [--duration S] [--connections 1,8,32] [--clinics N] ...
    .venv/bin/python -m bench.ingest ...                  (the same, from the repository)

In a fresh temporary data folder it

1. starts the service as a user would: ``safetyreport serve --workers 2`` (the
   Dockerfile's setting), which starts the embedded PostgreSQL and migrates; one
   webhook URL is configured (a small receiver in this process answers 204), so alerts
   write outbox rows and the sender delivers them, as in production;
2. creates the clinics (8 by default) and one nurse per clinic with the CLI, and logs
   in once per connection: each connection is one tablet with its own session token,
   connection i reporting for clinic i mod N;
3. copies the schema into a second database on the same server (``safetyreport
   migrate`` with DATABASE_URL) with the same clinics, users and sessions, for pgbench;
4. at each concurrency, drives the service with wrk and ``bench/ingest.lua`` (every
   request a distinct valid blood-pressure report with its own Idempotency-Key, about
   half crossing an alert threshold), then pgbench with the same SQL for one report
   (``bench/pgbench_script.py``) on the second database, as the same unprivileged role,
   at the same concurrency and for as many reports as the service just stored (the
   pattern rules read more as a clinic's reports pile up, so both databases must grow
   alike); the two alternate in ``--rounds`` slices, so that the machine's other load
   falls on both alike;
5. after each pgbench slice, runs the minimal durable write for half as long: one
   statement inserting a report and its audit entry (``MINIMAL_WRITE`` in
   ``bench/pgbench_script.py``), on a third database of the same server copied from
   pgbench's before any load, as the same role: the physical limit of the machine;
6. prints, per concurrency, the median and the spread (min-max) over the rounds of the
   requests per second, p50 and p99 latency of each, the ratios of the medians, the peak
   RSS of the service's process tree (sampled twice a second; PostgreSQL excluded) and the
   CPU time per report of the service and of PostgreSQL; then runs ``safetyreport audit
   verify`` on what the service stored.

``--data-folder PATH`` runs the service on an existing data folder (the service's
``--data-dir``, or a folder holding it as ``data/``, e.g. one a history generator built)
instead of a fresh one, so that ingest with years of history can be compared with an
empty database: ``--clinics`` of its clinics get the load (each with a nurse of this
run), those with no report of the last 31 days first, and the run's reports stay in it.
pgbench's and the minimal write's databases are made empty in the same server each run.

Each clinic has one audit chain, and every report of a clinic takes its chain's head
lock until it commits: with ``--clinics 1`` all writers queue on one lock, which then
bounds the service and pgbench alike (the worst case of one very busy clinic).

The machine's other load moves the absolute figures; the ratio is the figure to
compare. Needs wrk (``apt-get install wrk``); pgbench ships with the embedded server.
``--profile DIR`` records each measured wrk run of the service with py-spy (which
slows the service down: profile runs are not benchmark runs).

``--statements`` profiles PostgreSQL instead (``bench/pg_stats.py``): the server is
restarted with pg_stat_statements, and each wrk slice's statements, buffers (hit, read,
dirtied, written), WAL (bytes, full-page images) and checkpoint writes are printed per
report. ``--pg-setting NAME=VALUE`` runs with a server setting (``shared_buffers=2GB``);
both are set with ALTER SYSTEM and reset at the end of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench import pg_stats
from bench.common import (
    BenchError,
    RssSampler,
    Service,
    log,
    machine_info,
    post_json,
    server_cpu,
    tree_cpu,
)
from bench.pgbench_script import MINIMAL_WRITE, pgbench_script
from safetyreport.db.embedded import pgbin

HERE = Path(__file__).resolve().parent
T = TypeVar("T")
LUA_SCRIPT = HERE / "ingest.lua"
PGBENCH_DB = "safetyreport_pgbench"
MINIMAL_DB = "safetyreport_minimal"
APP_ROLE = "safetyreport_app"
# The worker count of the production image (Dockerfile: serve --workers 2).
PRODUCTION_WORKERS = 2
NURSE_PASSWORD = "bench-nurse-password-long-enough"  # noqa: S105 (a throwaway database)
WEBHOOK_SECRET = "bench-webhook-secret-of-at-least-32-bytes"  # noqa: S105
WARMUP_CONNECTIONS = 8
GOAL_RATIO = 0.8
GOAL_P99_MS = 50.0
STRETCH_RATIO_OF_MINIMAL = 0.25


# --- measurements ------------------------------------------------------------------


@dataclass
class Measurement:
    rate: float  # completed reports per second
    p50_ms: float
    p99_ms: float
    done: int
    failed: int
    note: str = ""
    # CPU milliseconds per report: of the service's processes, of PostgreSQL's.
    app_cpu_ms: float = 0.0
    db_cpu_ms: float = 0.0
    drain_s: float = 0.0


@dataclass
class Slice:
    """One run of wrk or pgbench: what it completed, its latencies, the CPU it cost."""

    done: int
    failed: int
    seconds: float
    # (latency in ms, how many requests it stands for): percentile points from wrk, every
    # transaction from pgbench's log.
    latencies: list[tuple[float, float]]
    note: str = ""
    app_cpu_s: float = 0.0
    db_cpu_s: float = 0.0
    # How long the webhook sender took after wrk stopped to deliver what was still due.
    drain_s: float = 0.0


def combine(slices: Sequence[Slice]) -> Measurement:
    done = sum(s.done for s in slices)
    seconds = sum(s.seconds for s in slices)
    latencies = sorted(point for s in slices for point in s.latencies)

    def per_report(cpu: float) -> float:
        return cpu * 1000 / done if done else 0.0

    return Measurement(
        rate=done / seconds if seconds else 0.0,
        p50_ms=weighted_percentile(latencies, 50),
        p99_ms=weighted_percentile(latencies, 99),
        done=done,
        failed=sum(s.failed for s in slices),
        note="; ".join(s.note for s in slices if s.note),
        app_cpu_ms=per_report(sum(s.app_cpu_s for s in slices)),
        db_cpu_ms=per_report(sum(s.db_cpu_s for s in slices)),
        drain_s=max((s.drain_s for s in slices), default=0.0),
    )


@dataclass
class Row:
    """One concurrency: each round's measurement of the service, of pgbench running the
    service's SQL, and of the minimal durable write (the machine's limit)."""

    connections: int
    service: list[Measurement]
    pgbench: list[Measurement]
    minimal: list[Measurement]
    peak_rss_mib: float

    @property
    def ratio(self) -> float:
        """Service against pgbench, from the medians of the rounds."""
        return _ratio(self.service, self.pgbench)

    @property
    def ratio_of_minimal(self) -> float:
        return _ratio(self.service, self.minimal)


def _ratio(top: Sequence[Measurement], bottom: Sequence[Measurement]) -> float:
    below = median_of(bottom, "rate")
    return median_of(top, "rate") / below if below else 0.0


def median_of(rounds: Sequence[Measurement], name: str) -> float:
    values = [getattr(m, name) for m in rounds]
    return statistics.median(values) if values else 0.0


def spread(rounds: Sequence[Measurement], name: str, digits: int = 0) -> str:
    """'median (min-max)' of one figure over the rounds."""
    values = [getattr(m, name) for m in rounds]
    if not values:
        return "-"
    mid = statistics.median(values)
    if len(values) == 1:
        return f"{mid:.{digits}f}"
    return f"{mid:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


@dataclass
class Report:
    machine: dict[str, str]
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    totals: dict[str, int] = field(default_factory=dict)
    # With --data-folder: what the folder held before the run.
    totals_before: dict[str, int] = field(default_factory=dict)
    verified: str = ""
    # With --statements: per concurrency, what PostgreSQL did per report (pg_stats).
    postgres: dict[int, dict[str, Any]] = field(default_factory=dict)


# --- machine ------------------------------------------------------------------------


# --- webhook receiver ----------------------------------------------------------------


class _Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    received = 0
    _lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with _Hook._lock:
            _Hook.received += 1
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HookServer(ThreadingHTTPServer):
    # socketserver's default backlog of 5 resets the sender's concurrent connections.
    request_queue_size = 256
    daemon_threads = True


@contextlib.contextmanager
def webhook_receiver() -> Iterator[str]:
    server = _HookServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


# --- helpers -----------------------------------------------------------------------


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def with_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def weighted_percentile(points: Sequence[tuple[float, float]], q: float) -> float:
    """The ``q``-th percentile of sorted (value, weight) points."""
    total = sum(weight for _, weight in points)
    if not total:
        return 0.0
    target, seen = q / 100 * total, 0.0
    for value, weight in points:
        seen += weight
        if seen >= target:
            return value
    return points[-1][0]


# --- the benchmark -------------------------------------------------------------------


@dataclass
class Options:
    connections: list[int]
    duration: int
    rounds: int
    warmup: int
    workers: int
    clinics: int
    patients: int
    keep: bool
    profile: Path | None
    profile_format: str
    py_spy: str | None
    json_out: Path | None
    webhook: bool = True
    verify: bool = True
    minimal: bool = True
    # An existing data folder of the service to run on (its history kept), else a fresh one.
    data_folder: Path | None = None
    # PostgreSQL settings for the run (ALTER SYSTEM, reset at the end), and whether to
    # read pg_stat_statements and the server's counters around each wrk slice.
    server_settings: dict[str, str] = field(default_factory=dict)
    statements: bool = False


_QUIET_CLINICS_FIRST = """
SELECT code FROM clinics c
ORDER BY EXISTS (SELECT FROM reports r
                 WHERE r.clinic_id = c.id AND r.occurred_at > now() - interval '31 days'),
         c.id
LIMIT $1
"""

# The alerts earlier runs' load left unresolved in a data folder (raised by reports of
# this benchmark's nurses, named bench-<run>-<clinic>), closed before a run measures:
# the service escalates an unacknowledged alert again and again (an event, an audit
# entry and a webhook each time), and a later run would measure that work, not its own
# reports. A network whose queue is worked holds none; the history's are all resolved.
NURSE_PREFIX = "bench-"
_CLOSE_EARLIER_RUNS_ALERTS = """
WITH left_open AS (
    SELECT DISTINCT a.id
    FROM alerts a
    JOIN alert_reports ar ON ar.alert_id = a.id
    JOIN reports r ON r.id = ar.report_id
    JOIN users u ON u.id = r.created_by
    WHERE a.status <> 'resolved' AND starts_with(u.username, $1)
)
UPDATE alerts a
SET status = 'resolved', resolved_at = now(), ack_deadline = NULL, updated_at = now(),
    resolution_reason = 'closed by the ingest benchmark before a later run',
    revision = a.revision + 1
FROM left_open WHERE a.id = left_open.id
"""


async def close_earlier_runs_alerts(conn: asyncpg.Connection[Any]) -> int:
    """Resolve the alerts earlier runs' reports left open; how many."""
    done: str = await conn.execute(_CLOSE_EARLIER_RUNS_ALERTS, NURSE_PREFIX)
    return int(done.split()[-1])


async def alter_system(
    conn: asyncpg.Connection[Any], settings: dict[str, str], reset: bool = False
) -> None:
    """Set (or reset) server settings for the next start."""
    for name, value in settings.items():
        # ALTER SYSTEM takes no parameters; the names (checked by parse_args) and values
        # are the operator's own command line.
        quoted = value.replace("'", "''")
        await conn.execute(
            f"ALTER SYSTEM RESET {name}" if reset else f"ALTER SYSTEM SET {name} = '{quoted}'"
        )


async def shown_settings(conn: asyncpg.Connection[Any], names: Sequence[str]) -> dict[str, str]:
    return {name: str(await conn.fetchval(f"SHOW {name}")) for name in names}


class IngestBench:
    def __init__(self, options: Options, workdir: Path, wrk: str, pgbench: Path) -> None:
        self.o = options
        self.workdir = workdir
        self.wrk = wrk
        self.pgbench = pgbench
        self.service = Service(workdir, data_dir=options.data_folder)
        self.data_dir = self.service.data_dir
        self.base_url = self.service.base_url
        self.run_id = uuid.uuid4().hex[:8]
        self.owner_url = ""
        self.postmaster = 0
        self.minimal_defines: list[str] = []
        # Sessions (tokens) needed: one per connection of the largest run.
        self.clients = max([*options.connections, WARMUP_CONNECTIONS if options.warmup else 1])
        # The service's clinics: C1..CN in a fresh folder; in an existing one, its first N
        # clinics (their history is what the run is about), C-codes added if it has fewer.
        self.codes = [f"C{i + 1}" for i in range(options.clinics)]
        # Nurses get names of their own in an existing folder, which may have some.
        self.nurse_prefix = (
            "nurse" if options.data_folder is None else f"{NURSE_PREFIX}{self.run_id}"
        )
        self.pg_profiles: dict[int, pg_stats.Profile] = {}

    @property
    def server_settings(self) -> dict[str, str]:
        settings = dict(self.o.server_settings)
        if self.o.statements:
            settings.update(pg_stats.STATEMENT_SETTINGS)
        return settings

    # -- lifecycle --

    def start_service(self, webhook: str | None) -> None:
        env = {}
        if webhook is not None:
            env = {
                "SAFETYREPORT_WEBHOOK_URLS": webhook,
                "SAFETYREPORT_WEBHOOK_SECRET": WEBHOOK_SECRET,
            }
        self.service.start(self.o.workers, env)

    @property
    def serve(self) -> subprocess.Popen[bytes] | None:
        return self.service.process

    def restart_with_settings(self, webhook: str | None) -> None:
        """Restart the embedded server with the run's settings (shared_preload_libraries
        needs a restart): the service, its last client, stops it."""
        settings = self.server_settings
        self.on_owner(lambda conn: alter_system(conn, settings))
        self.service.stop()
        self.service.forget_owner_url()
        self.start_service(webhook)
        self.owner_url = self.service.owner_url()
        if self.o.statements:
            self.on_owner(
                lambda conn: conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            )

    def on_owner(self, work: Callable[[asyncpg.Connection[Any]], Awaitable[T]]) -> T:
        """``work`` on a connection of its own to the service's database, as its owner."""

        async def run() -> T:
            conn = await asyncpg.connect(self.owner_url)
            try:
                return await work(conn)
            finally:
                await conn.close()

        return asyncio.run(run())

    def run_cli(self, *args: str, stdin: str | None = None, database_url: str | None = None) -> str:
        return self.service.run_cli(*args, stdin=stdin, database_url=database_url)

    # -- setup --

    def clinic_codes(self) -> list[str]:
        return self.codes

    def nurse(self, code: str) -> str:
        return f"{self.nurse_prefix}-{code.lower()}"

    async def existing_clinics(self) -> list[str]:
        """``--clinics`` clinics of the service's database, those with no report in the
        last 31 days first: an earlier run's load, dated today, would fill the pattern
        rules' windows (up to 30 days) of a clinic it went to."""
        conn = await asyncpg.connect(self.owner_url)
        try:
            rows = await conn.fetch(_QUIET_CLINICS_FIRST, self.o.clinics)
        finally:
            await conn.close()
        return [r["code"] for r in rows]

    def create_people(
        self, database_url: str | None, codes: Sequence[str], existing: Sequence[str] = ()
    ) -> None:
        """The clinics ``codes`` (but those ``existing``) and a nurse for each, with the CLI."""
        for code in codes:
            if code in existing:
                continue
            self.run_cli(
                "clinic", "add", code, "--name", f"Bench clinic {code}", database_url=database_url
            )

        def add(code: str) -> str:
            return self.run_cli(
                "user",
                "add",
                self.nurse(code),
                "--role",
                "nurse",
                "--clinic",
                code,
                "--password-stdin",
                stdin=NURSE_PASSWORD + "\n",
                database_url=database_url,
            )

        with _threads(4) as pool:
            list(pool.map(add, codes))

    def login_tokens(self) -> Path:
        """One session per connection: line i is 'token clinic' of connection i."""
        codes = self.clinic_codes()

        def login(i: int) -> str:
            code = codes[i % len(codes)]
            answer = post_json(
                f"{self.base_url}/api/v1/auth/login",
                {"username": self.nurse(code), "password": NURSE_PASSWORD},
            )
            return f"{answer['token']} {code}"

        with _threads(4) as pool:
            lines = list(pool.map(login, range(self.clients)))
        path = self.workdir / "tokens.txt"
        path.write_text("\n".join(lines) + "\n")
        return path

    async def prepare_pgbench_database(self) -> tuple[str, Path]:
        """A second database with the same schema, clinics, users and a session per client.

        Always empty, also when the service runs on an existing data folder: pgbench's
        figure is the same SQL on an empty database."""
        conn = await asyncpg.connect(self.owner_url)
        try:
            for name in (PGBENCH_DB, MINIMAL_DB):  # left by an earlier run on this folder
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await conn.execute(f'CREATE DATABASE "{PGBENCH_DB}"')
        finally:
            await conn.close()
        owner = with_database(self.owner_url, PGBENCH_DB)
        self.run_cli("migrate", database_url=owner)
        # pgbench's script names its clinics C1..CN.
        codes = [f"C{i + 1}" for i in range(self.o.clinics)]
        self.create_people(owner, codes)
        conn = await asyncpg.connect(owner)
        try:
            sessions = []
            for i in range(self.clients):
                code = codes[i % len(codes)]
                user_id = await conn.fetchval(
                    "SELECT id FROM users WHERE username = $1", self.nurse(code)
                )
                token_hash = hashlib.sha256(f"pgbench-{i}".encode()).digest()
                sessions.append((token_hash, user_id))
            await conn.executemany(
                "INSERT INTO sessions (token_hash, user_id, expires_at)"
                " VALUES ($1, $2, now() + interval '12 hours')",
                sessions,
            )
            content = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM information_schema.columns"
                " WHERE table_name = 'audit_entries' AND column_name = 'content')"
            )
            clinic = await conn.fetchval("SELECT min(id) FROM clinics")
            user = await conn.fetchval("SELECT min(id) FROM users")
            self.minimal_defines = [f"clinic={clinic}", f"uid={user}"]
        finally:
            await conn.close()
        script = self.workdir / "report.pgbench"
        script.write_text(pgbench_script(audit_content=bool(content), outbox=self.o.webhook))
        return with_user(owner, APP_ROLE), script

    async def prepare_minimal_database(self) -> tuple[str, Path]:
        """A third database, a copy of pgbench's before any load, for the minimal write."""
        conn = await asyncpg.connect(self.owner_url)
        try:
            await conn.execute(f'CREATE DATABASE "{MINIMAL_DB}" TEMPLATE "{PGBENCH_DB}"')
        finally:
            await conn.close()
        script = self.workdir / "minimal.pgbench"
        script.write_text(MINIMAL_WRITE)
        return with_user(with_database(self.owner_url, MINIMAL_DB), APP_ROLE), script

    # -- load --

    def run_wrk(self, tokens: Path, connections: int, seconds: int, label: str) -> Slice:
        env = dict(
            os.environ,
            BENCH_TOKENS=str(tokens),
            BENCH_RUN=f"{self.run_id}-{label}",
            BENCH_EPOCH=str(int(time.time())),
            BENCH_PATIENTS=str(self.o.patients),
        )
        command = [
            self.wrk,
            "-t", str(connections),
            "-c", str(connections),
            "-d", f"{seconds}s",
            "--timeout", "10s",
            "-s", str(LUA_SCRIPT),
            f"{self.base_url}/api/v1/reports",
        ]  # fmt: skip
        assert self.serve is not None
        counted = self.o.statements and label != "warmup"
        before = self.on_owner(pg_stats.snapshot) if counted else None
        app_cpu, db_cpu = tree_cpu(self.serve.pid), self.db_cpu()
        with self._profiling(label, seconds):
            result = subprocess.run(  # noqa: S603
                command, env=env, capture_output=True, text=True, timeout=seconds + 120, check=False
            )
        # Deliveries still due belong to this run (their CPU too), not to pgbench's after it.
        drain = asyncio.run(self.drain_outbox()) if self.o.webhook else 0.0
        app_cpu, db_cpu = tree_cpu(self.serve.pid) - app_cpu, self.db_cpu() - db_cpu
        if result.returncode != 0:
            raise BenchError(f"wrk failed:\n{result.stdout}\n{result.stderr}")

        match = re.search(r"^BENCH_RESULT (.*)$", result.stdout, re.MULTILINE)
        points = re.search(r"^BENCH_LATENCY_US (.*)$", result.stdout, re.MULTILINE)
        if match is None or points is None:
            raise BenchError(f"wrk printed no result:\n{result.stdout}\n{result.stderr}")
        values = {k: int(v) for k, v in (pair.split("=") for pair in match[1].split())}
        if before is not None:
            # The server's counters reach the shared statistics within a second of a
            # backend going idle.
            time.sleep(1.5)
            after = self.on_owner(pg_stats.snapshot)
            profile = self.pg_profiles.setdefault(connections, pg_stats.Profile())
            profile.add(before, after, values["created"])
        failure = re.search(r"^BENCH_FAILURE (.*)$", result.stdout, re.MULTILINE)
        socket_errors = sum(
            values[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
        )
        note = ""
        if values["refused"] or socket_errors:
            note = f"{values['refused']} non-201 answers, {socket_errors} socket errors"
            if failure:
                note += f"; first: {failure[1][:200]}"
            log(f"wrk {label}: {note}")
        # wrk gives percentiles (every half percent), not each request: each point stands
        # for an equal share of the requests.
        percentiles = [int(v) / 1000 for v in points[1].split(",")]
        weight = values["requests"] / len(percentiles)
        return Slice(
            done=values["created"],
            failed=values["refused"] + socket_errors,
            seconds=values["duration_us"] / 1e6,
            latencies=[(ms, weight) for ms in percentiles],
            note=note,
            app_cpu_s=app_cpu,
            db_cpu_s=db_cpu,
            drain_s=drain,
        )

    async def drain_outbox(self, limit: float = 300.0) -> float:
        """Wait until no notification is pending; return how long that took."""
        started = time.monotonic()
        conn = await asyncpg.connect(self.owner_url)
        try:
            while time.monotonic() - started < limit:
                pending = await conn.fetchval(
                    "SELECT count(*) FROM notifications WHERE status = 'pending'"
                )
                if not pending:
                    break
                await asyncio.sleep(0.2)
            else:
                log(f"notifications still pending after {limit:.0f} s")
        finally:
            await conn.close()
        return time.monotonic() - started

    @contextlib.contextmanager
    def _profiling(self, label: str, seconds: int) -> Iterator[None]:
        if self.o.profile is None or label == "warmup" or self.serve is None:
            yield
            return
        assert self.o.py_spy is not None
        self.o.profile.mkdir(parents=True, exist_ok=True)
        suffix = {"flamegraph": "svg", "speedscope": "json", "raw": "txt"}[self.o.profile_format]
        output = self.o.profile / f"service-{label}.{suffix}"
        spy = subprocess.Popen(  # noqa: S603
            [
                self.o.py_spy, "record", "--pid", str(self.serve.pid), "--subprocesses",
                "--nonblocking", "--rate", "200", "--duration", str(seconds),
                "--format", self.o.profile_format, "--output", str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / f"py-spy-{label}.log").open("wb"),
        )  # fmt: skip
        try:
            yield
        finally:
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.terminate()
                spy.wait()
            log(f"profile of {label}: {output}")

    def run_pgbench(
        self,
        url: str,
        script: Path,
        clients: int,
        transactions: int,
        label: str,
        *,
        seconds: int = 0,
        defines: Sequence[str] = (),
    ) -> Slice:
        """pgbench with as many transactions in all as the service just stored reports, so
        that both databases grow alike (the pattern rules read more as they grow); or for
        ``seconds`` (the minimal write)."""
        prefix = self.workdir / f"pgbench-{label}"
        amount = ["-T", str(seconds)] if seconds else ["-t", str(max(1, transactions // clients))]
        command = [
            str(self.pgbench),
            "-n", "-M", "prepared",
            "-f", str(script),
            "-c", str(clients),
            "-j", str(min(clients, os.cpu_count() or 1)),
            *amount,
            "-D", f"n_clinics={self.o.clinics}",
            "-D", f"n_patients={self.o.patients}",
            *(item for define in defines for item in ("-D", define)),
            "-l", f"--log-prefix={prefix}",
            url,
        ]  # fmt: skip
        db_cpu = self.db_cpu()
        result = subprocess.run(  # noqa: S603
            command, capture_output=True, text=True, timeout=900, check=False
        )
        db_cpu = self.db_cpu() - db_cpu
        processed = re.search(r"number of transactions actually processed: (\d+)", result.stdout)
        tps = re.search(r"^tps = ([\d.]+)", result.stdout, re.MULTILINE)
        failed = re.search(r"number of failed transactions: (\d+)", result.stdout)
        if result.returncode != 0 or processed is None or tps is None:
            raise BenchError(f"pgbench failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        latencies: list[tuple[float, float]] = []
        for path in self.workdir.glob(f"pgbench-{label}.*"):
            for line in path.read_text().splitlines():
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():
                    latencies.append((int(fields[2]) / 1000, 1.0))
            path.unlink()
        errors = re.findall(r"^.*(?:ERROR|error).*$", result.stderr, re.MULTILINE)
        if errors:
            log(f"pgbench {label}: {errors[0][:300]}")
        done = int(processed[1])
        return Slice(
            done=done,
            failed=int(failed[1]) if failed else 0,
            # tps excludes the time to connect, like wrk's rate.
            seconds=done / float(tps[1]) if float(tps[1]) else 0.0,
            latencies=latencies,
            db_cpu_s=db_cpu,
        )

    def db_cpu(self) -> float:
        return server_cpu(self.postmaster) if self.postmaster else 0.0

    async def totals(self) -> dict[str, int]:
        conn = await asyncpg.connect(self.owner_url)
        try:
            row = await conn.fetchrow(
                """
                SELECT (SELECT count(*) FROM reports) AS reports,
                       -- What the pattern rules' windows (30 days at most) hold at
                       -- the clinics taking the load.
                       (SELECT count(*) FROM reports r JOIN clinics c ON c.id = r.clinic_id
                        WHERE c.code = ANY($1::text[])
                          AND r.occurred_at > now() - interval '31 days') AS recent_reports,
                       (SELECT count(*) FROM alerts) AS alerts,
                       (SELECT count(*) FROM alert_reports) AS alert_links,
                       (SELECT count(*) FROM audit_entries) AS audit_entries,
                       (SELECT count(*) FROM notifications) AS notifications,
                       (SELECT count(*) FROM notifications WHERE status = 'delivered')
                           AS delivered
                """,
                self.codes,
            )
            assert row is not None
            return dict(row.items())
        finally:
            await conn.close()

    # -- the whole run --

    def run(self) -> Report:
        report = Report(
            machine=machine_info(),
            settings={
                "connections": self.o.connections,
                "duration_s": self.o.duration,
                "rounds": self.o.rounds,
                "warmup_s": self.o.warmup,
                "workers": self.o.workers,
                "clinics": self.o.clinics,
                "patients_per_clinic": self.o.patients,
            },
        )
        with webhook_receiver() as webhook:
            try:
                self.start_service(webhook if self.o.webhook else None)
                assert self.serve is not None
                self.owner_url = self.service.owner_url()
                if self.server_settings:
                    log(f"restarting PostgreSQL with {self.server_settings}")
                    self.restart_with_settings(webhook if self.o.webhook else None)
                shown = ["server_version", "shared_buffers", *self.server_settings]
                settings = self.on_owner(lambda conn: shown_settings(conn, shown))
                report.machine["postgresql"] = settings.pop("server_version")
                report.settings["postgresql"] = settings
                existing: list[str] = []
                if self.o.data_folder is not None:
                    existing = asyncio.run(self.existing_clinics())
                    self.codes = existing + self.codes[len(existing) :]
                    closed = self.on_owner(close_earlier_runs_alerts)
                    report.totals_before = asyncio.run(self.totals())
                    report.totals_before["earlier_runs_alerts_closed"] = closed
                    log(f"on {self.data_dir}: {report.totals_before}; clinics {self.codes}")
                log(f"creating {self.o.clinics} clinic(s) and nurses with the CLI")
                self.create_people(None, self.codes, existing)
                tokens = self.login_tokens()
                log("preparing the pgbench database (safetyreport migrate, CLI, sessions)")
                pg_url, script = asyncio.run(self.prepare_pgbench_database())
                minimal_url, minimal_script = asyncio.run(self.prepare_minimal_database())
                self.postmaster = self.postmaster_pid()
                if self.o.webhook and self.o.data_folder is not None:
                    # What the service sent before the alerts were closed (escalations
                    # at its start) is delivered before anything is measured.
                    asyncio.run(self.drain_outbox())
                with RssSampler(self.serve.pid) as sampler:
                    if self.o.warmup:
                        log(
                            f"warming up both for {self.o.warmup} s"
                            f" at {WARMUP_CONNECTIONS} connections"
                        )
                        warm = self.run_wrk(tokens, WARMUP_CONNECTIONS, self.o.warmup, "warmup")
                        self.run_pgbench(pg_url, script, WARMUP_CONNECTIONS, warm.done, "warmup")
                    rounds = self.o.rounds
                    piece = max(1, round(self.o.duration / rounds))
                    for connections in self.o.connections:
                        log(
                            f"{connections} connection(s): {rounds} x (wrk {piece} s,"
                            f" pgbench as many reports)"
                        )
                        sampler.take_peak()
                        row = Row(connections, [], [], [], 0.0)
                        for i in range(rounds):
                            label = f"c{connections}-{i + 1}"
                            done = self.run_wrk(tokens, connections, piece, label)
                            row.service.append(combine([done]))
                            row.pgbench.append(
                                combine(
                                    [
                                        self.run_pgbench(
                                            pg_url, script, connections, done.done, label
                                        )
                                    ]
                                )
                            )
                            if self.o.minimal:
                                minimal = self.run_pgbench(
                                    minimal_url,
                                    minimal_script,
                                    connections,
                                    0,
                                    f"{label}-minimal",
                                    seconds=max(1, piece // 2),
                                    defines=self.minimal_defines,
                                )
                                row.minimal.append(combine([minimal]))
                        row.peak_rss_mib = sampler.take_peak() / 2**20
                        report.rows.append(row)
                        log(
                            f"  service {spread(row.service, 'rate')}/s"
                            f" p99 {spread(row.service, 'p99_ms', 1)} ms,"
                            f" pgbench {spread(row.pgbench, 'rate')}/s"
                            f" p99 {spread(row.pgbench, 'p99_ms', 1)} ms,"
                            f" minimal {spread(row.minimal, 'rate')}/s"
                        )
                    report.peak_rss_mib = sampler.overall / 2**20
                report.totals = asyncio.run(self.totals())
                report.totals["webhooks_received"] = _Hook.received
                if self.o.verify:
                    log("verifying every audit chain (safetyreport audit verify)")
                    report.verified = self.verify_chains()
                report.postgres = {c: p.summary() for c, p in self.pg_profiles.items()}
            finally:
                if self.server_settings and self.owner_url:
                    # The data folder keeps none of the run's settings.
                    with contextlib.suppress(OSError, asyncpg.PostgresError):
                        settings = self.server_settings
                        self.on_owner(lambda conn: alter_system(conn, settings, reset=True))
                self.service.stop()
        return report

    def verify_chains(self) -> str:
        """``safetyreport audit verify --full`` on the service's database: its last line."""
        result = subprocess.run(  # noqa: S603
            [*self.service.cli, "audit", "verify", "--full"],
            env=self.service.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        lines = (result.stdout.strip() or result.stderr.strip() or "no output").splitlines()
        if result.returncode != 0:
            log(f"audit verify failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        return lines[-1]

    def postmaster_pid(self) -> int:
        pid_file = self.data_dir / "pgdata" / "postmaster.pid"
        return int(pid_file.read_text().split()[0])


@contextlib.contextmanager
def _threads(count: int) -> Iterator[Any]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(count) as pool:
        yield pool


# --- output --------------------------------------------------------------------------


def render(report: Report) -> str:
    m = report.machine
    lines = [
        "",
        "Ingest benchmark: POST /api/v1/reports (wrk) against the same SQL in pgbench",
        f"machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory']} RAM;"
        f" PostgreSQL {m.get('postgresql', '?')}; Python {m['python']};"
        f" load average before: {m['load_before']}",
        f"service: safetyreport serve --workers {report.settings['workers']};"
        f" {report.settings['clinics']} clinic(s); per concurrency {report.settings['rounds']}"
        f" alternating rounds, {report.settings['duration_s']} s of wrk in all, pgbench for as"
        " many reports",
        "",
        "Each figure: the median of the rounds (min-max); ratios of the medians. 'minimal':"
        " one statement inserting a report and its audit entry (pgbench), the machine's limit.",
        "",
        "| connections | service req/s | p50 ms | p99 ms | pgbench tx/s | p50 ms | p99 ms"
        " | minimal tx/s | service/pgbench | service/minimal | service peak RSS"
        " | CPU ms/report: service | its PG | pgbench's PG |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report.rows:
        s, p = row.service, row.pgbench
        lines.append(
            f"| {row.connections} | {spread(s, 'rate')} | {spread(s, 'p50_ms', 1)}"
            f" | {spread(s, 'p99_ms', 1)} | {spread(p, 'rate')} | {spread(p, 'p50_ms', 1)}"
            f" | {spread(p, 'p99_ms', 1)} | {spread(row.minimal, 'rate')}"
            f" | {row.ratio:.2f}"
            f" | {f'{row.ratio_of_minimal:.3f}' if row.minimal else '-'}"
            f" | {row.peak_rss_mib:.0f} MiB"
            f" | {spread(s, 'app_cpu_ms', 2)} | {spread(s, 'db_cpu_ms', 2)}"
            f" | {spread(p, 'db_cpu_ms', 2)} |"
        )
    lines.append("")
    lines.append(f"service peak RSS over the whole run: {report.peak_rss_mib:.0f} MiB")
    t = report.totals
    if t:
        lines.append(
            f"stored by the service: {t['reports']} reports, {t['alerts']} alerts"
            f" ({t['alert_links']} report links), {t['audit_entries']} audit entries,"
            f" {t['notifications']} notifications ({t['delivered']} delivered,"
            f" {t['webhooks_received']} webhook posts received)"
        )
    if report.totals_before:
        lines.append(f"the data folder held before the run: {report.totals_before}")
    if any(m.drain_s for row in report.rows for m in row.service):
        lines.append(
            "webhook deliveries still due when wrk stopped were done within: "
            + ", ".join(
                f"{max(m.drain_s for m in row.service):.1f} s at {row.connections}"
                for row in report.rows
            )
            + " (waited for before pgbench ran; their CPU is counted for the service)"
        )
    if report.verified:
        lines.append(f"audit trail after the run: {report.verified}")
    if report.settings.get("postgresql"):
        lines.append(f"PostgreSQL settings: {report.settings['postgresql']}")
    if report.postgres:
        lines.append(pg_stats.render(report.postgres))
    for row in report.rows:
        failed = sum(m.failed for m in (*row.service, *row.pgbench, *row.minimal))
        if failed:
            notes = "; ".join(m.note for m in row.service if m.note) or "ok"
            lines.append(
                f"WARNING at {row.connections} connections: service {notes};"
                f" pgbench failed transactions: {sum(m.failed for m in row.pgbench)},"
                f" minimal: {sum(m.failed for m in row.minimal)}"
            )
    verdicts = []
    for row in report.rows:
        if row.connections in (8, 32):
            ok = row.ratio >= GOAL_RATIO
            verdicts.append(
                f"ratio at {row.connections}: {row.ratio:.2f} {'ok' if ok else 'MISSED'}"
            )
        if row.connections == 8:
            p99 = median_of(row.service, "p99_ms")
            ok = p99 < GOAL_P99_MS
            verdicts.append(f"p99 at 8: {p99:.1f} ms {'ok' if ok else 'MISSED'}")
            if row.minimal:
                ok = row.ratio_of_minimal >= STRETCH_RATIO_OF_MINIMAL
                verdicts.append(
                    f"stretch (>= {STRETCH_RATIO_OF_MINIMAL} of minimal at 8):"
                    f" {row.ratio_of_minimal:.3f} {'ok' if ok else 'MISSED'}"
                )
    if verdicts:
        lines.append(
            f"goal (ratio >= {GOAL_RATIO} at 8 and 32, p99 < {GOAL_P99_MS:.0f} ms at 8): "
            + "; ".join(verdicts)
        )
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="scripts/bench ingest", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--quick", action="store_true", help="short runs (about 1-2 minutes in all)"
    )
    parser.add_argument(
        "--duration",
        type=int,
        help="seconds of wrk per concurrency (default 30, quick 9); pgbench then stores as"
        " many reports, and the minimal write runs half as long",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="alternate wrk and pgbench this many times per concurrency, splitting the"
        " duration (default 3, also quick; at least 3 for a median and a spread): both then"
        " see the machine's other load alike",
    )
    parser.add_argument("--warmup", type=int, help="seconds of warm-up (default 5, quick 2)")
    parser.add_argument("--connections", default="1,8,32", help="comma-separated (default 1,8,32)")
    parser.add_argument(
        "--workers", type=int, default=PRODUCTION_WORKERS,
        help=f"service worker processes (default {PRODUCTION_WORKERS}, as in the Dockerfile)",
    )  # fmt: skip
    parser.add_argument(
        "--clinics", type=int, default=8, help="clinics, i.e. audit chains (default 8)"
    )
    parser.add_argument("--patients", type=int, default=2000, help="patients per clinic")
    parser.add_argument(
        "--no-webhook",
        action="store_true",
        help="configure no webhook: alerts then write no outbox rows and nothing is delivered",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip 'safetyreport audit verify' at the end"
    )
    parser.add_argument(
        "--no-minimal", action="store_true", help="skip the minimal durable write column"
    )
    parser.add_argument(
        "--data-folder",
        type=Path,
        help="run the service on this existing data folder (the service's --data-dir, or a"
        " folder holding it as data/), keeping its history, instead of a fresh one; its first"
        " --clinics clinics get the load. The run adds its reports to it. pgbench's and the"
        " minimal write's databases are made empty in it.",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--profile", type=Path, help="record py-spy profiles of the service here")
    parser.add_argument(
        "--profile-format", choices=("flamegraph", "speedscope", "raw"), default="flamegraph"
    )
    parser.add_argument("--py-spy", help="the py-spy program (default: found on PATH)")
    parser.add_argument(
        "--statements",
        action="store_true",
        help="restart PostgreSQL with pg_stat_statements and print, per concurrency, what it"
        " did per report: buffers, WAL, checkpoint writes and the costliest statements",
    )
    parser.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PostgreSQL setting for the run (e.g. shared_buffers=2GB), set with ALTER"
        " SYSTEM and a restart, reset at the end; repeatable",
    )
    args = parser.parse_args(argv)
    server_settings = {}
    for item in args.pg_setting:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z_][a-z0-9_.]*", name.strip()):
            parser.error(f"--pg-setting takes NAME=VALUE, got {item!r}")
        server_settings[name.strip()] = value.strip()
    connections = sorted({int(c) for c in args.connections.split(",") if c.strip()})
    if not connections or min(connections) < 1:
        parser.error("--connections takes positive numbers, e.g. 1,8,32")
    if args.clinics < 1 or args.patients < 1 or (args.rounds is not None and args.rounds < 1):
        parser.error("--clinics, --patients and --rounds must be at least 1")
    data_folder = None
    if args.data_folder is not None:
        data_folder = _service_data_dir(args.data_folder)
        if data_folder is None:
            parser.error(f"{args.data_folder} holds no pgdata/ (nor data/pgdata/)")
    py_spy = None
    if args.profile is not None:
        py_spy = args.py_spy or shutil.which("py-spy")
        if py_spy is None:
            parser.error("--profile needs py-spy: pip install py-spy (or give --py-spy PATH)")
    return Options(
        connections=connections,
        duration=args.duration or (9 if args.quick else 30),
        rounds=args.rounds or 3,
        warmup=args.warmup if args.warmup is not None else (2 if args.quick else 5),
        workers=args.workers,
        clinics=args.clinics,
        patients=args.patients,
        keep=args.keep,
        profile=args.profile,
        profile_format=args.profile_format,
        py_spy=py_spy,
        json_out=args.json,
        webhook=not args.no_webhook,
        verify=not args.no_verify,
        minimal=not args.no_minimal,
        data_folder=data_folder,
        server_settings=server_settings,
        statements=args.statements,
    )


def _service_data_dir(folder: Path) -> Path | None:
    """The service's data folder given as itself or as the folder holding it (data/)."""
    for candidate in (folder, folder / "data"):
        if (candidate / "pgdata").is_dir():
            return candidate.resolve()
    return None


def load_tools() -> tuple[str, Path] | None:
    """wrk and the embedded server's pgbench, or None (said why on stderr)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        print(
            "error: wrk is not installed. It drives the service's HTTP load:\n"
            "    sudo apt-get install wrk        (Debian and Ubuntu package 'wrk')",
            file=sys.stderr,
        )
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR is unset
            return wrk, pgbin("pgbench")
    except FileNotFoundError as exc:
        print(f"error: pgbench not found with the embedded PostgreSQL: {exc}", file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    tools = load_tools()
    if tools is None:
        return 2
    wrk, pgbench = tools
    workdir = Path(tempfile.mkdtemp(prefix="safetyreport-bench-"))
    try:
        report = IngestBench(options, workdir, wrk, pgbench).run()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"(files kept in {workdir})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # The service (and with it the embedded server) has stopped by now.
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        return 130
    print(render(report))
    if options.json_out is not None:
        options.json_out.write_text(json.dumps(asdict(report), indent=2))
    if options.keep:
        print(f"files kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
