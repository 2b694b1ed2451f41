"""The notification ledger: what was sent to webhooks, and every attempt (admins read it).

Reading it is audited in the global chain: notifications span clinics. The clinic scope
keeps an admin of some clinics to their own notifications (a payload carries the alert,
its clinic and its patient).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
import msgspec

from safetyreport.alerts.webhooks import mask_url
from safetyreport.caller import Caller
from safetyreport.db.pool import Conn
from safetyreport.errors import NotFound
from safetyreport.pagination import decode_cursor, encode_cursor
from safetyreport.times import require_utc

# Optional filters as NULL-able parameters, so the statement stays one constant. The
# clinic scope ($6, $2: NULL for admins of every clinic) keeps an admin of some clinics
# to their notifications: a payload carries the alert, its clinic and its patient.
_LIST = """
SELECT id, alert_id, event, channel, target, status, attempts, created_at, delivered_at,
       next_attempt_at
FROM notifications
WHERE ($1::text IS NULL OR status = $1)
  AND ($2::uuid IS NULL OR alert_id = $2)
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
  AND ($6::bigint[] IS NULL
       OR alert_id IN (SELECT id FROM alerts WHERE clinic_id = ANY($6::bigint[])))
ORDER BY created_at DESC, id DESC
LIMIT $5
"""
_READ = """
SELECT id, alert_id, event, channel, target, status, created_at, delivered_at,
       next_attempt_at, payload
FROM notifications
WHERE id = $1
  AND ($2::bigint[] IS NULL
       OR alert_id IN (SELECT id FROM alerts WHERE clinic_id = ANY($2::bigint[])))
"""
_ATTEMPTS = """
SELECT id, attempted_at, status_code, error, duration_ms
FROM notification_attempts WHERE notification_id = $1 ORDER BY id
"""

Status = Literal["pending", "delivered", "failed"]


class NotificationView(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    alert_id: uuid.UUID
    event: str
    channel: str
    target: str
    status: Status
    # Claims so far (a claim whose sender died counts too).
    attempts: int
    created_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime


class AttemptView(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int | None


class NotificationDetail(msgspec.Struct, frozen=True, kw_only=True):
    """One notification with its payload and every recorded attempt, oldest first."""

    id: uuid.UUID
    alert_id: uuid.UUID
    event: str
    channel: str
    target: str
    status: Status
    created_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime
    payload: dict[str, Any]
    attempts: list[AttemptView]


class NotificationPage(msgspec.Struct, frozen=True):
    items: list[NotificationView]
    next_cursor: str | None


def _decode_cursor(cursor: str | None) -> tuple[datetime | None, uuid.UUID | None]:
    if cursor is None:
        return None, None
    after, notification_id = decode_cursor(cursor, tuple[datetime, uuid.UUID])
    return require_utc("cursor", after), notification_id


def _view(row: asyncpg.Record) -> NotificationView:
    fields = {f: row[f] for f in NotificationView.__struct_fields__}
    return NotificationView(**{**fields, "target": mask_url(row["target"])})


async def list_notifications(
    conn: Conn,
    caller: Caller,
    *,
    status: Status | None,
    alert: uuid.UUID | None,
    cursor: str | None,
    limit: int,
) -> NotificationPage:
    """A page of the ledger of the caller's clinics, newest first; the read is audited."""
    after, after_id = _decode_cursor(cursor)
    scope = caller.principal.scope()
    rows = await conn.fetch(_LIST, status, alert, after, after_id, limit + 1, scope)
    items = [_view(r) for r in rows[:limit]]
    more = len(rows) > limit
    details: dict[str, Any] = {
        "filters": {
            "status": status,
            "alert": str(alert) if alert else None,
            "cursor": cursor,
        },
        "count": len(items),
        "notification_ids": [str(i.id) for i in items],
    }
    await caller.audit(conn, "notification.listed", object_type="notification", details=details)
    return NotificationPage(
        items, encode_cursor(items[-1].created_at, items[-1].id) if more else None
    )


async def read_notification(
    conn: Conn, caller: Caller, notification_id: uuid.UUID
) -> NotificationDetail:
    """One notification of the caller's clinics with every attempt; the read is audited."""
    row = await conn.fetchrow(_READ, notification_id, caller.principal.scope())
    if row is None:
        raise NotFound(f"no notification {notification_id}")
    attempts = [AttemptView(**dict(a)) for a in await conn.fetch(_ATTEMPTS, row["id"])]
    await caller.audit(
        conn,
        "notification.read",
        object_type="notification",
        object_id=str(row["id"]),
        details={"alert_id": str(row["alert_id"]), "status": row["status"]},
    )
    fields = {f: row[f] for f in NotificationDetail.__struct_fields__ if f != "attempts"}
    fields["target"] = mask_url(row["target"])
    return NotificationDetail(**fields, attempts=attempts)
