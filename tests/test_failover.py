"""Failover and switchover under load, on a three-node Patroni cluster (docs/operations.md).

The service runs against the cluster with the multi-host DATABASE_URL
(``target_session_attrs=read-write``) while 20 clients submit reports with retries and
idempotency keys (tests/helpers/load.py), alerts are made overdue so the service
escalates them meanwhile, and an alert stream is open. Then the primary is

- SIGKILLed, PostgreSQL and Patroni both: Patroni promotes the synchronous standby;
- or demoted on purpose (a switchover through Patroni's REST API).

Afterwards every acknowledged report exists exactly once with its audit entry and its
alerts, no alert was escalated twice, ``safetyreport audit verify`` passes with the
signed checkpoints taken before the failover, the service answered 503 with
Retry-After (never 500) while no primary was available, and the alert stream, cut as
the primary goes, resumed with Last-Event-ID and missed no event. The time without a
primary and the p99 latency around it are printed (``-s``), not asserted: timing is
never a pass/fail criterion.

One cluster for the module (``ha_cluster``); each test has a database of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from safetyreport.db.migrations import migrate
from safetyreport.db.pool import connect
from tests.helpers.ha import (
    NODES,
    HaCluster,
    make_cluster_folder,
    patroni_installed,
    wait_for_leader,
)
from tests.helpers.load import (
    CLINICS,
    MAKE_OVERDUE,
    NURSES,
    WEBHOOK_ENV,
    Load,
    acknowledged_at_least,
    assert_escalated_once,
    assert_stored_exactly_once,
    clients_of,
    logins,
    request_errors,
    run_load,
    submissions,
    wait_for,
)
from tests.helpers.processes import ServeProcess, cli_env, run_cli, serving
from tests.helpers.service import UserSpec, login, seed

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.end_to_end,
    pytest.mark.skipif(not patroni_installed(), reason="needs patroni and etcd (apt-get)"),
]

REPORTS_PER_TEST = 400
LOAD_SECONDS = 150.0
# Patroni's leader key lives 15 s (scripts/ha-cluster): a new leader well within this.
NEW_LEADER_SECONDS = 90.0
# Signs checkpoints (an audit reader) and watches the alert stream (an alert worker).
AUDITOR = UserSpec("admin0", "admin", all_clinics=True)
CHECKPOINTS = "/api/v1/audit/checkpoints"
# What a connection to the cluster may raise while no node is the primary.
DATABASE_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # TargetServerAttributeNotMatched: no read-write host
)
STREAM = "/api/v1/alerts/stream"


@pytest.fixture(scope="module")
def ha_cluster() -> Iterator[HaCluster]:
    cluster = HaCluster(make_cluster_folder())
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
async def cluster_url(ha_cluster: HaCluster) -> str:
    """A migrated, seeded database of this test's own on a healthy cluster."""
    # A node killed by an earlier test rejoins (pg_rewind) before this one starts.
    await asyncio.to_thread(ha_cluster.start)
    name = f"failover_{uuid.uuid4().hex[:8]}"
    admin = await connect(ha_cluster.url("postgres"))
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    # asyncpg tries the hosts in order and gives up at a server without the database
    # (not an unreachable one): wait until every node has replayed its creation.
    for node in NODES:
        await wait_for(_database_on(ha_cluster.node_url(node, name)), f"{name} on {node}")
    url = ha_cluster.url(name)
    await migrate(url)
    await seed(url, CLINICS, [*NURSES, AUDITOR])
    return url


def _database_on(url: str) -> Any:
    async def check() -> bool:
        try:
            conn = await connect(url)
        except asyncpg.InvalidCatalogNameError:
            return False
        await conn.close()
        return True

    return check


# --- what runs during the failover ---------------------------------------------------


@dataclass
class Escalations:
    """Moves alert deadlines into the past, on a connection of its own that follows the
    primary (as the service's does), so the service escalates during the failover."""

    url: str
    made_overdue: set[uuid.UUID] = field(default_factory=set)

    async def once(self) -> int:
        conn = await connect(self.url)
        try:
            ids = {r["id"] for r in await conn.fetch(MAKE_OVERDUE)}
        finally:
            await conn.close()
        self.made_overdue.update(ids)  # only what was committed (acknowledged)
        return len(ids)

    async def keep_passing(self) -> None:
        while True:
            with contextlib.suppress(*DATABASE_ERRORS):
                await self.once()
            await asyncio.sleep(0.3)


@dataclass
class StreamWatch:
    """An alert stream that reconnects with Last-Event-ID whenever it is cut."""

    base_url: str
    headers: dict[str, str]
    ids: list[int] = field(default_factory=list)
    reconnects: int = 0
    # Set once the first subscription is made (the service subscribes before it sends its
    # "connected" comment): every event committed from then on reaches this stream.
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    # Set: hang up at the next line and reconnect, as a tablet that lost its network does.
    hang_up: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=httpx.Timeout(30)) as http:
            while True:
                headers = dict(self.headers)
                if self.ids:
                    headers["Last-Event-ID"] = str(self.ids[-1])
                with contextlib.suppress(httpx.HTTPError):
                    async with http.stream("GET", STREAM, headers=headers) as response:
                        if response.status_code == 200:
                            async for line in response.aiter_lines():
                                if line.startswith(":"):
                                    self.subscribed.set()
                                if line.startswith("id:"):
                                    self.ids.append(int(line[3:].strip()))
                                if self.hang_up.is_set():
                                    self.hang_up.clear()
                                    break
                self.reconnects += 1
                await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def running(coro: Any) -> AsyncIterator[None]:
    task = asyncio.create_task(coro)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- the measurements (printed) ------------------------------------------------------


def p99(latencies: list[float]) -> float:
    if not latencies:
        return float("nan")
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def report_timings(what: str, load: Load, started: float, leader_at: float) -> None:
    """Print the time without a primary and the p99 latency before, during and after."""
    before = [s for t, s, _ in load.samples if t < started]
    during = [s for t, s, _ in load.samples if started <= t < leader_at]
    after = [s for t, s, _ in load.samples if leader_at <= t < leader_at + 10]
    unavailable = [t for t, _, outcome in load.samples if outcome == "503" and t >= started]
    print(
        f"\n{what}: no primary for {leader_at - started:.1f} s (Patroni); "
        f"503 answers from +{(unavailable[0] - started) if unavailable else 0:.1f} s "
        f"to +{(unavailable[-1] - started) if unavailable else 0:.1f} s "
        f"({len(unavailable)} of them); p99 latency of an attempt: "
        f"before {p99(before) * 1000:.0f} ms, while no primary {p99(during) * 1000:.0f} ms, "
        f"10 s after {p99(after) * 1000:.0f} ms; {load.outcome()}"
    )


# --- the tests -------------------------------------------------------------------------


async def _under_load(
    cluster: HaCluster, url: str, tmp_path: Path, name: str, disrupt: Any
) -> tuple[Load, ServeProcess, Escalations, StreamWatch]:
    """Run the load against ``serve`` on the cluster, ``disrupt`` it once a quarter of the
    reports are in, and check what must hold afterwards."""
    env = {"SAFETYREPORT_ESCALATION_INTERVAL_SECONDS": "1", **WEBHOOK_ENV}
    load = Load(submissions(REPORTS_PER_TEST, patients=40))
    escalations = Escalations(url)
    async with serving(url, tmp_path, name, env=env) as service:
        tokens = await logins(service.base_url)
        auditor = await login(service.base_url, AUDITOR.username)
        stream = StreamWatch(service.base_url, auditor)
        async with running(stream.run()), running(escalations.keep_passing()):
            # Subscribed before the first report, so the stream must give every event.
            await asyncio.wait_for(stream.subscribed.wait(), 30)
            clients = asyncio.create_task(
                run_load(load, clients_of(tokens, service.base_url), LOAD_SECONDS)
            )
            await wait_for(
                acknowledged_at_least(load, REPORTS_PER_TEST // 4),
                "a quarter of the reports",
                load=(clients, load),
            )
            checkpoint, key = await _sign_checkpoints(service.base_url, auditor, tmp_path)
            old = cluster.leader()
            assert old is not None, cluster.members()
            started = time.monotonic()
            # The stream is cut with the primary: it must resume with Last-Event-ID (a
            # replay from the new primary) once the service can reach one again.
            stream.hang_up.set()
            await asyncio.to_thread(disrupt, old)
            new = await asyncio.to_thread(wait_for_leader, cluster, old, NEW_LEADER_SECONDS)
            leader_at = time.monotonic()
            await clients
            report_timings(f"{name} ({old} -> {new})", load, started, leader_at)
            print(f"{name}: the alert stream was resumed {stream.reconnects} times")

            async def every_deadline_passed() -> bool:
                return await escalations.once() == 0

            await wait_for(every_deadline_passed, "every alert's deadline to be passed")
            await wait_for(_all_escalated(url, escalations), "every overdue alert escalated")
            # A few more passes of the escalation task, which must find nothing left to do.
            await asyncio.sleep(3.5)
            await wait_for(_stream_caught_up(url, stream), "the alert stream to catch up")
        assert await service.terminate() == 0, service.stderr()[-3000:]

    assert not load.server_errors, f"server errors: {load.server_errors[:3]}"
    assert set(load.failures) <= {"503", "409"}, f"not a clean 503: {load.outcome()}"
    assert load.failures["503"] > 0, f"the clients never saw the outage: {load.outcome()}"
    assert load.unavailable_without_retry_after == 0, load.outcome()
    assert not request_errors(service.stderr()), request_errors(service.stderr())[:3]
    assert stream.reconnects >= 1, "the alert stream was never resumed"
    db = await connect(url)
    try:
        await assert_stored_exactly_once(db, load)
        await assert_escalated_once(db, escalations.made_overdue)
        await _assert_streamed_every_event(db, stream)
    finally:
        await db.close()
    verified = await run_cli(
        "audit",
        "verify",
        "--public-key",
        str(key),
        "--checkpoint",
        str(checkpoint),
        env=cli_env(url, tmp_path / f"{name}-data"),
    )
    assert verified.code == 0, verified.stdout + verified.stderr
    assert "verified" in verified.stdout, verified.stdout
    return load, service, escalations, stream


async def _sign_checkpoints(
    base_url: str, auditor: dict[str, str], tmp_path: Path
) -> tuple[Path, Path]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        signed = await http.post(CHECKPOINTS, headers=auditor)
        assert signed.status_code == 201, signed.text
        key = await http.get("/api/v1/audit/public-key", headers=auditor)
        assert key.status_code == 200, key.text
    checkpoint, key_file = tmp_path / "checkpoints.json", tmp_path / "audit-key.pem"
    checkpoint.write_bytes(signed.content)
    key_file.write_bytes(key.content)
    return checkpoint, key_file


def _all_escalated(url: str, escalations: Escalations) -> Any:
    async def check() -> bool:
        conn = await connect(url)
        try:
            level: int | None = await conn.fetchval(
                "SELECT min(escalation_level) FROM alerts WHERE id = ANY($1)",
                list(escalations.made_overdue),
            )
        finally:
            await conn.close()
        return level == 1

    return check


def _stream_caught_up(url: str, stream: StreamWatch) -> Any:
    async def check() -> bool:
        conn = await connect(url)
        try:
            latest: int = await conn.fetchval("SELECT coalesce(max(id), 0) FROM alert_events")
        finally:
            await conn.close()
        return bool(stream.ids) and max(stream.ids) >= latest

    return check


async def _assert_streamed_every_event(db: asyncpg.Connection[Any], stream: StreamWatch) -> None:
    """The stream, subscribed before the first report, gave every stored event and nothing
    else: none committed on the old primary alone (alerts.broker.confirm_durable), none
    lost across a resume, even one numbered below the Last-Event-ID that committed after
    it, as a transaction in flight at the failover does (alerts.broker.late_events). At
    least once: a resumed stream may repeat one. Ids follow insertion, not commit order,
    so the stream's first id need not be the lowest: the whole table is compared."""
    assert stream.ids, "the stream gave no event"
    stored = {r["id"] for r in await db.fetch("SELECT id FROM alert_events")}
    streamed = set(stream.ids)
    assert streamed <= stored, f"streamed events that are not stored: {streamed - stored}"
    assert stored <= streamed, f"events never streamed: {sorted(stored - streamed)[:20]}"


@pytest.mark.timeout(300)
async def test_primary_killed_under_load_a_replica_takes_over_and_nothing_is_lost(
    ha_cluster: HaCluster, cluster_url: str, tmp_path: Path
) -> None:
    await _under_load(ha_cluster, cluster_url, tmp_path, "failover", ha_cluster.kill)


@pytest.mark.timeout(300)
async def test_switchover_under_load_moves_the_service_to_the_new_primary(
    ha_cluster: HaCluster, cluster_url: str, tmp_path: Path
) -> None:
    def switchover(old: str) -> None:
        candidate = ha_cluster.sync_standby()
        assert candidate is not None, ha_cluster.members()
        ha_cluster.switchover(old, candidate)

    await _under_load(ha_cluster, cluster_url, tmp_path, "switchover", switchover)


@pytest.mark.timeout(120)
async def test_a_process_on_a_standby_is_not_ready_and_says_so_in_its_metrics(
    ha_cluster: HaCluster, cluster_url: str, tmp_path: Path
) -> None:
    """A load balancer takes out an instance whose database is a replica: /health/ready
    answers 503 with Retry-After while /health (liveness) stays 200."""
    standby = ha_cluster.sync_standby()
    assert standby is not None, ha_cluster.members()
    database = cluster_url.rsplit("/", 1)[1].split("?")[0]
    token = "m" * 40
    env = {"SAFETYREPORT_METRICS_TOKEN": token}
    on_standby = ha_cluster.node_url(standby, database)
    async with (
        # A replica takes no migration: the schema came with the primary's WAL.
        serving(on_standby, tmp_path, "standby", "--no-migrate", env=env) as service,
        httpx.AsyncClient(base_url=service.base_url, timeout=10) as http,
    ):
        ready = await http.get("/health/ready")
        assert ready.status_code == 503, ready.text
        assert ready.json()["database"] == "replica"
        assert ready.headers["retry-after"]
        assert (await http.get("/health")).status_code == 200
        metrics = await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert metrics.status_code == 200
        primary = [
            sample.value
            for family in text_string_to_metric_families(metrics.text)
            for sample in family.samples
            if sample.name == "safetyreport_database_primary"
        ]
        assert primary == [0.0], primary
