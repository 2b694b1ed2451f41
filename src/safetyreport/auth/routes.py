"""HTTP routes: login, logout, me, and the lock-out alerts for admins."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_204_NO_CONTENT

from safetyreport import audit
from safetyreport.auth import devices, lockouts, service
from safetyreport.auth.http import principal_of, require_roles
from safetyreport.auth.permissions import ADMINS, PUBLIC, allow
from safetyreport.auth.users import UserView
from safetyreport.state import app_state, client_address
from safetyreport.times import require_utc
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
        self, request: Request[Any, Any, Any], data: JSONBody[LoginRequest]
    ) -> Response[service.LoginResult]:
        """Exchange a username and password (and second factor) for a bearer token.

        A device that signed in before sends its ``device_token`` (from an earlier
        response) in the ``X-Device-Token`` header, or carries it in a cookie: failures
        from elsewhere then never lock it out.
        """
        state = app_state(request)
        tokens = devices.presented_tokens(request)
        credentials = service.Credentials(
            username=data.username,
            password=data.password,
            otp=data.otp,
            recovery_code=data.recovery_code,
            device_tokens=tokens,
        )
        result = await service.login(
            state.pool, credentials, client_address(request), state.settings
        )
        return Response(
            result, cookies=[device_cookie(request, result.device_token, tokens, state.settings)]
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

    @get("/auth/lockouts", guards=[require_roles], opt=allow(ADMINS))
    async def lockout_alerts(
        self,
        request: Request[Any, Any, Any],
        since: Annotated[
            datetime | None,
            QueryParameter(description="only alerts raised after this time (UTC)"),
        ] = None,
    ) -> list[lockouts.LockoutAlert]:
        """Admins: the newest lock-out patterns (an account attacked from many addresses,
        an address guessing many accounts) touching their clinics.

        A read of user data: audited in the chain of each clinic listed (address-wide
        alerts in the global chain). An empty list shows nothing and is not recorded, so
        the page's polling for new alerts (``since`` its newest) adds no entries.
        """
        principal = principal_of(request)
        after = None if since is None else require_utc("since", since)
        clinics = None if principal.all_clinics else sorted(principal.clinic_ids)
        async with app_state(request).pool.acquire() as conn, conn.transaction():
            items = await lockouts.recent(conn, clinics, after)
            if not items:
                return items

            def of(clinic: str | None) -> list[lockouts.LockoutAlert]:
                return [a for a in items if (clinic in a.clinics if clinic else not a.clinics)]

            def listed(clinic: str | None) -> audit.AuditEvent:
                shown = of(clinic)
                return audit.AuditEvent(
                    actor=principal.actor(),
                    action="auth.lockouts_listed",
                    object_type="lockout_alert",
                    client_addr=client_address(request),
                    details={
                        "since": None if after is None else after.isoformat(),
                        "count": len(shown),
                        "alert_ids": [a.id for a in shown],
                    },
                )

            targets: set[str | None] = set()
            for alert in items:
                if not alert.clinics:
                    targets.add(None)
                targets.update(c for c in alert.clinics if clinics is None or c in clinics)
            await audit.append_for_each_clinic(conn, targets, listed)
        return items
