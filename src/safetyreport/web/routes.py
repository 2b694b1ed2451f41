"""The web pages: login and logout, the report forms, the alert queue and the audit page.

Pages are thin like the API routes: they authenticate (the session cookie, see
``auth.http``), check the role, call the feature services and render a template. The
data a page changes goes through the JSON API from the page's script, with the CSRF
header; the only forms posted to the pages themselves are login and logout, each with a
CSRF field of its own.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, FromQuery, URLEncodedBody
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_303_SEE_OTHER

from safetyreport.alerts import queue
from safetyreport.auth import devices, service
from safetyreport.auth.http import csrf_matches, csrf_token_for
from safetyreport.auth.permissions import (
    ALERT_WORKERS,
    AUDIT_READERS,
    PAGE_OPT,
    PUBLIC,
    REPORT_READERS,
    REPORT_WRITERS,
    Role,
)
from safetyreport.auth.users import Principal
from safetyreport.caller import Caller
from safetyreport.db.pool import transaction
from safetyreport.errors import Forbidden, NotAuthenticated, TooManyRequests
from safetyreport.errors import exception_to_response as api_exception_to_response
from safetyreport.reports import service as reports
from safetyreport.state import app_state, client_address
from safetyreport.web import session
from safetyreport.web.assets import OFFLINE_PAGES, PAGE_HEADERS, asset_version, static_files
from safetyreport.web.forms import KIND_LABELS, OPTIONS, all_forms, report_form

_log = logging.getLogger(__name__)

LANDING: dict[Role, str] = {
    "nurse": "/report",
    "safety_officer": "/alerts",
    "admin": "/alerts",
    "auditor": "/audit",
}

# Navigation per role: (path, label).
_NAV: dict[Role, tuple[tuple[str, str], ...]] = {
    "nurse": (("/report", "Report"),),
    "safety_officer": (("/alerts", "Alerts"), ("/report", "Report")),
    "admin": (("/alerts", "Alerts"), ("/audit", "Audit trail")),
    "auditor": (("/audit", "Audit trail"),),
}
ROLE_LABELS: dict[Role, str] = {
    "nurse": "Nurse",
    "safety_officer": "Safety officer",
    "auditor": "Auditor",
    "admin": "Administrator",
}
RECENT_REPORTS = 20


class LoginRequired(Exception):
    """The page needs a signed-in user: the browser goes to the login form."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class LoginForm(msgspec.Struct):
    # Defaults, so a tampered form gets the form back with a message, not a 400 page.
    username: str = ""
    password: str = ""
    # The second factor: a TOTP code, or a recovery code (told apart by their length).
    otp: str = ""
    csrf: str = ""
    next: str = ""


class LogoutForm(msgspec.Struct):
    csrf: str = ""


def _safe_next(path: str | None) -> str | None:
    """A page of ours to return to after login; anything else (other sites too) is ignored."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return None
    page = path.split("?", 1)[0]
    allowed = page in LANDING.values() or page.startswith(("/reports/", "/alerts/"))
    return path if allowed else None


def _require(request: Request[Any, Any, Any], roles: tuple[Role, ...]) -> Principal:
    user = request.scope.get("user")
    if not isinstance(user, Principal):
        raise LoginRequired(request.url.path)
    if user.role not in roles:
        raise Forbidden(f"this page is not for the {ROLE_LABELS[user.role].lower()} role")
    return user


def _base_context(request: Request[Any, Any, Any], principal: Principal | None) -> dict[str, Any]:
    token = request.auth if principal is not None else None
    return {
        "user": principal,
        "role_label": ROLE_LABELS[principal.role] if principal else "",
        "nav": _NAV[principal.role] if principal else (),
        "landing": LANDING[principal.role] if principal else "/login",
        "csrf_token": csrf_token_for(str(token)) if token else "",
        "current_path": request.url.path,
        # The page forgets what it kept offline once the session has been idle this long.
        "idle_seconds": (
            int(app_state(request).settings.auth.session_idle.total_seconds()) if principal else 0
        ),
    }


def _page(
    request: Request[Any, Any, Any],
    template: str,
    principal: Principal | None,
    status_code: int = 200,
    **context: Any,
) -> Template:
    return Template(
        template_name=template,
        context=_base_context(request, principal) | context,
        headers=PAGE_HEADERS,
        status_code=status_code,
    )


def _redirect(path: str) -> Redirect:
    return Redirect(path, status_code=HTTP_303_SEE_OTHER, headers={"Cache-Control": "no-store"})


def page_exception_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Errors on pages are pages too; the API keeps its problem documents."""
    if isinstance(exc, LoginRequired):
        return _redirect(f"/login?next={exc.path}" if _safe_next(exc.path) else "/login")
    # One mapping of exceptions to statuses (and its logging of unexpected errors).
    problem = api_exception_to_response(request, exc)
    content = problem.content
    title = getattr(content, "title", "Error")
    detail = getattr(content, "detail", "")
    user = request.scope.get("user")
    principal = user if isinstance(user, Principal) else None
    status = problem.status_code or 500
    return _page(
        request,
        "error.html",
        principal,
        status_code=status,
        title=title,
        detail=detail,
        status=status,
    )


class WebController(Controller):
    """The pages. Anonymous requests reach them (``PAGE_OPT``) and are sent to /login."""

    path = "/"
    include_in_schema = False
    opt = {PAGE_OPT: True}
    exception_handlers = {Exception: page_exception_handler}

    @get("/")
    async def home(self, request: Request[Any, Any, Any]) -> Redirect:
        user = request.scope.get("user")
        return _redirect(LANDING[user.role] if isinstance(user, Principal) else "/login")

    @get("/login")
    async def login_page(
        self, request: Request[Any, Any, Any], next: FromQuery[str | None] = None
    ) -> Response[Any]:
        user = request.scope.get("user")
        if isinstance(user, Principal):
            return _redirect(_safe_next(next) or LANDING[user.role])
        return self._login_form(request, next=_safe_next(next) or "")

    def _login_form(
        self,
        request: Request[Any, Any, Any],
        *,
        next: str,
        error: str = "",
        username: str = "",
        status_code: int = 200,
    ) -> Template:
        # Keep the value a browser already holds, so two open login tabs both work.
        value = request.cookies.get(session.LOGIN_CSRF_COOKIE) or session.new_login_csrf()
        response = _page(
            request,
            "login.html",
            None,
            status_code=status_code,
            login_csrf=value,
            next=next,
            error=error,
            username=username,
        )
        response.set_cookie(session.login_csrf_cookie(request, value))
        return response

    @post("/login", status_code=HTTP_303_SEE_OTHER)
    async def login(
        self, request: Request[Any, Any, Any], data: URLEncodedBody[LoginForm]
    ) -> Response[Any]:
        next_page = _safe_next(data.next) or ""
        if not session.login_csrf_ok(request, data.csrf):
            return self._login_form(
                request,
                next=next_page,
                username=data.username,
                status_code=403,
                error="The sign-in form had expired. Please sign in again.",
            )
        if not data.username.strip() or not data.password or len(data.password) > 1024:
            return self._login_form(
                request,
                next=next_page,
                username=data.username,
                status_code=422,
                error="Enter your username and password.",
            )
        state = app_state(request)
        tokens = devices.presented_tokens(request)
        code = data.otp.strip()
        recovery = len(code) > 10
        credentials = service.Credentials(
            username=data.username,
            password=data.password,
            otp=None if recovery else code[:10] or None,
            recovery_code=code[:64] if recovery else None,
            device_tokens=tokens,
        )
        try:
            result = await service.login(
                state.pool, credentials, client_address(request), state.settings
            )
        except TooManyRequests as exc:
            minutes = max(1, round(exc.retry_after / 60))
            return self._login_form(
                request,
                next=next_page,
                username=data.username,
                status_code=429,
                error=f"Too many failed sign-ins. Try again in about {minutes} minute(s).",
            )
        except NotAuthenticated as exc:
            second_factor = exc.detail != service.WRONG_CREDENTIALS
            return self._login_form(
                request,
                next=next_page,
                username=data.username,
                status_code=401,
                error=(
                    "Enter the current code from your authenticator app, or a recovery code."
                    if second_factor
                    else "Wrong username or password."
                ),
            )
        response = _redirect(next_page or LANDING[result.user.role])
        response.set_cookie(session.session_cookie(request, result.token, state.settings))
        response.set_cookie(
            session.device_cookie(request, result.device_token, tokens, state.settings)
        )
        return response

    @post("/logout", status_code=HTTP_303_SEE_OTHER)
    async def logout(
        self, request: Request[Any, Any, Any], data: URLEncodedBody[LogoutForm]
    ) -> Redirect:
        user = request.scope.get("user")
        if not isinstance(user, Principal):
            response = _redirect("/login")  # already signed out (or expired): nothing to do
        else:
            if not csrf_matches(str(request.auth), data.csrf):
                raise Forbidden("the sign-out form is out of date; reload the page and try again")
            state = app_state(request)
            await service.logout(state.pool, str(request.auth), user, client_address(request))
            response = _redirect("/login")
        response.set_cookie(session.expired_session_cookie(request))
        return response

    @get("/report")
    async def report_page(self, request: Request[Any, Any, Any]) -> Template:
        principal = _require(request, REPORT_WRITERS)
        return _page(
            request,
            "report.html",
            principal,
            forms=all_forms(),
            kind_labels=KIND_LABELS,
            clinics=sorted(principal.clinic_names.items()),
        )

    @get("/report/recent")
    async def recent_reports(self, request: Request[Any, Any, Any]) -> Template:
        """The recent-reports list alone, for the report page to refresh after sending."""
        principal = _require(request, REPORT_READERS)
        return _page(
            request,
            "_recent.html",
            principal,
            recent=await self._recent(request, principal),
            kind_labels=KIND_LABELS,
        )

    async def _recent(
        self, request: Request[Any, Any, Any], principal: Principal
    ) -> list[reports.ReportView]:
        async with transaction(app_state(request).pool) as conn:
            page = await reports.list_reports(
                conn,
                Caller(principal, client_address(request)),
                reports.ReportFilters(limit=RECENT_REPORTS),
            )
        return page.items

    @get("/reports/{report_id:uuid}")
    async def report_detail(
        self, request: Request[Any, Any, Any], report_id: FromPath[uuid.UUID]
    ) -> Template:
        principal = _require(request, REPORT_READERS)
        async with transaction(app_state(request).pool) as conn:
            report = await reports.read_report(
                conn, Caller(principal, client_address(request)), report_id
            )
        return _page(
            request,
            "report_detail.html",
            principal,
            report=report,
            fields=report_form(report.kind),
            kind_labels=KIND_LABELS,
            options=OPTIONS,
            can_amend=principal.role in REPORT_WRITERS,
        )

    @get("/alerts")
    async def alerts_page(self, request: Request[Any, Any, Any]) -> Template:
        principal = _require(request, ALERT_WORKERS)
        return _page(
            request,
            "alerts.html",
            principal,
            clinics=sorted(principal.clinic_names.items()),
        )

    @get("/alerts/{alert_id:uuid}")
    async def alert_detail(
        self, request: Request[Any, Any, Any], alert_id: FromPath[uuid.UUID]
    ) -> Template:
        principal = _require(request, ALERT_WORKERS)
        alert = await queue.read_alert(
            app_state(request).pool, principal, alert_id, client_address(request)
        )
        return _page(request, "alert_detail.html", principal, alert=alert, kind_labels=KIND_LABELS)

    @get("/audit")
    async def audit_page(self, request: Request[Any, Any, Any]) -> Template:
        principal = _require(request, AUDIT_READERS)
        return _page(
            request,
            "audit.html",
            principal,
            clinics=sorted(principal.clinic_names.items()),
        )

    @get("/offline", opt=PUBLIC)
    async def offline(self, request: Request[Any, Any, Any]) -> Template:
        """What the service worker shows for a page it has no copy of while offline."""
        return _page(request, "offline.html", None)

    @get("/sw.js", opt=PUBLIC)
    async def service_worker(self, request: Request[Any, Any, Any]) -> Template:
        return Template(
            template_name="sw.js",
            context={
                "version": asset_version(),
                "assets": [*static_files(), "/offline"],
                "pages": list(OFFLINE_PAGES),
            },
            media_type="text/javascript",
            headers={
                "Cache-Control": "no-cache",
                "Content-Security-Policy": PAGE_HEADERS["Content-Security-Policy"],
                "X-Content-Type-Options": "nosniff",
            },
        )


class SessionView(msgspec.Struct, frozen=True):
    username: str
    role: str
    csrf_token: str


class WebSessionController(Controller):
    """What a page's script needs to know about its session, fresh from the server.

    A page served from the offline cache may be older than the session: before sending
    its outbox, the report page asks here whether it is still signed in (401 if not) and
    for the session's CSRF token. Only our own pages can read the answer (no CORS).
    """

    path = "/web/session"
    include_in_schema = False

    @get("/")
    async def current(self, request: Request[Any, Any, Any]) -> Response[SessionView]:
        user = request.scope.get("user")
        if not isinstance(user, Principal):  # pragma: no cover - the middleware answers 401
            raise NotAuthenticated("not signed in")
        view = SessionView(user.username, user.role, csrf_token_for(str(request.auth)))
        return Response(view, headers={"Cache-Control": "no-store"})
