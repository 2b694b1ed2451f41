"""Known devices: where a user has signed in successfully before.

A successful sign-in gives the client a random device token (a long-lived HttpOnly
cookie for browsers, ``device_token`` in the login response for API clients, who send
it back in the ``X-Device-Token`` header). Only its SHA-256 is stored, bound to the
user. A sign-in that presents a live token of its user is judged by that device's own
failures (see ``throttle``), so nobody elsewhere can lock the user out of it. A shared
tablet keeps the tokens of its last few users in one cookie.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from litestar.connection import ASGIConnection

from safetyreport.db.pool import Conn

DEVICE_COOKIE = "sr_device"
DEVICE_HEADER = "X-Device-Token"
# Tokens one cookie keeps (one per user who signed in on the device, newest first).
MAX_TOKENS = 8
_SEPARATOR = "."  # never part of a token (URL-safe base64)


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def presented_tokens(connection: ASGIConnection[Any, Any, Any, Any]) -> list[str]:
    """The device tokens a request carries: its header's, then its cookie's."""
    header = connection.headers.get(DEVICE_HEADER, "").strip()
    cookie = connection.cookies.get(DEVICE_COOKIE, "")
    tokens = [header] if header else []
    tokens += [t for t in cookie.split(_SEPARATOR) if t]
    return [t for t in tokens if len(t) <= 64][:MAX_TOKENS]


def cookie_value(current: str, tokens: list[str]) -> str:
    """The device cookie after sign-in with ``current``: it first, then the others."""
    kept = [current, *(t for t in tokens if t != current)]
    return _SEPARATOR.join(kept[:MAX_TOKENS])


async def find(
    conn: Conn, username: str, tokens: list[str], lifetime: timedelta
) -> tuple[int, str] | None:
    """The known device (id, token) of ``username`` among ``tokens``, or None."""
    if not tokens:
        return None
    hashes = [_hash(t) for t in tokens]
    row = await conn.fetchrow(
        """
        SELECT d.id, d.token_hash FROM known_devices d JOIN users u ON u.id = d.user_id
        WHERE u.username = $1 AND d.token_hash = ANY($2::bytea[])
          AND d.last_used_at > now() - $3::interval
        LIMIT 1
        """,
        username,
        hashes,
        lifetime,
    )
    if row is None:
        return None
    return row["id"], tokens[hashes.index(row["token_hash"])]


async def remember(conn: Conn, user_id: int, known: tuple[int, str] | None) -> str:
    """After a successful sign-in: touch the known device, or register a new one."""
    if known is not None:
        await conn.execute("UPDATE known_devices SET last_used_at = now() WHERE id = $1", known[0])
        return known[1]
    token = secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO known_devices (token_hash, user_id) VALUES ($1, $2)", _hash(token), user_id
    )
    return token
