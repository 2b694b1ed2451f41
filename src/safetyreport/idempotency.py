"""Running a write once per Idempotency-Key, because tablets retry.

In the caller's transaction (the request's ``db``): take a transaction-scoped advisory
lock on (user, key) without waiting (taken: another request with this key is still
running, 409); replay a stored response for the same request, or refuse a different
request with the same key (422); otherwise run the write and store its response. The
lock is released when that transaction ends, at the commit that makes the stored
response visible to the next retry (or at the rollback that forgets it all).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import timedelta

import msgspec

from safetyreport.db.pool import Conn
from safetyreport.errors import Conflict, ValidationFailed

MAX_KEY_LENGTH = 200
Action = Callable[[Conn], Awaitable[tuple[int, bytes]]]


class StoredResponse(msgspec.Struct, frozen=True):
    status: int
    body: bytes
    replayed: bool


def check_key(key: str) -> str:
    if len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise ValidationFailed.one(
            "Idempotency-Key", "format", f"1-{MAX_KEY_LENGTH} printable ASCII characters"
        )
    return key


def request_hash(method: str, path: str, canonical_body: bytes) -> bytes:
    return hashlib.sha256(f"{method} {path}\n".encode() + canonical_body).digest()


def _lock_key(user_id: int, key: str) -> int:
    digest = hashlib.sha256(f"idempotency:{user_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# The live record of a key, if any; an expired one is forgotten in the same statement
# (a key has at most one row, so at most one of the two exists).
_FIND = """
WITH expired AS (
    DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND expires_at <= now()
)
SELECT request_hash, response_status, response_body FROM idempotency_keys
WHERE user_id = $1 AND key = $2 AND expires_at > now()
"""
_STORE = """
INSERT INTO idempotency_keys
    (user_id, key, request_hash, response_status, response_body, expires_at)
VALUES ($1, $2, $3, $4, $5, now() + $6::interval)
"""


async def write_once(
    conn: Conn,
    action: Action,
    *,
    user_id: int,
    key: str | None,
    fingerprint: bytes,
    ttl: timedelta,
) -> StoredResponse:
    """Run the write ``action`` in the caller's transaction on ``conn``, once per key.

    Without a key it simply runs. With one, a retry of the same request (same
    ``fingerprint``) while the key lives (``ttl``) gets the first response again.
    """
    if not key:
        status, body = await action(conn)
        return StoredResponse(status, body, replayed=False)
    return await _run_once(conn, action, user_id, check_key(key), fingerprint, ttl)


async def _run_once(
    conn: Conn, action: Action, user_id: int, key: str, fingerprint: bytes, ttl: timedelta
) -> StoredResponse:
    # The lock and the stored response need the caller's transaction: outside one, the
    # lock would be gone before the action runs.
    assert conn.is_in_transaction(), "write_once runs in the caller's transaction"
    if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _lock_key(user_id, key)):
        raise Conflict(
            "a request with this Idempotency-Key is still being processed; retry shortly"
        )
    stored = await conn.fetchrow(_FIND, user_id, key)
    if stored is not None:
        if stored["request_hash"] != fingerprint:
            raise ValidationFailed.one(
                "Idempotency-Key",
                "reused",
                "this key was already used for a different request; use a new key",
            )
        return StoredResponse(stored["response_status"], stored["response_body"], True)
    status, body = await action(conn)
    await conn.execute(_STORE, user_id, key, fingerprint, status, body, ttl)
    return StoredResponse(status, body, False)


async def purge_expired(conn: Conn) -> int:
    """Forget the keys whose time is up; how many (a background task)."""
    result: str = await conn.execute("DELETE FROM idempotency_keys WHERE expires_at <= now()")
    return int(result.split()[-1])
