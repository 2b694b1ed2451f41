"""HTTP routes: login, logout, me, and the lock-out alerts for admins."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_204_NO_CONTENT

from safetyreport.auth import devices, lockouts, service
from safetyreport.auth.http import require_roles
from safetyreport.auth.permissions import ADMINS, PUBLIC, allow
from safetyreport.auth.users import UserView
from safetyreport.errors import exception_to_response
from safetyreport.request_context import AddressDep, CallerDep, DbDep, StateDep, time_query
from safetyreport.times import parse_time
from safetyreport.web.session import device_cookie


class LoginRequest(msgspec.Struct, forbid_unknown_fields=True):
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    # The second factor, for accounts enrolled in it: a TOTP code or a recovery code.
    otp: Annotated[str, msgspec.Meta(max_length=10)] | None = None
    recovery_code: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class AuthController(Controller):
    path = "/api/v1"
    tags = ["auth"]

    @post("/auth/login", status_code=HTTP_200_OK, opt=PUBLIC)
    async def login(
        self,
        request: Request[Any, Any, Any],
        db: DbDep,
        address: AddressDep,
        app_state: StateDep,
        data: JSONBody[LoginRequest],
    ) -> Response[service.LoginResult]:
        """Exchange a username and password (and second factor) for a bearer token.

        A device that signed in before sends its ``device_token`` (from an earlier
        response) in the ``X-Device-Token`` header, or carries it in a cookie: failures
        from elsewhere then never lock it out.
        """
        tokens = devices.presented_tokens(request)
        credentials = service.Credentials(
            username=data.username,
            password=data.password,
            otp=data.otp,
            recovery_code=data.recovery_code,
            device_tokens=tokens,
        )
        result = await service.login(db, credentials, address, app_state.settings)
        if isinstance(result, service.LoginRefused):
            return _refused(request, result)
        cookie = device_cookie(request, result.device_token, tokens, app_state.settings)
        return Response(result, cookies=[cookie])

    @post("/auth/logout", status_code=HTTP_204_NO_CONTENT)
    async def logout(self, request: Request[Any, Any, Any], db: DbDep, caller: CallerDep) -> None:
        """Revoke the token this request carries (bearer or session cookie), at once."""
        # The token the middleware authenticated, wherever the request carried it.
        await service.logout(db, caller, str(request.auth))

    @get("/me")
    async def me(self, caller: CallerDep) -> UserView:
        """The user behind the token, with role and clinics."""
        return caller.principal.view()

    @get("/auth/lockouts", guards=[require_roles], opt=allow(ADMINS))
    async def lockout_alerts(
        self,
        db: DbDep,
        caller: CallerDep,
        since: Annotated[
            str | None, time_query("only alerts raised after this time (RFC 3339 with an offset)")
        ] = None,
    ) -> list[lockouts.LockoutAlert]:
        """Admins: the newest lock-out patterns (an account attacked from many addresses,
        an address guessing many accounts) touching their clinics.

        A read of user data: audited in the chain of each clinic listed (address-wide
        alerts in the global chain). An empty list shows nothing and is not recorded, so
        the page's polling for new alerts (``since`` its newest) adds no entries.
        """
        return await lockouts.list_alerts(db, caller, parse_time("since", since))


def _refused(request: Request[Any, Any, Any], refused: service.LoginRefused) -> Response[Any]:
    """The refusal, answered exactly as its error would be if raised. Returned instead, so
    that the request's transaction commits the attempt's count and audit entry."""
    return exception_to_response(request, refused.error)
