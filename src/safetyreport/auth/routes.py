"""HTTP routes: login, logout, me."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_204_NO_CONTENT

from safetyreport.auth import service
from safetyreport.auth.http import PUBLIC, principal_of
from safetyreport.auth.users import UserView
from safetyreport.state import app_state, client_address


class LoginRequest(msgspec.Struct, forbid_unknown_fields=True):
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class AuthController(Controller):
    path = "/api/v1"
    tags = ["auth"]

    @post("/auth/login", status_code=HTTP_200_OK, opt={PUBLIC: True, "exclude_from_auth": True})
    async def login(
        self, request: Request[Any, Any, Any], data: JSONBody[LoginRequest]
    ) -> service.LoginResult:
        """Exchange a username and password for a bearer token."""
        state = app_state(request)
        return await service.login(
            state.pool, data.username, data.password, client_address(request), state.settings.auth
        )

    @post("/auth/logout", status_code=HTTP_204_NO_CONTENT)
    async def logout(self, request: Request[Any, Any, Any]) -> None:
        """Revoke the token this request carries (bearer or session cookie), at once."""
        state = app_state(request)
        # The token the middleware authenticated, wherever the request carried it.
        token = str(request.auth)
        await service.logout(state.pool, token, principal_of(request), client_address(request))

    @get("/me")
    async def me(self, request: Request[Any, Any, Any]) -> UserView:
        """The user behind the token, with role and clinics."""
        return principal_of(request).view()
