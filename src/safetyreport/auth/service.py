"""Logging in and out, and resolving bearer tokens to principals."""

from __future__ import annotations

import hashlib
import math
import secrets
from datetime import datetime, timedelta

import asyncpg
import msgspec

from safetyreport import audit
from safetyreport.auth import throttle
from safetyreport.auth.passwords import verify_password
from safetyreport.auth.users import (
    PRINCIPAL_COLUMNS,
    Principal,
    UserView,
    normalise_username,
    principal_from_row,
)
from safetyreport.db.pool import Conn
from safetyreport.errors import NotAuthenticated, TooManyRequests
from safetyreport.settings import AuthSettings


class LoginResult(msgspec.Struct, frozen=True):
    token: str
    expires_at: datetime
    user: UserView


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    # 256 random bits; only its hash is stored.
    return secrets.token_urlsafe(32)


_USER_FOR_LOGIN = f"""
SELECT u.password_hash, {PRINCIPAL_COLUMNS}
FROM users u WHERE u.username = $1 AND u.disabled_at IS NULL
"""  # noqa: S608 (constant SQL fragments, no input)

_CREATE_SESSION = """
INSERT INTO sessions (token_hash, user_id, expires_at) VALUES ($1, $2, now() + $3::interval)
RETURNING expires_at
"""


async def login(
    pool: asyncpg.Pool, username: str, password: str, address: str, settings: AuthSettings
) -> LoginResult:
    username = normalise_username(username)[:200]
    async with pool.acquire() as conn:
        until = await throttle.locked_until(conn, username, address)
        if until is not None:
            await _audit_failure(conn, username, address, "throttled")
            retry = max(1, math.ceil((until - await conn.fetchval("SELECT now()")).total_seconds()))
            raise TooManyRequests("too many failed logins; try again later", retry_after=retry)
        row = await conn.fetchrow(_USER_FOR_LOGIN, username)
        ok = await verify_password(row["password_hash"] if row else None, password)
        if row is None or not ok:
            async with conn.transaction():
                await throttle.record_failure(conn, username, address)
                await _audit_failure(conn, username, address, "bad_credentials", in_tx=True)
            raise NotAuthenticated("wrong username or password")
        principal = principal_from_row(row)
        token = new_token()
        async with conn.transaction():
            await throttle.record_success(conn, username, address)
            expires_at: datetime = await conn.fetchval(
                _CREATE_SESSION, hash_token(token), principal.id, settings.session_absolute
            )
            await audit.append(
                conn,
                audit.AuditEvent(
                    actor=principal.actor(),
                    action="auth.login",
                    object_type="user",
                    object_id=principal.username,
                    client_addr=address,
                ),
            )
    return LoginResult(token=token, expires_at=expires_at, user=principal.view())


async def _audit_failure(
    conn: Conn, username: str, address: str, reason: str, in_tx: bool = False
) -> None:
    event = audit.AuditEvent(
        actor=audit.Actor(name=f"anonymous:{username}"),
        action="auth.login_failed",
        object_type="user",
        object_id=username,
        client_addr=address,
        details={"reason": reason},
    )
    if in_tx:
        await audit.append(conn, event)
        return
    async with conn.transaction():
        await audit.append(conn, event)


# A live session is touched (its idle timeout restarted) at most once per
# TOUCH_INTERVAL: most requests then only read, and a read commits without a WAL flush.
TOUCH_INTERVAL = timedelta(minutes=1)
_RESOLVE = f"""
WITH s AS (
    SELECT id, user_id, last_seen_at FROM sessions
    WHERE token_hash = $1 AND revoked_at IS NULL
      AND expires_at > now() AND last_seen_at > now() - $2::interval
), touched AS (
    UPDATE sessions SET last_seen_at = now()
    FROM s WHERE sessions.id = s.id AND s.last_seen_at < now() - $3::interval
)
SELECT {PRINCIPAL_COLUMNS}
FROM s JOIN users u ON u.id = s.user_id
WHERE u.disabled_at IS NULL
"""  # noqa: S608 (constant SQL fragments, no input)


async def resolve_token(pool: asyncpg.Pool, token: str, settings: AuthSettings) -> Principal:
    """The principal a live token belongs to; touching it resets the idle timeout."""
    row = await pool.fetchrow(_RESOLVE, hash_token(token), settings.session_idle, TOUCH_INTERVAL)
    if row is None:
        raise NotAuthenticated("the token is missing, expired or revoked")
    return principal_from_row(row)


async def logout(pool: asyncpg.Pool, token: str, principal: Principal, address: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE sessions SET revoked_at = now() WHERE token_hash = $1 AND revoked_at IS NULL",
            hash_token(token),
        )
        await audit.append(
            conn,
            audit.AuditEvent(
                actor=principal.actor(),
                action="auth.logout",
                object_type="user",
                object_id=principal.username,
                client_addr=address,
            ),
        )
