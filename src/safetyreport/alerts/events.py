"""What every change to an alert writes in its transaction: the event (history and live
stream), the audit entry, and for openings and escalations the outbox notifications."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from safetyreport import audit
from safetyreport.alerts.triggers import describe
from safetyreport.alerts.view import ALERT_COLUMNS, ALERT_JOINS
from safetyreport.db.pool import Conn
from safetyreport.ids import new_id
from safetyreport.metrics import facts
from safetyreport.settings import AlertSettings

# LISTEN/NOTIFY channel; the payload is the event id (notifications carry ids, not data).
CHANNEL = "alert_events"
# Events that notify someone outside the service ("renewed": a new report joined a
# critical or urgent alert, or a hold, and its deadline started again).
NOTIFYING_EVENTS = frozenset({"opened", "escalated", "renewed"})

# The alert as the notification payload shows it, the event inserted, and its NOTIFY, in
# one statement (an alert that does not exist gives no row and inserts nothing).
_RECORD = f"""
WITH alert AS (
    SELECT {ALERT_COLUMNS} FROM alerts a {ALERT_JOINS} WHERE a.id = $1
), event AS (
    INSERT INTO alert_events (alert_id, clinic_id, actor, action, details)
    SELECT $1, alert.clinic_id, $2::text, $3::text, $4::jsonb FROM alert
    RETURNING id
), notified AS (
    SELECT pg_notify($5::text, event.id::text) FROM event
)
SELECT alert.*, event.id AS event_id FROM alert, event, notified
"""  # noqa: S608 (constant SQL fragments, no input)


def _iso(value: Any) -> Any:
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else value


async def record(
    conn: Conn,
    *,
    alert_id: uuid.UUID,
    actor: audit.Actor,
    action: str,
    details: dict[str, Any] | None = None,
    client_addr: str | None = None,
    settings: AlertSettings,
) -> int:
    """Record ``action`` on an alert: event, NOTIFY, audit entry and, if due, notifications.

    Runs in the caller's transaction; the NOTIFY is delivered only if it commits.
    """
    event_id, _ = await record_alert(
        conn,
        alert_id=alert_id,
        actor=actor,
        action=action,
        details=details,
        client_addr=client_addr,
        settings=settings,
    )
    return event_id


async def record_alert(
    conn: Conn,
    *,
    alert_id: uuid.UUID,
    actor: audit.Actor,
    action: str,
    details: dict[str, Any] | None = None,
    client_addr: str | None = None,
    settings: AlertSettings,
) -> tuple[int, dict[str, Any]]:
    """As ``record``; also the alert as the event saw it (ALERT_COLUMNS, ``triggered_by``
    put into words)."""
    details = details or {}
    row = await conn.fetchrow(_RECORD, alert_id, actor.name, action, details, CHANNEL)
    assert row is not None
    alert = {k: v for k, v in row.items() if k != "event_id"}
    alert["triggered_by"] = describe(alert["trigger_values"])
    event_id: int = row["event_id"]
    facts.record(conn, facts.AlertEvent(action, alert["severity"]))
    await audit.append(
        conn,
        audit.AuditEvent(
            actor=actor,
            action=f"alert.{action}",
            object_type="alert",
            object_id=str(alert_id),
            clinic=alert["clinic"],
            client_addr=client_addr,
            details={"event_id": event_id, **details},
        ),
    )
    if action in NOTIFYING_EVENTS:
        payload = {
            "event": action,
            "event_id": event_id,
            "alert": {k: _iso(v) for k, v in alert.items() if k != "clinic_id"}
            | {"id": str(alert_id)},
            "details": details,
        }
        await enqueue(conn, alert_id, action, payload, settings)
    return event_id, alert


async def enqueue(
    conn: Conn, alert_id: uuid.UUID, event: str, payload: dict[str, Any], settings: AlertSettings
) -> list[uuid.UUID]:
    """One outbox row per configured webhook; the sender delivers them after commit."""
    ids = [new_id() for _ in settings.webhook_urls]
    if ids:
        await conn.executemany(
            "INSERT INTO notifications (id, alert_id, event, channel, target, payload)"
            " VALUES ($1, $2, $3, 'webhook', $4, $5)",
            [
                (nid, alert_id, event, url, {**payload, "notification_id": str(nid)})
                for nid, url in zip(ids, settings.webhook_urls, strict=True)
            ],
        )
    return ids
