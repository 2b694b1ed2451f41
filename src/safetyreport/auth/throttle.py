"""Throttling failed logins without letting an attacker lock a real user out for long.

Three counters, each with its own threshold and an exponentially growing lock:

- ``account_address`` (one account from one address): the tight limit. A guesser
  at one address locks only themselves out of that account.
- ``account`` (one account from anywhere): a looser limit whose lock is capped at a
  few minutes, so a distributed attack slows guessing but never locks the user out
  for longer than that.
- ``address`` (every account from one address): stops password spraying.

A counter forgets failures older than ``WINDOW``; a successful login clears the
account's counters. Attempts made while locked are refused before any password
check, and do not extend the lock.

A device that has signed in successfully before (``devices``) is judged by a fourth
counter of its own (``device``, as tight as ``account_address``) instead: failures from
elsewhere, however many, and a shared address's spraying never lock it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from safetyreport.db.pool import Conn

WINDOW = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class Limit:
    scope: str
    threshold: int
    base_lock: timedelta
    max_lock: timedelta

    def lock_for(self, failures: int) -> timedelta | None:
        if failures < self.threshold:
            return None
        doublings = min(failures - self.threshold, 16)
        lock: timedelta = min(self.base_lock * (2**doublings), self.max_lock)
        return lock


LIMITS = (
    Limit("account_address", 5, timedelta(seconds=30), timedelta(minutes=15)),
    Limit("account", 20, timedelta(seconds=30), timedelta(minutes=5)),
    Limit("address", 50, timedelta(minutes=1), timedelta(minutes=15)),
)
# A known device (see ``devices``) is judged by its own failures only.
DEVICE_LIMIT = Limit("device", 5, timedelta(seconds=30), timedelta(minutes=15))
# Locks of these scopes are patterns worth an admin's eye (see ``alerts``).
ALERTING_SCOPES = frozenset({"account", "address"})


@dataclass(frozen=True, slots=True)
class LockStarted:
    scope: str
    key: str
    failures: int
    locked_until: datetime


def _keys(username: str, address: str, device: int | None) -> dict[str, str]:
    """The counters an attempt is judged by: its device's alone when it is a known one."""
    if device is not None:
        return {"device": f"{username}|{device}"}
    return {"account_address": f"{username}|{address}", "account": username, "address": address}


def _limits(device: int | None) -> tuple[Limit, ...]:
    return (DEVICE_LIMIT,) if device is not None else LIMITS


async def refuse_if_locked(
    conn: Conn, username: str, address: str, device: int | None = None
) -> timedelta | None:
    """How long the latest lock in force for this attempt lasts yet, or None.

    A refused attempt is only counted on the locked rows (no audit entry each): the
    next audit entry for the key carries the count (``take_refused``).
    """
    keys = _keys(username, address, device)
    # The time left is computed here: a refused attempt (a flood of them, when under
    # attack) costs one statement.
    value: timedelta | None = await conn.fetchval(
        """
        WITH refused AS (
            UPDATE login_throttle SET refused = refused + 1
            WHERE (scope, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))
              AND locked_until > now()
            RETURNING locked_until
        )
        SELECT max(locked_until) - now() FROM refused
        """,
        list(keys),
        list(keys.values()),
    )
    return value


async def take_refused(
    conn: Conn, username: str, address: str, device: int | None = None
) -> dict[str, int]:
    """Attempts refused by each of this attempt's locks since last reported, reset to 0."""
    keys = _keys(username, address, device)
    rows = await conn.fetch(
        """
        UPDATE login_throttle t SET refused = 0
        FROM (SELECT scope, key, refused FROM login_throttle
              WHERE (scope, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))
                AND refused > 0
              FOR UPDATE) old
        WHERE t.scope = old.scope AND t.key = old.key
        RETURNING old.scope, old.refused
        """,
        list(keys),
        list(keys.values()),
    )
    return {row["scope"]: row["refused"] for row in rows}


async def record_failure(
    conn: Conn, username: str, address: str, device: int | None = None
) -> list[LockStarted]:
    """Count a failed attempt; the locks it starts."""
    started: list[LockStarted] = []
    keys = _keys(username, address, device)
    for limit in _limits(device):
        key = keys[limit.scope]
        failures: int = await conn.fetchval(
            """
            INSERT INTO login_throttle AS t (scope, key, failures, last_failure_at)
            VALUES ($1, $2, 1, now())
            ON CONFLICT (scope, key) DO UPDATE SET
                failures = CASE WHEN t.last_failure_at < now() - $3::interval
                                THEN 1 ELSE t.failures + 1 END,
                last_failure_at = now()
            RETURNING failures
            """,
            limit.scope,
            key,
            WINDOW,
        )
        lock = limit.lock_for(failures)
        if lock is not None:
            until: datetime = await conn.fetchval(
                "UPDATE login_throttle SET locked_until = now() + $3::interval "
                "WHERE scope = $1 AND key = $2 RETURNING locked_until",
                limit.scope,
                key,
                lock,
            )
            started.append(LockStarted(limit.scope, key, failures, until))
    return started


async def record_success(conn: Conn, username: str, address: str, device: int | None) -> None:
    """Clear the account's counters (the address's stay: they watch every account)."""
    await conn.execute(
        "DELETE FROM login_throttle"
        " WHERE (scope, key) IN (('account_address', $1), ('account', $2))"
        "    OR (scope = 'device' AND key = $3)",
        f"{username}|{address}",
        username,
        f"{username}|{device}",
    )
