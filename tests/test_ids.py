"""New rows get time-ordered keys (UUIDv7): a report, the alert it raises and that
alert's webhook notification, each keyed by the moment it was made, so that years of
rows do not spread each new write over whole indexes (docs/performance.md)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from safetyreport.ids import new_id
from tests.helpers.reports import bp_report, create_report
from tests.helpers.world import World


def made_at(key: uuid.UUID) -> datetime:
    """A UUIDv7's first 48 bits: milliseconds since 1970 (RFC 9562)."""
    return datetime.fromtimestamp((key.int >> 80) / 1000, tz=UTC)


def test_keys_are_version_7_and_in_the_order_they_were_made() -> None:
    keys = [new_id() for _ in range(10_000)]
    assert {k.version for k in keys} == {7}
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    # Their bytes (what PostgreSQL's uuid order compares) are in that order too.
    assert [k.bytes for k in keys] == sorted(k.bytes for k in keys)


async def test_a_report_and_its_alert_are_keyed_by_the_time_they_were_stored(
    client: AsyncTestClient[Any], world: World, db: asyncpg.Connection[Any]
) -> None:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    headers = await world.login("nina")
    # 185/112: over the urgent blood-pressure threshold, so an alert is raised.
    report = await create_report(client, headers, bp_report(systolic=185, diastolic=112))
    report_id = uuid.UUID(report["id"])
    row = await db.fetchrow(
        "SELECT r.created_at, a.id AS alert_id, a.first_seen_at "
        "FROM reports r JOIN alert_reports ar ON ar.report_id = r.id "
        "JOIN alerts a ON a.id = ar.alert_id WHERE r.id = $1",
        report_id,
    )
    assert row is not None
    for key, stored in ((report_id, row["created_at"]), (row["alert_id"], row["first_seen_at"])):
        assert key.version == 7
        assert abs((made_at(key) - stored).total_seconds()) < 5
