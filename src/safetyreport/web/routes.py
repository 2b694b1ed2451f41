"""The web pages: login and logout, the report forms, the alert queue and the audit page.

Pages are thin like the API routes: they authenticate (the session cookie, see
``auth.http``), check the role (``require_page_role`` and a permission set), call one
feature service with the page's ``caller`` and render a template (``Page``). The
data a page changes goes through the JSON API from the page's script, with the CSRF
header; the only forms posted to the pages themselves are login and logout, each with a
CSRF field of its own.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, TypeAlias

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency, Provide
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, FromQuery, SkipValidation, URLEncodedBody
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
    ROLES_OPT,
    Role,
    allow,
)
from safetyreport.auth.users import Principal
from safetyreport.caller import Caller
from safetyreport.errors import Forbidden, NotAuthenticated, TooManyRequests
from safetyreport.errors import exception_to_response as api_exception_to_response
from safetyreport.reports import service as reports
from safetyreport.request_context import AddressDep, CallerDep, DbDep, StateDep
from safetyreport.settings import Settings
from safetyreport.state import app_state
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


async def require_page_role(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Guard of the pages: the page's ``opt["roles"]`` (a permission set, as for the API)
    lists the roles it is for. Nobody signed in: to the login form, then back here."""
    user = connection.scope.get("user")
    if not isinstance(user, Principal):
        raise LoginRequired(connection.url.path)
    allowed: tuple[Role, ...] = handler.opt.get(ROLES_OPT, ())
    if user.role not in allowed:
        raise Forbidden(f"this page is not for the {ROLE_LABELS[user.role].lower()} role")


@dataclass(frozen=True, slots=True)
class Page:
    """What a page handler is given (as ``page``): who is signed in, and how to render.

    Pages reach anonymous users too (``PAGE_OPT``): for them ``user`` is None. A page
    for some roles has ``require_page_role`` as its guard and calls its service with
    ``caller``.
    """

    request: Request[Any, Any, Any]
    user: Principal | None
    address: str
    settings: Settings

    @property
    def caller(self) -> Caller:
        """The signed-in user as services take them; LoginRequired when nobody is."""
        if self.user is None:
            raise LoginRequired(self.request.url.path)
        return Caller(self.user, self.address)

    def render(self, template: str, status_code: int = 200, **context: Any) -> Template:
        return _render(self.request, self.settings, template, self.user, status_code, **context)


def provide_page(request: Request[Any, Any, Any], address: AddressDep, app_state: StateDep) -> Page:
    user = request.scope.get("user")
    principal = user if isinstance(user, Principal) else None
    return Page(request, principal, address, app_state.settings)


PageDep: TypeAlias = NamedDependency[SkipValidation[Page]]


def _base_context(
    request: Request[Any, Any, Any], settings: Settings, principal: Principal | None
) -> dict[str, Any]:
    token = request.auth if principal is not None else None
    return {
        "user": principal,
        "role_label": ROLE_LABELS[principal.role] if principal else "",
        "nav": _NAV[principal.role] if principal else (),
        "landing": LANDING[principal.role] if principal else "/login",
        "csrf_token": csrf_token_for(str(token)) if token else "",
        "current_path": request.url.path,
        # The page forgets what it kept offline once the session has been idle this long.
        "idle_seconds": int(settings.auth.session_idle.total_seconds()) if principal else 0,
    }


def _render(
    request: Request[Any, Any, Any],
    settings: Settings,
    template: str,
    principal: Principal | None,
    status_code: int = 200,
    **context: Any,
) -> Template:
    return Template(
        template_name=template,
        context=_base_context(request, settings, principal) | context,
        headers=PAGE_HEADERS,
        status_code=status_code,
    )


def _redirect(path: str) -> Redirect:
    return Redirect(path, status_code=HTTP_303_SEE_OTHER, headers={"Cache-Control": "no-store"})


def _refusal(error: NotAuthenticated | TooManyRequests) -> dict[str, Any]:
    """The login form's status and message for a refused sign-in."""
    if isinstance(error, TooManyRequests):
        minutes = max(1, round(error.retry_after / 60))
        return {
            "status_code": 429,
            "error": f"Too many failed sign-ins. Try again in about {minutes} minute(s).",
        }
    second_factor = error.detail != service.WRONG_CREDENTIALS
    return {
        "status_code": 401,
        "error": (
            "Enter the current code from your authenticator app, or a recovery code."
            if second_factor
            else "Wrong username or password."
        ),
    }


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
    # Not a page handler: the page may have failed before its dependencies were given.
    settings = app_state(request).settings
    return _render(
        request,
        settings,
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
    dependencies = {"page": Provide(provide_page, sync_to_thread=False)}
    exception_handlers = {Exception: page_exception_handler}

    @get("/")
    async def home(self, page: PageDep) -> Redirect:
        return _redirect(LANDING[page.user.role] if page.user else "/login")

    @get("/login")
    async def login_page(self, page: PageDep, next: FromQuery[str | None] = None) -> Response[Any]:
        if page.user is not None:
            return _redirect(_safe_next(next) or LANDING[page.user.role])
        return self._login_form(page, next=_safe_next(next) or "")

    def _login_form(
        self,
        page: Page,
        *,
        next: str,
        error: str = "",
        username: str = "",
        status_code: int = 200,
    ) -> Template:
        # Keep the value a browser already holds, so two open login tabs both work.
        request = page.request
        value = request.cookies.get(session.LOGIN_CSRF_COOKIE) or session.new_login_csrf()
        response = _render(
            request,
            page.settings,
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
        self,
        request: Request[Any, Any, Any],
        db: DbDep,
        page: PageDep,
        data: URLEncodedBody[LoginForm],
    ) -> Response[Any]:
        next_page = _safe_next(data.next) or ""
        if not session.login_csrf_ok(request, data.csrf):
            return self._login_form(
                page,
                next=next_page,
                username=data.username,
                status_code=403,
                error="The sign-in form had expired. Please sign in again.",
            )
        if not data.username.strip() or not data.password or len(data.password) > 1024:
            return self._login_form(
                page,
                next=next_page,
                username=data.username,
                status_code=422,
                error="Enter your username and password.",
            )
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
        result = await service.login(db, credentials, page.address, page.settings)
        if isinstance(result, service.LoginRefused):
            # Rendered, not raised: the request's transaction keeps the attempt's record.
            return self._login_form(
                page,
                next=next_page,
                username=data.username,
                **_refusal(result.error),
            )
        response = _redirect(next_page or LANDING[result.user.role])
        response.set_cookie(session.session_cookie(request, result.token, page.settings))
        response.set_cookie(
            session.device_cookie(request, result.device_token, tokens, page.settings)
        )
        return response

    @post("/logout", status_code=HTTP_303_SEE_OTHER)
    async def logout(
        self,
        request: Request[Any, Any, Any],
        db: DbDep,
        page: PageDep,
        data: URLEncodedBody[LogoutForm],
    ) -> Redirect:
        if page.user is not None:  # else already signed out (or expired): nothing to do
            if not csrf_matches(str(request.auth), data.csrf):
                raise Forbidden("the sign-out form is out of date; reload the page and try again")
            await service.logout(db, page.caller, str(request.auth))
        response = _redirect("/login")
        response.set_cookie(session.expired_session_cookie(request))
        return response

    @get("/report", guards=[require_page_role], opt=allow(REPORT_WRITERS))
    async def report_page(self, page: PageDep) -> Template:
        principal = page.caller.principal
        return page.render(
            "report.html",
            forms=all_forms(),
            kind_labels=KIND_LABELS,
            clinics=sorted(principal.clinic_names.items()),
        )

    @get("/report/recent", guards=[require_page_role], opt=allow(REPORT_READERS))
    async def recent_reports(self, db: DbDep, page: PageDep) -> Template:
        """The recent-reports list alone, for the report page to refresh after sending."""
        filters = reports.ReportFilters(limit=RECENT_REPORTS)
        recent = await reports.list_reports(db, page.caller, filters)
        return page.render("_recent.html", recent=recent.items, kind_labels=KIND_LABELS)

    @get("/reports/{report_id:uuid}", guards=[require_page_role], opt=allow(REPORT_READERS))
    async def report_detail(
        self, db: DbDep, page: PageDep, report_id: FromPath[uuid.UUID]
    ) -> Template:
        caller = page.caller
        report = await reports.read_report(db, caller, report_id)
        return page.render(
            "report_detail.html",
            report=report,
            fields=report_form(report.kind),
            kind_labels=KIND_LABELS,
            options=OPTIONS,
            can_amend=caller.principal.role in REPORT_WRITERS,
        )

    @get("/alerts", guards=[require_page_role], opt=allow(ALERT_WORKERS))
    async def alerts_page(self, page: PageDep) -> Template:
        clinics = sorted(page.caller.principal.clinic_names.items())
        return page.render("alerts.html", clinics=clinics)

    @get("/alerts/{alert_id:uuid}", guards=[require_page_role], opt=allow(ALERT_WORKERS))
    async def alert_detail(
        self, db: DbDep, page: PageDep, alert_id: FromPath[uuid.UUID]
    ) -> Template:
        alert = await queue.read_alert(db, page.caller, alert_id)
        return page.render("alert_detail.html", alert=alert, kind_labels=KIND_LABELS)

    @get("/audit", guards=[require_page_role], opt=allow(AUDIT_READERS))
    async def audit_page(self, page: PageDep) -> Template:
        clinics = sorted(page.caller.principal.clinic_names.items())
        return page.render("audit.html", clinics=clinics)

    @get("/offline", opt=PUBLIC)
    async def offline(self, page: PageDep) -> Template:
        """What the service worker shows for a page it has no copy of while offline."""
        return _render(page.request, page.settings, "offline.html", None)

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
    async def current(
        self, request: Request[Any, Any, Any], caller: CallerDep
    ) -> Response[SessionView]:
        user = caller.principal
        view = SessionView(user.username, user.role, csrf_token_for(str(request.auth)))
        return Response(view, headers={"Cache-Control": "no-store"})
