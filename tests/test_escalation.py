"""Escalation of alerts nobody acknowledged in time, against a real PostgreSQL.

Alerts are raised the way they are in service (a nurse posts a report); tests then move
an alert's ``ack_deadline`` into the past rather than waiting for it. The app behind
``client`` runs its own escalation loop: its interval is set to an hour here, so it
escalates nothing while a test escalates on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from safetyreport.alerts.escalation import BATCH_SIZE, escalate_due, escalation_task
from safetyreport.audit import verify_chains
from safetyreport.background import BackgroundRunner
from safetyreport.db.embedded import app_url
from safetyreport.db.pool import Conn, connect, create_pool, transaction
from safetyreport.settings import AlertSettings, Settings
from tests.helpers.processes import ServeProcess, serving
from tests.helpers.reports import bp_report, create_report, dissociation_report
from tests.helpers.rules import queue_cadss_alerts
from tests.helpers.waiting import WAIT_SECONDS, eventually
from tests.helpers.world import World

Headers = dict[str, str]
CRISIS = "bp-hypertensive-crisis"
WEBHOOK = "http://127.0.0.1:9/hook"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test settings, with the app's own escalation loop asleep (see the module doc)."""
    return replace(
        settings, alerts=replace(settings.alerts, escalation_interval=timedelta(hours=1))
    )


@pytest.fixture
def alert_settings(settings: Settings) -> AlertSettings:
    return settings.alerts


async def escalate(pool: asyncpg.Pool, settings: AlertSettings, *, limit: int = BATCH_SIZE) -> int:
    """One batch in a transaction of its own, as the background task runs it."""
    async with transaction(pool) as conn:
        return await escalate_due(conn, settings, limit=limit)


async def escalate_on(conn: Conn, settings: AlertSettings) -> int:
    async with conn.transaction():
        return await escalate_due(conn, settings)


@pytest.fixture
async def app_pool(settings: Settings, database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool as the service has one: the unprivileged application role."""
    pool = await create_pool(app_url(settings, database_url), max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
async def nurse(world: World) -> Headers:
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("nina", "nurse", ["C1", "C2"])
    return await world.login("nina")


async def raise_alert(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    headers: Headers,
    body: dict[str, Any],
    rule_id: str = CRISIS,
) -> uuid.UUID:
    """Post ``body`` and return the alert of ``rule_id`` it raised."""
    report = await create_report(client, headers, body)
    alert_id: uuid.UUID | None = await db.fetchval(
        "SELECT a.id FROM alerts a JOIN alert_reports ar ON ar.alert_id = a.id"
        " WHERE ar.report_id = $1::uuid AND a.rule_id = $2",
        report["id"],
        rule_id,
    )
    assert alert_id is not None, f"{rule_id} raised no alert"
    return alert_id


def crisis(patient: str = "PT-001", clinic: str = "C1") -> dict[str, Any]:
    return bp_report(
        clinic, patient_ref=patient, systolic=185, diastolic=100, symptoms=["chest_pain"]
    )


async def make_overdue(db: asyncpg.Connection[Any], *alert_ids: uuid.UUID) -> None:
    await db.execute(
        "UPDATE alerts SET ack_deadline = now() - interval '1 minute' WHERE id = ANY($1)",
        list(alert_ids),
    )


async def alert(db: asyncpg.Connection[Any], alert_id: uuid.UUID) -> asyncpg.Record:
    row: asyncpg.Record | None = await db.fetchrow("SELECT * FROM alerts WHERE id = $1", alert_id)
    assert row is not None
    return row


async def escalations(db: asyncpg.Connection[Any], alert_id: uuid.UUID) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT * FROM alert_events WHERE alert_id = $1 AND action = 'escalated' ORDER BY id",
        alert_id,
    )


async def db_now(db: asyncpg.Connection[Any]) -> datetime:
    now: datetime = await db.fetchval("SELECT now()")
    return now


async def escalation_counts(db: asyncpg.Connection[Any]) -> dict[uuid.UUID, tuple[int, int]]:
    """Per alert: (escalated events, escalation_level)."""
    rows = await db.fetch(
        "SELECT a.id, a.escalation_level,"
        " (SELECT count(*) FROM alert_events e"
        "   WHERE e.alert_id = a.id AND e.action = 'escalated') AS events"
        " FROM alerts a"
    )
    return {r["id"]: (r["events"], r["escalation_level"]) for r in rows}


# --- one alert ----------------------------------------------------------------------


async def test_an_overdue_critical_alert_escalates_once(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: Headers,
    app_pool: asyncpg.Pool,
    alert_settings: AlertSettings,
) -> None:
    alert_id = await raise_alert(client, db, nurse, crisis())
    await make_overdue(db, alert_id)
    before = await alert(db, alert_id)
    with_webhook = replace(
        alert_settings, webhook_urls=(WEBHOOK,), webhook_secret="escalation-test-secret-of-32-bytes"
    )

    start = await db_now(db)
    assert await escalate(app_pool, with_webhook) == 1
    end = await db_now(db)

    after = await alert(db, alert_id)
    assert (after["status"], after["escalation_level"]) == ("open", 1)
    assert after["revision"] == before["revision"] + 1
    # A new deadline of the rule's 5 minutes, counted from the moment of escalation.
    assert start + timedelta(minutes=5) <= after["ack_deadline"] <= end + timedelta(minutes=5)

    [event] = await escalations(db, alert_id)
    assert event["actor"] == "system:escalation"
    assert event["details"] == {
        "level": 1,
        "deadline_was": before["ack_deadline"].isoformat(timespec="microseconds"),
        "next_deadline": after["ack_deadline"].isoformat(timespec="microseconds"),
    }
    [entry] = await db.fetch(
        "SELECT * FROM audit_entries WHERE action = 'alert.escalated' AND object_id = $1",
        str(alert_id),
    )
    assert (entry["chain"], entry["actor"]) == ("clinic:C1", "system:escalation")
    assert entry["details"] == {"event_id": event["id"], **event["details"]}
    assert (await verify_chains(db)).ok

    [note] = await db.fetch("SELECT * FROM notifications WHERE event = 'escalated'")
    assert (note["alert_id"], note["target"], note["status"]) == (alert_id, WEBHOOK, "pending")
    assert note["payload"]["alert"]["escalation_level"] == 1

    # The new deadline has not passed: nothing more to do.
    assert await escalate(app_pool, with_webhook) == 0
    assert len(await escalations(db, alert_id)) == 1
    assert (await alert(db, alert_id))["escalation_level"] == 1


async def test_each_missed_deadline_escalates_one_level_further(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: Headers,
    app_pool: asyncpg.Pool,
    alert_settings: AlertSettings,
) -> None:
    alert_id = await raise_alert(client, db, nurse, crisis())
    for level in (1, 2, 3):
        await make_overdue(db, alert_id)
        assert await escalate(app_pool, alert_settings) == 1
        assert (await alert(db, alert_id))["escalation_level"] == level
    assert [e["details"]["level"] for e in await escalations(db, alert_id)] == [1, 2, 3]


async def test_acknowledged_and_resolved_alerts_never_escalate(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: Headers,
    app_pool: asyncpg.Pool,
    alert_settings: AlertSettings,
) -> None:
    acknowledged = await raise_alert(client, db, nurse, crisis("PT-001"))
    resolved = await raise_alert(client, db, nurse, crisis("PT-002"))
    await make_overdue(db, acknowledged, resolved)
    await db.execute(
        "UPDATE alerts SET status = 'acknowledged', acknowledged_at = now(), ack_deadline = NULL"
        " WHERE id = $1",
        acknowledged,
    )
    # Even with a deadline left behind in the past, a resolved alert is done.
    await db.execute(
        "UPDATE alerts SET status = 'resolved', resolved_at = now(), resolution_reason = 'ok'"
        " WHERE id = $1",
        resolved,
    )

    assert await escalate(app_pool, alert_settings) == 0
    for alert_id in (acknowledged, resolved):
        assert await escalations(db, alert_id) == []
        assert (await alert(db, alert_id))["escalation_level"] == 0


async def test_info_alerts_never_escalate(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: Headers,
    app_pool: asyncpg.Pool,
    alert_settings: AlertSettings,
) -> None:
    await queue_cadss_alerts(db)
    body = dissociation_report(cadss_total=12)
    alert_id = await raise_alert(client, db, nurse, body, "dissociation-present")
    info = await alert(db, alert_id)
    assert (info["severity"], info["status"], info["ack_deadline"]) == ("info", "open", None)

    assert await escalate(app_pool, alert_settings) == 0
    assert await escalations(db, alert_id) == []


@pytest.mark.parametrize(
    ("systolic", "severity", "deadlines", "expected"),
    [
        (180, "urgent", {}, timedelta(minutes=60)),
        (185, "critical", {"critical": timedelta(minutes=3)}, timedelta(minutes=3)),
        (180, "urgent", {"urgent": timedelta(minutes=7)}, timedelta(minutes=7)),
    ],
)
async def test_the_new_deadline_follows_the_severity(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: Headers,
    app_pool: asyncpg.Pool,
    alert_settings: AlertSettings,
    systolic: int,
    severity: str,
    deadlines: dict[str, timedelta],
    expected: timedelta,
) -> None:
    rule = {"urgent": "bp-severe-hypertension", "critical": CRISIS}[severity]
    # A rule that sets no minutes of its own takes its severity's.
    await db.execute("UPDATE alert_rules SET ack_minutes = NULL WHERE id = $1", rule)
    symptoms = ["chest_pain"] if severity == "critical" else []
    body = bp_report(systolic=systolic, diastolic=100, symptoms=symptoms)
    alert_id = await raise_alert(client, db, nurse, body, rule)
    await make_overdue(db, alert_id)
    configured = replace(
        alert_settings, ack_deadlines={**alert_settings.ack_deadlines, **deadlines}
    )

    start = await db_now(db)
    assert await escalate(app_pool, configured) == 1
    end = await db_now(db)

    after = await alert(db, alert_id)
    assert after["severity"] == severity
    assert start + expected <= after["ack_deadline"] <= end + expected


async def test_a_severity_without_a_deadline_escalates_once_and_then_waits(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: Headers,
    app_pool: asyncpg.Pool,
    alert_settings: AlertSettings,
) -> None:
    """Deadline passed, then the severity's deadline was configured away: no new one."""
    alert_id = await raise_alert(client, db, nurse, crisis())
    # The rule's own minutes would give it one: this rule takes its severity's.
    await db.execute("UPDATE alert_rules SET ack_minutes = NULL WHERE id = $1", CRISIS)
    await make_overdue(db, alert_id)
    deadlines = {k: v for k, v in alert_settings.ack_deadlines.items() if k != "critical"}
    configured = replace(alert_settings, ack_deadlines=deadlines)

    assert await escalate(app_pool, configured) == 1
    assert await escalate(app_pool, configured) == 0
    after = await alert(db, alert_id)
    assert (after["escalation_level"], after["ack_deadline"]) == (1, None)
    [event] = await escalations(db, alert_id)
    assert event["details"]["next_deadline"] is None


# --- several escalators at once ---------------------------------------------------------


async def test_concurrent_batches_escalate_each_alert_exactly_once(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: Headers,
    settings: Settings,
    database_url: str,
    alert_settings: AlertSettings,
) -> None:
    for i in range(30):
        await raise_alert(client, db, nurse, crisis(f"PT-{i:03d}", clinic=f"C{1 + i % 2}"))
    # Besides the 30 crisis alerts, each clinic has a blood-pressure cluster alert.
    await db.execute("UPDATE alerts SET ack_deadline = now() - interval '1 minute'")
    total = await db.fetchval("SELECT count(*) FROM alerts")
    assert total >= 30

    async def drain(pool: asyncpg.Pool) -> int:
        # Small batches, so batches from different pools overlap and compete.
        escalated = 0
        while count := await escalate(pool, alert_settings, limit=3):
            escalated += count
        return escalated

    url = app_url(settings, database_url)
    pools = [await create_pool(url, max_size=2) for _ in range(4)]
    try:
        counts = await asyncio.gather(*(drain(p) for p in pools for _ in range(2)))
    finally:
        await asyncio.gather(*(p.close() for p in pools))

    assert sum(counts) == total
    assert set((await escalation_counts(db)).values()) == {(1, 1)}
    assert await db.fetchval("SELECT count(*) FROM alert_events WHERE action = 'escalated'") == (
        total
    )
    assert (await verify_chains(db)).ok


async def test_escalation_waits_for_a_report_submission_instead_of_deadlocking(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: Headers,
    settings: Settings,
    database_url: str,
    alert_settings: AlertSettings,
) -> None:
    """A submission locks its clinic's audit chain, then the alert it attaches to.

    Escalation must take those locks in the same order, or the two deadlock and one of
    them (perhaps the nurse's report) is aborted.
    """
    alert_id = await raise_alert(client, db, nurse, crisis())
    await make_overdue(db, alert_id)
    escalator = await connect(app_url(settings, database_url))
    try:
        async with db.transaction():
            # Where a submission stands after writing its audit entry...
            await db.execute("SELECT 1 FROM audit_chains WHERE chain = 'clinic:C1' FOR UPDATE")
            escalation = asyncio.create_task(escalate_on(escalator, alert_settings))
            pid = escalator.get_server_pid()

            async def escalator_blocked() -> bool:
                blocked: bool = await db.fetchval(
                    "SELECT cardinality(pg_blocking_pids($1)) > 0", pid
                )
                return blocked

            await eventually(escalator_blocked, "the escalation to wait for the audit chain")
            # ...and its next step: attaching the report to the open alert.
            await db.execute("UPDATE alerts SET last_seen_at = now() WHERE id = $1", alert_id)
        assert await asyncio.wait_for(escalation, WAIT_SECONDS) == 1
    finally:
        await escalator.close()
    assert len(await escalations(db, alert_id)) == 1


# --- the background loop -------------------------------------------------------------


@contextlib.asynccontextmanager
async def escalating(pool: asyncpg.Pool, settings: AlertSettings) -> AsyncIterator[None]:
    """The escalation task under a background runner, stopped (and awaited) on the way out."""
    runner = BackgroundRunner(pool)
    runner.add(escalation_task(settings))
    runner.start()
    try:
        yield
    finally:
        assert await asyncio.wait_for(runner.stop(), 5) == {}


@pytest.mark.timeout(60)
async def test_the_escalation_task_escalates_overdue_alerts_by_itself(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: Headers,
    app_pool: asyncpg.Pool,
    alert_settings: AlertSettings,
) -> None:
    alert_id = await raise_alert(client, db, nurse, crisis())
    every_second = replace(alert_settings, escalation_interval=timedelta(seconds=1))
    async with escalating(app_pool, every_second):
        # Made overdue while the loop already runs: a later pass must pick it up.
        await make_overdue(db, alert_id)

        async def escalated() -> bool:
            return bool(await escalations(db, alert_id))

        await eventually(escalated, "the loop to escalate the alert")
    assert (await alert(db, alert_id))["escalation_level"] == 1


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.timeout(60)
async def test_the_escalation_task_keeps_going_after_a_database_error(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: Headers,
    app_pool: asyncpg.Pool,
    alert_settings: AlertSettings,
) -> None:
    alert_id = await raise_alert(client, db, nurse, crisis())
    await make_overdue(db, alert_id)
    # Fails the claim (it needs UPDATE on alerts) until granted back; this database only.
    await db.execute("REVOKE UPDATE ON alerts FROM safetyreport_app")
    # On the runner's logger itself: the app's logging setup replaces the root's handlers.
    records = _Records()
    logger = logging.getLogger("safetyreport.background")
    logger.addHandler(records)
    every_second = replace(alert_settings, escalation_interval=timedelta(seconds=1))
    try:
        async with escalating(app_pool, every_second):

            async def failed() -> bool:
                return bool(records.records)

            await eventually(failed, "the loop to log the failure")
            assert "escalation failed" in records.records[0].getMessage()
            await db.execute("GRANT UPDATE ON alerts TO safetyreport_app")

            async def escalated() -> bool:
                return bool(await escalations(db, alert_id))

            await eventually(escalated, "the loop to escalate after the error")
    finally:
        logger.removeHandler(records)
    assert (await alert(db, alert_id))["escalation_level"] == 1


# --- two service processes -------------------------------------------------------------


def escalating_service(
    database_url: str, tmp_path: Path, name: str
) -> contextlib.AbstractAsyncContextManager[ServeProcess]:
    """``safetyreport serve`` (no demo data) escalating every second."""
    every_second = {"SAFETYREPORT_ESCALATION_INTERVAL_SECONDS": "1"}
    return serving(database_url, tmp_path, name, env=every_second, data_dir=tmp_path / "data")


@pytest.mark.end_to_end
@pytest.mark.timeout(90)
async def test_two_service_processes_escalate_each_alert_exactly_once(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: Headers,
    database_url: str,
    tmp_path: Path,
) -> None:
    for i in range(8):
        await raise_alert(client, db, nurse, crisis(f"PT-{i:03d}", clinic=f"C{1 + i % 2}"))
    async with (
        escalating_service(database_url, tmp_path, "first") as first,
        escalating_service(database_url, tmp_path, "second") as second,
    ):
        await db.execute("UPDATE alerts SET ack_deadline = now() - interval '1 minute'")

        async def all_escalated() -> bool:
            return all(events for events, _ in (await escalation_counts(db)).values())

        await eventually(all_escalated, "both processes to escalate every alert")
        # Give both processes a few more passes at a second escalation.
        await asyncio.sleep(3.5)
        counts = await escalation_counts(db)
        assert await first.terminate() == 0, first.stderr()
        assert await second.terminate() == 0, second.stderr()

    assert len(counts) >= 8
    assert set(counts.values()) == {(1, 1)}
    assert (await verify_chains(db)).ok
