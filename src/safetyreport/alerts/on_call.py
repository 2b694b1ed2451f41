"""Each clinic's on-call roster, and the ledger of the pages sent to it (admins).

The roster is the clinic's safety officers and admins, in the order they are paged
(``paging.py``): the first when a critical or urgent alert opens, the next each time the
alert escalates unacknowledged. Replacing it and reading it are audited in the clinic's
chain; so is reading the ledger. A clinic the admin does not belong to is 404, as one
that does not exist.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
import msgspec

from safetyreport.alerts import queue
from safetyreport.caller import Caller
from safetyreport.db.pool import Conn
from safetyreport.errors import FieldError, ValidationFailed
from safetyreport.pagination import decode_cursor, encode_cursor
from safetyreport.times import require_utc

MAX_ROSTER = 20
# Enough to catch a typo; whether the mailbox exists only the mail server knows.
_EMAIL = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")

_ROSTER = """
SELECT o.position, u.username, u.role, o.email
FROM on_call o JOIN users u ON u.id = o.user_id
WHERE o.clinic_id = $1
ORDER BY o.position
"""
_CLEAR = "DELETE FROM on_call WHERE clinic_id = $1"
_INSERT = "INSERT INTO on_call (clinic_id, position, user_id, email) VALUES ($1, $2, $3, $4)"

PageStatus = Literal["pending", "sent", "failed", "cancelled"]

# The clinic scope ($1: NULL for admins of every clinic) and optional filters.
_PAGES = """
SELECT p.id, p.alert_id, c.code AS clinic, p.renewal, p.level, p.position, u.username, p.email,
       p.subject, p.status, p.attempts, p.created_at, p.sent_at, p.next_attempt_at,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                     'attempted_at', a.attempted_at, 'error', a.error,
                     'duration_ms', a.duration_ms) ORDER BY a.id)
                 FROM page_attempts a WHERE a.page_id = p.id), '[]') AS ledger
FROM pages p
JOIN clinics c ON c.id = p.clinic_id
JOIN users u ON u.id = p.user_id
WHERE ($1::bigint[] IS NULL OR p.clinic_id = ANY($1::bigint[]))
  AND ($2::text IS NULL OR p.status = $2)
  AND ($3::uuid IS NULL OR p.alert_id = $3)
  AND ($4::timestamptz IS NULL OR (p.created_at, p.id) < ($4, $5::uuid))
ORDER BY p.created_at DESC, p.id DESC
LIMIT $6
"""


class OnCallEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One person on call: a safety officer or admin of the clinic, and where to page them."""

    user: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=254)]


class OnCallUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole roster, first paged first; an empty list takes the clinic off paging."""

    entries: Annotated[list[OnCallEntry], msgspec.Meta(max_length=MAX_ROSTER)]


class OnCallPerson(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    user: str
    role: str
    email: str


class OnCallRoster(msgspec.Struct, frozen=True, kw_only=True):
    clinic: str
    entries: list[OnCallPerson]


class PageAttempt(msgspec.Struct, frozen=True, kw_only=True):
    attempted_at: datetime
    # None: the SMTP server accepted the message.
    error: str | None
    duration_ms: int | None


class PageView(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    alert_id: uuid.UUID
    clinic: str
    # How many times the alert had been renewed (a new report joined it) when paged.
    renewal: int
    # The alert's escalation level this page is for (0: when it opened).
    level: int
    # The roster position paged.
    position: int
    user: str
    email: str
    subject: str
    status: PageStatus
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime
    ledger: list[PageAttempt]


class PageList(msgspec.Struct, frozen=True):
    items: list[PageView]
    next_cursor: str | None


def _clinic_id(caller: Caller, clinic: str) -> int:
    scope = caller.principal.visible_clinics(clinic)
    assert scope is not None  # one clinic was named
    return scope[0]


async def _roster(conn: Conn, clinic: str, clinic_id: int) -> OnCallRoster:
    rows = await conn.fetch(_ROSTER, clinic_id)
    return OnCallRoster(
        clinic=clinic,
        entries=[
            OnCallPerson(
                position=r["position"], user=r["username"], role=r["role"], email=r["email"]
            )
            for r in rows
        ],
    )


async def read_roster(conn: Conn, caller: Caller, clinic: str) -> OnCallRoster:
    """The clinic's roster, in order; the read is audited in its chain."""
    roster = await _roster(conn, clinic, _clinic_id(caller, clinic))
    await caller.audit(
        conn,
        "on_call.read",
        object_type="clinic",
        object_id=clinic,
        clinic=clinic,
        details={"users": [e.user for e in roster.entries]},
    )
    return roster


def _check(update: OnCallUpdate, found: dict[str, int]) -> None:
    errors: list[FieldError] = []
    seen: set[str] = set()
    for index, entry in enumerate(update.entries):
        where = f"entries[{index}]"
        if entry.user in seen:
            errors.append(FieldError(f"{where}.user", "unique", "is on the roster twice"))
        seen.add(entry.user)
        if entry.user not in found:
            errors.append(
                FieldError(
                    f"{where}.user",
                    "on_call_eligible",
                    "no enabled safety officer or admin of this clinic has that username",
                )
            )
        if not _EMAIL.match(entry.email):
            errors.append(FieldError(f"{where}.email", "email", "is not an email address"))
    if errors:
        raise ValidationFailed(errors)


async def replace_roster(
    conn: Conn, caller: Caller, clinic: str, update: OnCallUpdate
) -> OnCallRoster:
    """Replace the clinic's roster with ``update`` (in order); audited in its chain.

    Pages already sent stay as they were; the next page goes by the new roster.
    """
    clinic_id = _clinic_id(caller, clinic)
    # Who may be on call: the people who can acknowledge the clinic's alerts.
    rows = await queue.clinic_alert_workers(conn, clinic_id, [e.user for e in update.entries])
    found = {r["username"]: r["id"] for r in rows}
    _check(update, found)
    before = await _roster(conn, clinic, clinic_id)
    await conn.execute(_CLEAR, clinic_id)
    await conn.executemany(
        _INSERT,
        [
            (clinic_id, position, found[e.user], e.email)
            for position, e in enumerate(update.entries, start=1)
        ],
    )
    after = await _roster(conn, clinic, clinic_id)
    details: dict[str, Any] = {
        "before": [{"user": e.user, "email": e.email} for e in before.entries],
        "after": [{"user": e.user, "email": e.email} for e in after.entries],
    }
    await caller.audit(
        conn,
        "on_call.replaced",
        object_type="clinic",
        object_id=clinic,
        clinic=clinic,
        details=details,
    )
    return after


def _decode_cursor(cursor: str | None) -> tuple[datetime | None, uuid.UUID | None]:
    if cursor is None:
        return None, None
    after, page_id = decode_cursor(cursor, tuple[datetime, uuid.UUID])
    return require_utc("cursor", after), page_id


def _page(row: asyncpg.Record) -> PageView:
    fields = {f: row[f] for f in PageView.__struct_fields__ if f not in ("user", "ledger")}
    attempts = msgspec.convert(row["ledger"], list[PageAttempt], strict=False)
    return PageView(**fields, user=row["username"], ledger=attempts)


async def list_pages(
    conn: Conn,
    caller: Caller,
    *,
    clinic: str | None,
    status: PageStatus | None,
    alert: uuid.UUID | None,
    cursor: str | None,
    limit: int,
) -> PageList:
    """Pages of the caller's clinics (or the one named), newest first, each with its
    ledger of attempts; the read is audited in the chain of each clinic listed."""
    scope = caller.principal.visible_clinics(clinic)
    after, after_id = _decode_cursor(cursor)
    rows = await conn.fetch(_PAGES, scope, status, alert, after, after_id, limit + 1)
    items = [_page(r) for r in rows[:limit]]
    more = len(rows) > limit
    # The chains of the clinics listed; the one asked for (or the global chain) if none.
    clinics: list[str | None] = [*sorted({i.clinic for i in items})] or [clinic]
    filters = {
        "clinic": clinic,
        "status": status,
        "alert": str(alert) if alert else None,
        "cursor": cursor,
    }

    def details_for(code: str | None) -> dict[str, Any]:
        ids = [str(i.id) for i in items if i.clinic == code]
        return {"filters": filters, "count": len(ids), "page_ids": ids}

    await caller.audit_each_clinic(
        conn, clinics, "page.listed", object_type="page", details_for=details_for
    )
    return PageList(items, encode_cursor(items[-1].created_at, items[-1].id) if more else None)
