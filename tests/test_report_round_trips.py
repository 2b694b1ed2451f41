"""How many statements (round trips to PostgreSQL) one report submission takes.

The write runs as the route runs it (``write_once`` around ``insert_report`` in one
transaction) on a connection that logs every statement it sends. The token lookup before
it is one more statement on its own (auth.service.resolve_token), counted here too. These
counts are what docs/performance.md states; a change that adds a round trip to every
report shows here.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from safetyreport.auth.service import resolve_token
from safetyreport.caller import Caller
from safetyreport.db.pool import connect
from safetyreport.idempotency import request_hash, write_once
from safetyreport.reports import service
from safetyreport.reports.validation import validate_report
from safetyreport.settings import Settings
from tests.helpers.reports import bp_report
from tests.helpers.world import World


async def _submit(
    conn: asyncpg.Connection[Any], settings: Settings, token: str, body: dict[str, Any]
) -> tuple[list[str], bytes]:
    """The statements one submission sends, and its stored response."""
    sent: list[str] = []

    def log(record: Any) -> None:
        sent.append(record.query)

    conn.add_query_logger(log)
    try:
        principal = await resolve_token(conn, token, settings.auth)
        caller = Caller(principal, "127.0.0.1")
        report = validate_report(body, skew=settings.reports.clock_skew)

        async def action(c: Any) -> tuple[int, bytes]:
            view = await service.insert_report(c, caller, report, settings.alerts)
            return 201, service.encode(view)

        async with conn.transaction():
            stored = await write_once(
                conn,
                action,
                user_id=principal.id,
                key=f"key-{uuid.uuid4()}",
                fingerprint=request_hash("POST", "/api/v1/reports", service.canonical_json(report)),
                ttl=settings.reports.idempotency_ttl,
            )
        await asyncio.sleep(0.05)  # the loggers are called soon after each statement
    finally:
        conn.remove_query_logger(log)
    return sent, stored.body


async def _token(world: World) -> str:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    headers = await world.login("nina")
    return headers["Authorization"].removeprefix("Bearer ")


async def test_round_trips_of_one_report(
    world: World, client: AsyncTestClient[Any], database_url: str, settings: Settings
) -> None:
    token = await _token(world)
    # A webhook is configured, so an opened alert writes an outbox row.
    settings = replace(
        settings, alerts=replace(settings.alerts, webhook_urls=("http://127.0.0.1:9/hook",))
    )
    quiet = bp_report(systolic=120, diastolic=80)
    pre_dose_hold = bp_report(patient_ref="PT-002", phase="pre_dose", systolic=150, diastolic=95)
    # Systolic 180: an urgent alert, and both pattern rules' windows read (too few to fire).
    urgent = bp_report(patient_ref="PT-003", systolic=180, diastolic=100)
    conn = await connect(database_url)
    try:
        # Each kind once first, as a pooled connection of the service has: asyncpg then
        # knows the types, the session's touch is done and the rules are compiled.
        for body in (quiet, pre_dose_hold, bp_report(patient_ref="PT-010", systolic=180)):
            await _submit(conn, settings, token, body)
        counts = []
        for body in (quiet, {**pre_dose_hold, "patient_ref": "PT-004"}, urgent):
            sent, answer = await _submit(conn, settings, token, body)
            counts.append(len(sent))
            assert answer.count(b'"rule":') == (0 if body is quiet else 1), answer
    finally:
        await conn.close()
    assert counts == [7, 11, 13]
