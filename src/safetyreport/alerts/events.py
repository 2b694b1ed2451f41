"""What every change to an alert writes in its transaction: the event (history and live
stream), the audit entry, and for openings and escalations the outbox notifications."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from safetyreport import audit
from safetyreport.db.pool import Conn
from safetyreport.settings import AlertSettings

# LISTEN/NOTIFY channel; the payload is the event id (notifications carry ids, not data).
CHANNEL = "alert_events"
# Events that notify someone outside the service.
NOTIFYING_EVENTS = frozenset({"opened", "escalated"})

_ALERT_FOR_PAYLOAD = """
SELECT a.id, a.rule_id, a.rule_version, r.name AS rule_name, a.severity, a.status,
       a.escalation_level, c.code AS clinic, a.group_by, a.group_key, a.report_count,
       a.first_seen_at, a.last_seen_at, a.ack_deadline, a.dea_notice_due, a.dea_form106_due,
       a.clinic_id
FROM alerts a JOIN alert_rules r ON r.id = a.rule_id JOIN clinics c ON c.id = a.clinic_id
WHERE a.id = $1
"""


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
    details = details or {}
    alert = await conn.fetchrow(_ALERT_FOR_PAYLOAD, alert_id)
    assert alert is not None
    clinic_id: int = alert["clinic_id"]
    event_id: int = await conn.fetchval(
        "INSERT INTO alert_events (alert_id, clinic_id, actor, action, details)"
        " VALUES ($1, $2, $3, $4, $5) RETURNING id",
        alert_id,
        clinic_id,
        actor.name,
        action,
        details,
    )
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(event_id))
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
            "alert": {k: _iso(v) for k, v in dict(alert).items() if k != "clinic_id"}
            | {"id": str(alert_id)},
            "details": details,
        }
        await enqueue(conn, alert_id, action, payload, settings)
    return event_id


async def enqueue(
    conn: Conn, alert_id: uuid.UUID, event: str, payload: dict[str, Any], settings: AlertSettings
) -> list[uuid.UUID]:
    """One outbox row per configured webhook; the sender delivers them after commit."""
    ids = [uuid.uuid4() for _ in settings.webhook_urls]
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
