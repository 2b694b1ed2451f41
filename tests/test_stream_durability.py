"""The alert stream sends only events the synchronous standby has (broker.confirm_durable).

Under synchronous replication a commit waits for the standby; if that wait is cut short
(a backend terminated while its server shuts down for a switchover, or a cancelled wait)
the transaction is committed on the primary alone, visible there, and lost when the
standby takes over. The stream must not tell anyone of such an event until the standby
has it.

The test needs a server whose every commit waits for a standby that never comes
(``synchronous_standby_names``, a server-wide setting), so it runs a PostgreSQL of its
own: on the shared one it would stall every other test's commits.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from safetyreport.alerts import events
from safetyreport.alerts.broker import LISTENER_NAME, AlertBroker
from safetyreport.audit.chain import SYSTEM_CLI
from safetyreport.db.migrations import migrate
from safetyreport.db.pool import connect
from safetyreport.settings import Settings
from tests.helpers.postgres import admin, embedded_server, with_database
from tests.helpers.reports import bp_report, create_report
from tests.helpers.waiting import eventually
from tests.helpers.world import World

pytestmark = pytest.mark.end_to_end  # a PostgreSQL server of its own


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """A migrated database on a server of this test's own (replaces conftest's)."""
    with embedded_server() as server:
        await admin(server, "CREATE DATABASE safetyreport")
        url = with_database(server, "safetyreport")
        await migrate(url)
        yield url


async def wait_event(db: asyncpg.Connection[Any], pid: int) -> str | None:
    value: str | None = await db.fetchval(
        "SELECT wait_event FROM pg_stat_activity WHERE pid = $1", pid
    )
    return value


async def require_a_standby(db: asyncpg.Connection[Any], url: str, standby: str) -> None:
    """Make every commit wait for ``standby`` ('': for nobody), once in force."""
    await db.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{standby}'")
    await db.execute("SELECT pg_reload_conf()")

    async def in_force() -> bool:
        probe = await connect(url)
        try:
            return bool(await probe.fetchval("SHOW synchronous_standby_names") == standby)
        finally:
            await probe.close()

    await eventually(in_force, f"synchronous_standby_names = {standby!r}")


async def test_an_event_committed_on_the_primary_alone_is_streamed_once_the_standby_has_it(
    world: World,
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    database_url: str,
    settings: Settings,
) -> None:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    nurse = await world.login("nina")
    broker: AlertBroker = client.app.state.safetyreport.broker
    assert await broker.wait_listening()
    subscription = broker.subscribe(None)
    report = await create_report(client, nurse, bp_report(systolic=185, diastolic=125))
    [alert] = report["alerts"]
    opened = await subscription.next(idle_seconds=10)  # while replication is as usual
    assert opened is not None
    assert subscription.queue.empty()
    [listener] = await db.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", LISTENER_NAME
    )

    await require_a_standby(db, database_url, "a_standby_that_never_comes")
    writer = await connect(database_url)
    try:

        async def note() -> int:
            async with writer.transaction():
                return await events.record(
                    writer,
                    alert_id=uuid.UUID(alert["id"]),
                    actor=SYSTEM_CLI,
                    action="noted",
                    details={"note": "committed here, never on the standby"},
                    settings=settings.alerts,
                )

        recording = asyncio.create_task(note())

        async def writer_waits_for_the_standby() -> bool:
            return await wait_event(db, writer.get_server_pid()) == "SyncRep"

        await eventually(writer_waits_for_the_standby, "the commit waiting for the standby")
        # Cut the wait short: PostgreSQL warns that the transaction "has already
        # committed locally, but might not have been replicated to the standby".
        await db.execute("SELECT pg_cancel_backend($1)", writer.get_server_pid())
        event_id = await asyncio.wait_for(recording, 10)
    finally:
        await writer.close()
    assert await db.fetchval("SELECT count(*) FROM alert_events WHERE id = $1", event_id) == 1

    # The broker heard its NOTIFY and read it, and now waits for the standby itself.
    async def listener_waits_for_the_standby() -> bool:
        return await wait_event(db, listener["pid"]) == "SyncRep"

    await eventually(listener_waits_for_the_standby, "the listener waiting for the standby")
    assert subscription.queue.empty(), "streamed before the standby had it"

    # The standby has it (here: synchronous replication ends, as Patroni ends it when
    # the standby is lost for good): the event goes out.
    await require_a_standby(db, database_url, "")
    event = await subscription.next(idle_seconds=10)
    assert event is not None
    assert event.id == event_id
    broker.unsubscribe(subscription)
