"""Bearer-token authentication middleware and role guards."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from safetyreport.auth.service import resolve_token
from safetyreport.auth.users import Principal, Role
from safetyreport.errors import Forbidden, NotAuthenticated
from safetyreport.state import app_state

# Routes opt out of authentication with opt={PUBLIC: True}.
PUBLIC = "public"
ROLES_OPT = "roles"


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated(
            "send the token from /api/v1/auth/login as 'Authorization: Bearer …'"
        )
    return token.strip()


class TokenAuthenticationMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        token = bearer_token(connection)
        state = app_state(connection)
        principal = await resolve_token(state.pool, token, state.settings.auth)
        return AuthenticationResult(user=principal, auth=token)


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    user = connection.scope.get("user")
    if not isinstance(user, Principal):
        raise NotAuthenticated("not authenticated")
    return user


def require_roles(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Guard: the route's ``opt["roles"]`` lists the roles allowed to call it."""
    allowed: tuple[Role, ...] = handler.opt.get(ROLES_OPT, ())
    role = principal_of(connection).role
    if role not in allowed:
        raise Forbidden(f"the {role} role may not do this")
