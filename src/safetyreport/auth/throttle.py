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


def _keys(username: str, address: str) -> dict[str, str]:
    return {"account_address": f"{username}|{address}", "account": username, "address": address}


async def locked_until(conn: Conn, username: str, address: str) -> datetime | None:
    """The latest lock in force for this attempt, or None."""
    keys = _keys(username, address)
    value: datetime | None = await conn.fetchval(
        """
        SELECT max(locked_until) FROM login_throttle
        WHERE (scope, key) IN (('account_address', $1), ('account', $2), ('address', $3))
          AND locked_until > now()
        """,
        keys["account_address"],
        keys["account"],
        keys["address"],
    )
    return value


async def record_failure(conn: Conn, username: str, address: str) -> None:
    for limit in LIMITS:
        key = _keys(username, address)[limit.scope]
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
            await conn.execute(
                "UPDATE login_throttle SET locked_until = now() + $3::interval "
                "WHERE scope = $1 AND key = $2",
                limit.scope,
                key,
                lock,
            )


async def record_success(conn: Conn, username: str, address: str) -> None:
    keys = _keys(username, address)
    await conn.execute(
        "DELETE FROM login_throttle"
        " WHERE (scope, key) IN (('account_address', $1), ('account', $2))",
        keys["account_address"],
        keys["account"],
    )
