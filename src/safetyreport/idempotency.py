"""Running a write once per Idempotency-Key, because tablets retry.

In the caller's transaction (the request's ``db``), one statement takes a
transaction-scoped advisory lock on (user, key) without waiting (taken: another request
with this key is still running, 409), claims the key (a row of its own, or one whose
time is up) and reads the live record it finds instead; a stored response is replayed for
the same request, a different request with the same key refused (422); otherwise the
write runs and its response is stored in the claimed row. The lock is released when
that transaction ends, at the commit that makes the stored response visible to the next
retry (or at the rollback that forgets it all, the claim included).
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


# The lock, then (only if taken) the claim: a new row, or the row of the key taken over
# when its time is up. The row is a placeholder (status 0) until _STORE fills it, in the
# same transaction: nobody else sees it before. Not claimed, the key's live record as this
# statement's snapshot shows it.
_CLAIM = """
WITH lock AS (
    SELECT pg_try_advisory_xact_lock($5) AS taken
), claimed AS (
    INSERT INTO idempotency_keys
        (user_id, key, request_hash, response_status, response_body, expires_at)
    SELECT $1, $2, $3, 0, '', now() + $4::interval FROM lock WHERE taken
    ON CONFLICT (user_id, key) DO UPDATE
        SET request_hash = excluded.request_hash, response_status = 0, response_body = '',
            created_at = now(), expires_at = excluded.expires_at
        WHERE idempotency_keys.expires_at <= now()
    RETURNING 1
)
SELECT lock.taken, EXISTS (SELECT FROM claimed) AS claimed,
       k.request_hash, k.response_status, k.response_body
FROM lock LEFT JOIN idempotency_keys k
    ON lock.taken AND k.user_id = $1 AND k.key = $2 AND k.expires_at > now()
"""
# The live record of a key (after a claim that found a record its snapshot did not show).
_FIND = """
SELECT request_hash, response_status, response_body FROM idempotency_keys
WHERE user_id = $1 AND key = $2 AND expires_at > now()
"""
_STORE = """
UPDATE idempotency_keys SET response_status = $3, response_body = $4
WHERE user_id = $1 AND key = $2
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
    claim = await conn.fetchrow(_CLAIM, user_id, key, fingerprint, ttl, _lock_key(user_id, key))
    assert claim is not None
    if not claim["taken"]:
        raise Conflict(
            "a request with this Idempotency-Key is still being processed; retry shortly"
        )
    if not claim["claimed"]:
        # A live record: the claim's snapshot shows it, unless its request committed
        # between that snapshot and the lock (then a new statement does).
        stored = claim if claim["request_hash"] is not None else None
        stored = stored or await conn.fetchrow(_FIND, user_id, key)
        assert stored is not None, "a key not claimed has a live record"
        if stored["request_hash"] != fingerprint:
            raise ValidationFailed.one(
                "Idempotency-Key",
                "reused",
                "this key was already used for a different request; use a new key",
            )
        return StoredResponse(stored["response_status"], stored["response_body"], True)
    status, body = await action(conn)
    await conn.execute(_STORE, user_id, key, status, body)
    return StoredResponse(status, body, False)


async def purge_expired(conn: Conn) -> int:
    """Forget the keys whose time is up; how many (a background task)."""
    result: str = await conn.execute("DELETE FROM idempotency_keys WHERE expires_at <= now()")
    return int(result.split()[-1])
