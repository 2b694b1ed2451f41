"""The browser session: the cookie that carries the token, and the login form's CSRF cookie.

The session cookie holds the same opaque token an API client gets from
``/api/v1/auth/login`` (only its SHA-256 is stored), so the pages and the API share one
session model: idle and absolute expiry, revocation at logout, throttled logins.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie

from safetyreport.auth import devices
from safetyreport.auth.http import SESSION_COOKIE
from safetyreport.settings import Settings
from safetyreport.state import app_state

# A random value set with the login form and echoed by it (double submit): another site
# can neither read it nor set our cookies, so it cannot post the form for someone. It
# stops login CSRF (being signed in, unawares, as the attacker).
LOGIN_CSRF_COOKIE = "sr_login_csrf"


def is_https(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """Whether the browser reached us over TLS: directly, or through a trusted proxy."""
    if connection.url.scheme == "https":
        return True
    peer = connection.client.host if connection.client else None
    proto = connection.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return proto == "https" and peer in app_state(connection).settings.trusted_proxies


def _cookie(
    connection: ASGIConnection[Any, Any, Any, Any], key: str, value: str, max_age: int
) -> Cookie:
    return Cookie(
        key=key,
        value=value,
        path="/",
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=is_https(connection),
    )


def session_cookie(
    connection: ASGIConnection[Any, Any, Any, Any], token: str, settings: Settings
) -> Cookie:
    # Lives as long as the session can; the server decides when it really ends.
    max_age = int(settings.auth.session_absolute.total_seconds())
    return _cookie(connection, SESSION_COOKIE, token, max_age)


def device_cookie(
    connection: ASGIConnection[Any, Any, Any, Any],
    token: str,
    presented: list[str],
    settings: Settings,
) -> Cookie:
    """The known-device cookie (see ``auth.devices``), with ``token`` first."""
    max_age = int(settings.auth.known_device_lifetime.total_seconds())
    value = devices.cookie_value(token, presented)
    return _cookie(connection, devices.DEVICE_COOKIE, value, max_age)


def expired_session_cookie(connection: ASGIConnection[Any, Any, Any, Any]) -> Cookie:
    return _cookie(connection, SESSION_COOKIE, "", 0)


def login_csrf_cookie(connection: ASGIConnection[Any, Any, Any, Any], value: str) -> Cookie:
    return _cookie(connection, LOGIN_CSRF_COOKIE, value, 3600)


def new_login_csrf() -> str:
    return secrets.token_urlsafe(24)


def login_csrf_ok(connection: ASGIConnection[Any, Any, Any, Any], sent: str | None) -> bool:
    expected = connection.cookies.get(LOGIN_CSRF_COOKIE, "")
    return bool(expected) and bool(sent) and hmac.compare_digest(expected, str(sent))
