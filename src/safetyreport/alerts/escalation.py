"""Escalating alerts nobody acknowledged in time.

An alert still open at its ``ack_deadline`` escalates: its level rises by one, the
escalation is recorded (event, audit entry, outbox notifications) and a new deadline
starts. Every service process runs the background task (``escalation_task``); alerts
are claimed with ``FOR UPDATE SKIP LOCKED`` in the transaction that escalates them, and
a claimed alert no longer matches once that commits, so each alert escalates exactly
once per deadline.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import asyncpg

from safetyreport import audit
from safetyreport.alerts import events
from safetyreport.audit.chain import format_time
from safetyreport.background import Periodic
from safetyreport.db.pool import Conn
from safetyreport.settings import AlertSettings

_log = logging.getLogger(__name__)

SYSTEM_ESCALATION = audit.Actor(name="system:escalation")
BATCH_SIZE = 100
# Its name among the background tasks (/health).
ESCALATION_TASK = "escalation"

# The clinics of the next batch of due alerts, so their audit chains can be locked first.
_DUE_CLINICS = """
SELECT DISTINCT due.clinic_id, c.code
FROM (SELECT clinic_id FROM alerts
      WHERE status = 'open' AND ack_deadline <= now()
      ORDER BY ack_deadline LIMIT $1) AS due
JOIN clinics c ON c.id = due.clinic_id
"""
# Claim and escalate in one statement. SKIP LOCKED: an alert another transaction holds
# (another escalation batch, an acknowledgement) is left to it; READ COMMITTED re-checks
# the WHERE clause on rows changed meanwhile, so an alert escalated by a batch that just
# committed is no longer due. The next deadline is the rule's minutes, else the
# severity's; a severity without a deadline gets none (NULL).
_ESCALATE = """
WITH due AS (
    SELECT id, ack_deadline FROM alerts
    WHERE status = 'open' AND ack_deadline <= now() AND clinic_id = ANY($2::bigint[])
    ORDER BY ack_deadline
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE alerts a
SET escalation_level = a.escalation_level + 1,
    ack_deadline = now() + coalesce(
        (SELECT r.ack_minutes * interval '1 minute' FROM alert_rules r WHERE r.id = a.rule_id),
        (SELECT d.deadline
         FROM unnest($3::text[], $4::interval[]) AS d(severity, deadline)
         WHERE d.severity = a.severity)),
    revision = a.revision + 1,
    updated_at = now()
FROM due
WHERE a.id = due.id
RETURNING a.id, a.escalation_level, due.ack_deadline AS deadline_was,
          a.ack_deadline AS next_deadline
"""


def _iso(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)


async def _escalate_batch(conn: Conn, settings: AlertSettings, limit: int) -> int:
    """Escalate up to ``limit`` due alerts in the caller's transaction; how many."""
    clinics = await conn.fetch(_DUE_CLINICS, limit)
    if not clinics:
        return 0
    # Chains before alerts, as report submissions do (no deadlock; see lock_chains).
    await audit.lock_chains(conn, [c["code"] for c in clinics])
    severities = list(settings.ack_deadlines)
    rows = await conn.fetch(
        _ESCALATE,
        limit,
        [c["clinic_id"] for c in clinics],
        severities,
        [settings.ack_deadlines[s] for s in severities],
    )
    for row in sorted(rows, key=lambda r: (r["deadline_was"], r["id"])):
        await _record(conn, row, settings)
    return len(rows)


async def _record(conn: Conn, row: asyncpg.Record, settings: AlertSettings) -> None:
    details: dict[str, Any] = {
        "level": row["escalation_level"],
        "deadline_was": _iso(row["deadline_was"]),
        "next_deadline": _iso(row["next_deadline"]),
    }
    await events.record(
        conn,
        alert_id=row["id"],
        actor=SYSTEM_ESCALATION,
        action="escalated",
        details=details,
        settings=settings,
    )


async def escalate_due(conn: Conn, settings: AlertSettings, *, limit: int = BATCH_SIZE) -> int:
    """Escalate up to ``limit`` overdue alerts in the caller's transaction; how many.

    An interrupted batch rolls back with the transaction, to be escalated by another pass.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    count = await _escalate_batch(conn, settings, limit)
    if count:
        _log.info("escalated %d alerts", count, extra={"escalated": count})
    return count


def escalation_task(settings: AlertSettings) -> Periodic:
    """Escalate overdue alerts every ``escalation_interval``, a batch per transaction.

    It must outlive a database restart, or overdue alerts would silently stop
    escalating: the background runner retries it with backoff.
    """

    async def escalate(conn: Conn) -> int:
        return await escalate_due(conn, settings)

    # A full batch means more may be due: the runner goes again at once.
    return Periodic(ESCALATION_TASK, settings.escalation_interval, escalate, batch=BATCH_SIZE)
