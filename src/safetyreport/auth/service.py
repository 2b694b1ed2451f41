"""Logging in and out, and resolving bearer tokens to principals."""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec

from safetyreport import audit
from safetyreport.audit.chain import format_time
from safetyreport.auth import devices, lockouts, throttle, totp
from safetyreport.auth.passwords import verify_password
from safetyreport.auth.users import (
    PRINCIPAL_COLUMNS,
    Principal,
    UserView,
    audit_clinics,
    normalise_username,
    principal_from_row,
)
from safetyreport.caller import Caller
from safetyreport.db.pool import Conn
from safetyreport.errors import NotAuthenticated, TooManyRequests
from safetyreport.settings import AuthSettings, Settings

WRONG_CREDENTIALS = "wrong username or password"


class LoginResult(msgspec.Struct, frozen=True):
    token: str
    expires_at: datetime
    user: UserView
    # Send it back (X-Device-Token) at the next sign-in: see ``devices``.
    device_token: str


class Credentials(msgspec.Struct, frozen=True, kw_only=True):
    """What a sign-in presents: password, maybe a second factor, known-device tokens."""

    username: str
    password: str
    otp: str | None = None
    recovery_code: str | None = None
    device_tokens: list[str] = msgspec.field(default_factory=list)


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


class _Attempt(msgspec.Struct, frozen=True, kw_only=True):
    username: str
    address: str
    device: int | None
    # The chains it is audited in: the user's clinics, or global for an unknown name.
    clinics: list[str | None]


@dataclass(frozen=True, slots=True)
class LoginRefused:
    """A sign-in refused, and why (the error the client gets).

    Returned, not raised: the attempt is counted and audited in the caller's transaction,
    which must commit although the sign-in failed.
    """

    error: NotAuthenticated | TooManyRequests


async def login(
    conn: Conn, credentials: Credentials, address: str, settings: Settings
) -> LoginResult | LoginRefused:
    """Open a session for good credentials; count, audit and refuse anything else.

    Caller's transaction: it is to commit whatever the outcome.
    """
    username = normalise_username(credentials.username)[:200]
    known = await devices.find(
        conn, username, credentials.device_tokens, settings.auth.known_device_lifetime
    )
    device = known[0] if known else None
    locked_for = await throttle.refuse_if_locked(conn, username, address, device)
    if locked_for is not None:
        # Not audited one by one: the lock's count goes in the key's next entry.
        retry = max(1, math.ceil(locked_for.total_seconds()))
        return LoginRefused(
            TooManyRequests("too many failed logins; try again later", retry_after=retry)
        )
    row = await conn.fetchrow(_USER_FOR_LOGIN, username)
    ok = await verify_password(row["password_hash"] if row else None, credentials.password)
    principal = principal_from_row(row) if row is not None else None
    attempt = _Attempt(
        username=username,
        address=address,
        device=device,
        clinics=_chains(principal),
    )
    if principal is None or not ok:
        await _fail(conn, attempt, "bad_credentials")
        return LoginRefused(NotAuthenticated(WRONG_CREDENTIALS))
    problem = await _second_factor(conn, principal, credentials, settings)
    if problem is not None:
        reason, message = problem
        await _fail(conn, attempt, reason)
        return LoginRefused(NotAuthenticated(message))
    return await _succeed(conn, Caller(principal, address), attempt, known, settings)


async def _succeed(
    conn: Conn,
    caller: Caller,
    attempt: _Attempt,
    known: tuple[int, str] | None,
    settings: Settings,
) -> LoginResult:
    """Open the session, remember the device and audit the sign-in."""
    principal = caller.principal
    token = new_token()
    refused = await throttle.take_refused(conn, attempt.username, attempt.address, attempt.device)
    await throttle.record_success(conn, attempt.username, attempt.address, attempt.device)
    device_token = await devices.remember(conn, principal.id, known)
    expires_at: datetime = await conn.fetchval(
        _CREATE_SESSION, hash_token(token), principal.id, settings.auth.session_absolute
    )
    details: dict[str, Any] = {"known_device": known is not None}
    if refused:
        details["refused_while_locked"] = refused
    event = caller.event(
        "auth.login", object_type="user", object_id=principal.username, details=details
    )
    await audit.append_to_clinics(conn, event, attempt.clinics)
    return LoginResult(
        token=token, expires_at=expires_at, user=principal.view(), device_token=device_token
    )


def _chains(principal: Principal | None) -> list[str | None]:
    if principal is None:
        return [None]
    return audit_clinics(principal.all_clinics, sorted(principal.clinic_ids))


async def _second_factor(
    conn: Conn, principal: Principal, credentials: Credentials, settings: Settings
) -> tuple[str, str] | None:
    """Why the second factor fails (audit reason, message), or None when it holds."""
    enrolled = await totp.is_enrolled(conn, principal.id)
    if not enrolled:
        if principal.role in settings.auth.totp_required_roles:
            return (
                "second_factor_not_enrolled",
                "this account needs a second factor: ask an administrator to enrol it",
            )
        return None
    if credentials.recovery_code:
        if await totp.use_recovery_code(conn, principal.id, credentials.recovery_code):
            return None
        return "bad_recovery_code", "wrong or already used recovery code"
    if not credentials.otp:
        return "second_factor_missing", "this account needs its one-time code (otp)"
    key = totp.cached_key(settings)
    if await totp.check_code(conn, principal.id, credentials.otp.strip(), key):
        return None
    return "bad_otp", "wrong or already used one-time code"


async def _fail(conn: Conn, attempt: _Attempt, reason: str) -> None:
    """Count a failed attempt, alert on lock-out patterns and audit it."""
    refused = await throttle.take_refused(conn, attempt.username, attempt.address, attempt.device)
    locks = await throttle.record_failure(conn, attempt.username, attempt.address, attempt.device)
    await lockouts.raise_for(conn, locks, [c for c in attempt.clinics if c is not None])
    details: dict[str, Any] = {"reason": reason}
    if refused:
        details["refused_while_locked"] = refused
    if locks:
        details["locked"] = [
            {
                "scope": lock.scope,
                "failures": lock.failures,
                "until": format_time(lock.locked_until),
            }
            for lock in locks
        ]
    # Nobody is signed in: the actor is the name tried, marked as not authenticated.
    event = audit.AuditEvent(
        actor=audit.Actor(name=f"anonymous:{attempt.username}"),
        action="auth.login_failed",
        object_type="user",
        object_id=attempt.username,
        client_addr=attempt.address,
        details=details,
    )
    await audit.append_to_clinics(conn, event, attempt.clinics)


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


async def resolve_token(conn: Conn, token: str, settings: AuthSettings) -> Principal:
    """The principal a live token belongs to; touching it resets the idle timeout."""
    row = await conn.fetchrow(_RESOLVE, hash_token(token), settings.session_idle, TOUCH_INTERVAL)
    if row is None:
        raise NotAuthenticated("the token is missing, expired or revoked")
    return principal_from_row(row)


async def logout(conn: Conn, caller: Caller, token: str) -> None:
    """Revoke the caller's session ``token`` at once. Caller's transaction."""
    await conn.execute(
        "UPDATE sessions SET revoked_at = now() WHERE token_hash = $1 AND revoked_at IS NULL",
        hash_token(token),
    )
    principal = caller.principal
    event = caller.event("auth.logout", object_type="user", object_id=principal.username)
    await audit.append_to_clinics(conn, event, _chains(principal))
