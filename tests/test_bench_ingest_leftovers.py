"""The ingest benchmark on a data folder closes the alerts its earlier runs' reports left
open (bench/ingest.py), and only those: the service would escalate them during a later
run's measurement (an event, an audit entry and a webhook each, again and again)."""

from __future__ import annotations

from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from bench.ingest import NURSE_PREFIX, close_earlier_runs_alerts
from tests.helpers.reports import bp_report, create_report
from tests.helpers.world import World

# Over the urgent blood-pressure threshold: one alert per patient.
URGENT: dict[str, Any] = {"systolic": 185, "diastolic": 112}


async def test_only_the_alerts_of_earlier_runs_reports_are_closed(
    client: AsyncTestClient[Any], world: World, db: asyncpg.Connection[Any]
) -> None:
    await world.clinic("C1")
    await world.user(f"{NURSE_PREFIX}0a1b2c3d-c1", "nurse", ["C1"])
    await world.user("nina", "nurse", ["C1"])
    bench = await world.login(f"{NURSE_PREFIX}0a1b2c3d-c1")
    nina = await world.login("nina")
    await create_report(client, bench, bp_report(patient_ref="PT-BENCH", **URGENT))
    await create_report(client, nina, bp_report(patient_ref="PT-CLINIC", **URGENT))

    assert await close_earlier_runs_alerts(db) == 1
    rows = await db.fetch("SELECT group_key, status, ack_deadline FROM alerts ORDER BY group_key")
    assert [(r["group_key"], r["status"]) for r in rows] == [
        ("PT-BENCH", "resolved"),
        ("PT-CLINIC", "open"),
    ]
    assert rows[0]["ack_deadline"] is None
    # Nothing left to close.
    assert await close_earlier_runs_alerts(db) == 0
