"""What every page shares: who may see it, how it renders, and how errors become pages.

``Page`` is the page's request context (the signed-in user or None, the address, the
settings); ``require_page_role`` checks the route's permission set and sends anonymous
users to the login form; ``page_exception_handler`` renders any error as a page.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, TypeAlias

import msgspec
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler
from litestar.params import SkipValidation
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_303_SEE_OTHER

from safetyreport.auth import service
from safetyreport.auth.http import csrf_token_for, signed_in
from safetyreport.auth.permissions import (
    ROLES_OPT,
    Role,
)
from safetyreport.auth.users import Principal
from safetyreport.caller import Caller
from safetyreport.errors import Forbidden, NotAuthenticated, TooManyRequests
from safetyreport.errors import exception_to_response as api_exception_to_response
from safetyreport.request_context import AddressDep, StateDep
from safetyreport.settings import Settings
from safetyreport.state import app_state
from safetyreport.web.assets import PAGE_HEADERS

_log = logging.getLogger(__name__)

LANDING: dict[Role, str] = {
    "nurse": "/report",
    "safety_officer": "/alerts",
    "admin": "/alerts",
    "auditor": "/audit",
}

# The session flowsheet (web/routes.py), for the roles of the report form.
FLOWSHEET = "/sessions/flowsheet"
# The safety-signals dashboard (web/routes.py), for the roles that read alerts.
ANALYTICS = "/analytics"

# Navigation per role: (path, label).
_NAV: dict[Role, tuple[tuple[str, str], ...]] = {
    "nurse": (("/report", "Report"), (FLOWSHEET, "Flowsheet"), ("/patients", "Patients")),
    "safety_officer": (
        ("/alerts", "Alerts"),
        ("/report", "Report"),
        (FLOWSHEET, "Flowsheet"),
        ("/patients", "Patients"),
        ("/rems", "REMS forms"),
        (ANALYTICS, "Safety signals"),
    ),
    "admin": (
        ("/alerts", "Alerts"),
        ("/audit", "Audit trail"),
        ("/patients", "Patients"),
        ("/rems", "REMS forms"),
        (ANALYTICS, "Safety signals"),
    ),
    "auditor": (
        ("/audit", "Audit trail"),
        ("/patients", "Patients"),
        (ANALYTICS, "Safety signals"),
    ),
}
# Pages a sign-in may return to besides the landing pages (their paths, or a prefix).
_RETURNABLE = (FLOWSHEET, "/patients", "/rems", ANALYTICS)
_RETURNABLE_PREFIXES = ("/reports/", "/alerts/", "/patients/")
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


def safe_next(path: str | None) -> str | None:
    """A page of ours to return to after login; anything else (other sites too) is ignored."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return None
    page = path.split("?", 1)[0]
    allowed = (
        page in LANDING.values() or page in _RETURNABLE or page.startswith(_RETURNABLE_PREFIXES)
    )
    return path if allowed else None


async def require_page_role(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Guard of the pages: the page's ``opt["roles"]`` (a permission set, as for the API)
    lists the roles it is for. Nobody signed in: to the login form, then back here."""
    user = signed_in(connection)
    if user is None:
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
        return render(self.request, self.settings, template, self.user, status_code, **context)


def provide_page(request: Request[Any, Any, Any], address: AddressDep, app_state: StateDep) -> Page:
    return Page(request, signed_in(request), address, app_state.settings)


PageDep: TypeAlias = NamedDependency[SkipValidation[Page]]


def base_context(
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


def render(
    request: Request[Any, Any, Any],
    settings: Settings,
    template: str,
    principal: Principal | None,
    status_code: int = 200,
    **context: Any,
) -> Template:
    return Template(
        template_name=template,
        context=base_context(request, settings, principal) | context,
        headers=PAGE_HEADERS,
        status_code=status_code,
    )


def redirect(path: str) -> Redirect:
    return Redirect(path, status_code=HTTP_303_SEE_OTHER, headers={"Cache-Control": "no-store"})


def refusal(error: NotAuthenticated | TooManyRequests) -> dict[str, Any]:
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
        return redirect(f"/login?next={exc.path}" if safe_next(exc.path) else "/login")
    # One mapping of exceptions to statuses (and its logging of unexpected errors).
    problem = api_exception_to_response(request, exc)
    content = problem.content
    title = getattr(content, "title", "Error")
    detail = getattr(content, "detail", "")
    principal = signed_in(request)
    status = problem.status_code or 500
    # Not a page handler: the page may have failed before its dependencies were given.
    settings = app_state(request).settings
    return render(
        request,
        settings,
        "error.html",
        principal,
        status_code=status,
        title=title,
        detail=detail,
        status=status,
    )
