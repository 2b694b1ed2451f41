"""Authentication middleware (bearer token or session cookie), CSRF check and role guards.

API clients send ``Authorization: Bearer <token>``. The web pages carry the same opaque
token in an HttpOnly cookie instead; a browser attaches that cookie by itself, so every
unsafe request authenticated by it must also prove it comes from our own pages: it sends
the session's CSRF token (from the page's ``<meta name="csrf-token">``) in the
``X-CSRF-Token`` header. A bearer header wins over the cookie and needs no CSRF token:
another site cannot make a browser send it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from safetyreport.auth.permissions import PAGE_OPT, ROLES_OPT, Role
from safetyreport.auth.service import resolve_token
from safetyreport.auth.users import Principal
from safetyreport.db import pool
from safetyreport.errors import Forbidden, NotAuthenticated
from safetyreport.state import app_state

# Which routes are public, pages or role-guarded: see auth.permissions.
SESSION_COOKIE = "sr_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated(
            "send the token from /api/v1/auth/login as 'Authorization: Bearer …'"
        )
    return token.strip()


def csrf_token_for(session_token: str) -> str:
    """The CSRF token of a session: derived from its secret token, so nothing is stored.

    HMAC keyed by the session token: a page may show it (it reveals nothing about the
    token), and only someone who can read our pages for that session can know it.
    """
    digest = hmac.new(session_token.encode(), b"safetyreport csrf v1", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def csrf_matches(session_token: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(csrf_token_for(session_token), str(sent))


def request_token(connection: ASGIConnection[Any, Any, Any, Any]) -> tuple[str, bool]:
    """The token a request carries and whether it came from the session cookie."""
    if "authorization" in connection.headers:
        return bearer_token(connection), False
    cookie = connection.cookies.get(SESSION_COOKIE, "").strip()
    if cookie:
        return cookie, True
    return bearer_token(connection), False  # raises with the bearer hint


class TokenAuthenticationMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        page = bool(connection.route_handler.opt.get(PAGE_OPT))
        try:
            token, from_cookie = request_token(connection)
            state = app_state(connection)
            async with pool.connection(state.pool) as conn:
                principal = await resolve_token(conn, token, state.settings.auth)
        except NotAuthenticated:
            if page:
                return AuthenticationResult(user=None, auth=None)
            raise
        unsafe = connection.scope.get("method", "GET") not in SAFE_METHODS
        if (
            from_cookie
            and unsafe
            and not page
            and not csrf_matches(token, connection.headers.get(CSRF_HEADER))
        ):
            raise Forbidden(
                f"a request authenticated by the session cookie needs the page's "
                f"{CSRF_HEADER} header"
            )
        return AuthenticationResult(user=principal, auth=token)


def signed_in(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
    """The request's user, or None where nobody is signed in (pages, public routes)."""
    user = connection.scope.get("user")
    return user if isinstance(user, Principal) else None


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    user = signed_in(connection)
    if user is None:
        raise NotAuthenticated("not authenticated")
    return user


async def require_roles(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Guard: the route's ``opt["roles"]`` lists the roles allowed to call it."""
    allowed: tuple[Role, ...] = handler.opt.get(ROLES_OPT, ())
    role = principal_of(connection).role
    if role not in allowed:
        raise Forbidden(f"the {role} role may not do this")
