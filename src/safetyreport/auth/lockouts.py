"""Lock-out alerts for admins: an account attacked from many addresses, or an address
guessing at many accounts.

Each lock of such a pattern (``throttle.ALERTING_SCOPES``) adds a row admins list at
``GET /api/v1/auth/lockouts`` (those of their clinics; address-wide ones, which belong
to no clinic, only for admins of every clinic), and the failed sign-in that started it
is audited with the lock in every chain of the user's clinics.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from safetyreport.auth.throttle import ALERTING_SCOPES, LockStarted
from safetyreport.caller import Caller
from safetyreport.db.pool import Conn

LIST_LIMIT = 200


class LockoutAlert(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    raised_at: datetime
    scope: str
    key: str
    failures: int
    locked_until: datetime
    clinics: list[str]


async def raise_for(conn: Conn, locks: list[LockStarted], clinics: list[str]) -> None:
    """Record an alert for each lock that shows a pattern. Caller's transaction."""
    for lock in locks:
        if lock.scope not in ALERTING_SCOPES:
            continue
        await conn.execute(
            "INSERT INTO lockout_alerts (scope, key, failures, locked_until, clinics) "
            "VALUES ($1, $2, $3, $4, $5)",
            lock.scope,
            lock.key,
            lock.failures,
            lock.locked_until,
            clinics if lock.scope == "account" else [],
        )


async def recent(
    conn: Conn, clinics: list[str] | None, since: datetime | None = None
) -> list[LockoutAlert]:
    """The newest alerts; ``clinics`` None: all, else those touching one of them;
    ``since``: only those raised after it."""
    rows = await conn.fetch(
        "SELECT id, raised_at, scope, key, failures, locked_until, clinics FROM lockout_alerts "
        "WHERE ($1::text[] IS NULL OR clinics && $1::text[]) "
        "AND ($3::timestamptz IS NULL OR raised_at > $3) "
        "ORDER BY raised_at DESC, id DESC LIMIT $2",
        clinics,
        LIST_LIMIT,
        since,
    )
    return [LockoutAlert(**dict(row)) for row in rows]


async def list_alerts(conn: Conn, caller: Caller, since: datetime | None) -> list[LockoutAlert]:
    """The newest alerts touching the caller's clinics (all of them for a user granted
    every clinic); ``since``: only those raised after it.

    A read of user data: audited in the chain of each of the caller's clinics listed
    (address-wide alerts in the global chain). An empty list is not recorded.
    """
    principal = caller.principal
    clinics = None if principal.all_clinics else sorted(principal.clinic_ids)
    items = await recent(conn, clinics, since)
    if not items:
        return items

    def listed(clinic: str | None) -> dict[str, Any]:
        shown = [a for a in items if (clinic in a.clinics if clinic else not a.clinics)]
        return {
            "since": None if since is None else since.isoformat(),
            "count": len(shown),
            "alert_ids": [a.id for a in shown],
        }

    targets: set[str | None] = set()
    for alert in items:
        if not alert.clinics:
            targets.add(None)
        targets.update(c for c in alert.clinics if clinics is None or c in clinics)
    await caller.audit_each_clinic(
        conn, targets, "auth.lockouts_listed", object_type="lockout_alert", details_for=listed
    )
    return items
