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
import re
import uuid
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import Provide
from litestar.params import FromPath, FromQuery, URLEncodedBody
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_303_SEE_OTHER

from safetyreport.alerts import queue
from safetyreport.auth import devices, service
from safetyreport.auth.http import csrf_matches, csrf_token_for
from safetyreport.auth.permissions import (
    ALERT_READERS,
    ALERT_WORKERS,
    AUDIT_READERS,
    PAGE_OPT,
    PUBLIC,
    REPORT_READERS,
    REPORT_WRITERS,
    allow,
)
from safetyreport.errors import Forbidden, NotFound
from safetyreport.patients import service as patients
from safetyreport.reports import service as reports
from safetyreport.reports.routes import PatientRefFilter
from safetyreport.reports.types import PATIENT_REF_PATTERN, STOCK_CONCERNS
from safetyreport.request_context import CallerDep, DbDep
from safetyreport.sessions.criteria import criteria_for
from safetyreport.web import session
from safetyreport.web.assets import OFFLINE_PAGES, PAGE_HEADERS, asset_version, static_files
from safetyreport.web.forms import (
    KIND_LABELS,
    OPTIONS,
    all_forms,
    report_form,
    report_sections,
    step_forms,
)
from safetyreport.web.pages import (
    LANDING,
    RECENT_REPORTS,
    LoginForm,
    LogoutForm,
    Page,
    PageDep,
    page_exception_handler,
    provide_page,
    redirect,
    refusal,
    render,
    require_page_role,
    safe_next,
)

_log = logging.getLogger(__name__)
# The analytics' routes and dose bands (analytics_route, analytics_dose_band: migration 0020).
ANALYTICS_ROUTES = ("intranasal", "intravenous", "intramuscular", "oral", "other")
ANALYTICS_DOSE_BANDS = (
    "28 mg",
    "56 mg",
    "84 mg",
    "< 0.5 mg/kg",
    "0.5-0.75 mg/kg",
    "0.75-1.0 mg/kg",
    "> 1.0 mg/kg",
    "all doses",
    "other",
    "unknown",
)
PATIENT_REF = re.compile(PATIENT_REF_PATTERN)


class WebController(Controller):
    """The pages. Anonymous requests reach them (``PAGE_OPT``) and are sent to /login."""

    path = "/"
    include_in_schema = False
    opt = {PAGE_OPT: True}
    dependencies = {"page": Provide(provide_page, sync_to_thread=False)}
    exception_handlers = {Exception: page_exception_handler}

    @get("/")
    async def home(self, page: PageDep) -> Redirect:
        return redirect(LANDING[page.user.role] if page.user else "/login")

    @get("/login")
    async def login_page(self, page: PageDep, next: FromQuery[str | None] = None) -> Response[Any]:
        if page.user is not None:
            return redirect(safe_next(next) or LANDING[page.user.role])
        return self._login_form(page, next=safe_next(next) or "")

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
        response = render(
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
        next_page = safe_next(data.next) or ""
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
                **refusal(result.error),
            )
        response = redirect(next_page or LANDING[result.user.role])
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
        response = redirect("/login")
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

    @get("/sessions/flowsheet", guards=[require_page_role], opt=allow(REPORT_WRITERS))
    async def flowsheet_page(self, db: DbDep, page: PageDep) -> Template:
        """The nurse's session flowsheet (flowsheet.js): kept on the tablet for offline use,
        so it names no patient; the session in progress comes from the tablet or the API.
        The fitness-to-leave criteria are the stored ones, with their numbers."""
        return page.render(
            "flowsheet.html",
            steps=step_forms(),
            clinics=sorted(page.caller.principal.clinic_names.items()),
            criteria=await criteria_for(db),
        )

    @get("/report/recent", guards=[require_page_role], opt=allow(REPORT_READERS))
    async def recent_reports(
        self,
        db: DbDep,
        page: PageDep,
        patient_ref: PatientRefFilter = None,
    ) -> Template:
        """The recent-reports list alone, for the report page to refresh after sending;
        with ``patient_ref``, that patient's reports at the user's clinics (to amend one)."""
        filters = reports.ReportFilters(patient_ref=patient_ref, limit=RECENT_REPORTS)
        recent = await reports.list_reports(db, page.caller, filters)
        return page.render(
            "_recent.html",
            recent=recent.items,
            kind_labels=KIND_LABELS,
            options=OPTIONS,
            patient_ref=patient_ref,
        )

    @get("/reports/{report_id:uuid}", guards=[require_page_role], opt=allow(REPORT_READERS))
    async def report_detail(
        self, db: DbDep, page: PageDep, report_id: FromPath[uuid.UUID]
    ) -> Template:
        caller = page.caller
        report = await reports.read_report(db, caller, report_id)
        # A misuse concern stored with a stock concern type of old is amended under its
        # old rules: its form offers those types (and their quantities).
        legacy = report.body.get("concern_type") in STOCK_CONCERNS
        return page.render(
            "report_detail.html",
            report=report,
            sections=report_sections(report.kind, legacy),
            fields=report_form(report.kind, legacy),
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
        people = await queue.assignees(db, page.caller, alert_id)
        return page.render(
            "alert_detail.html", alert=alert, assignees=people.items, kind_labels=KIND_LABELS
        )

    @get("/audit", guards=[require_page_role], opt=allow(AUDIT_READERS))
    async def audit_page(self, page: PageDep) -> Template:
        clinics = sorted(page.caller.principal.clinic_names.items())
        return page.render("audit.html", clinics=clinics)

    @get("/patients", guards=[require_page_role], opt=allow(REPORT_READERS))
    async def find_patient(
        self, page: PageDep, patient_ref: FromQuery[str | None] = None
    ) -> Response[Any]:
        """The search box alone; a reference given goes to that patient's page."""
        ref = (patient_ref or "").strip()
        if ref and PATIENT_REF.fullmatch(ref):
            return redirect(f"/patients/{ref}")
        error = "Letters, digits, - and _ only, at most 64." if ref else ""
        return page.render("patient.html", patient_ref="", query=ref, error=error)

    @get("/patients/{patient_ref:str}", guards=[require_page_role], opt=allow(REPORT_READERS))
    async def patient_page(self, db: DbDep, page: PageDep, patient_ref: FromPath[str]) -> Template:
        """The patient's history, drawn by its script from the timeline API (which audits
        the read); another clinic's patient, or none, is a 404 here as there."""
        if not PATIENT_REF.fullmatch(patient_ref) or not await patients.patient_is_known(
            db, page.caller.principal, patient_ref
        ):
            raise NotFound(f"no patient {patient_ref} at your clinics")
        return page.render(
            "patient.html",
            patient_ref=patient_ref,
            query="",
            error="",
            alert_links=page.caller.principal.role in ALERT_WORKERS,
            labels={"drug": OPTIONS["drug"], "kind": KIND_LABELS},
        )

    @get("/rems", guards=[require_page_role], opt=allow(ALERT_WORKERS))
    async def rems_page(self, page: PageDep) -> Template:
        """The REMS forms to send, overdue first; the list comes from the forms API."""
        principal = page.caller.principal
        return page.render(
            "rems.html",
            clinics=sorted(principal.clinic_names.items()),
            can_submit=principal.role in REPORT_WRITERS,
            labels={"drug": OPTIONS["drug"], "kind": KIND_LABELS},
        )

    @get("/analytics", guards=[require_page_role], opt=allow(ALERT_READERS))
    async def analytics_page(self, page: PageDep) -> Template:
        """The safety-signals dashboard (analytics.js): what is unusual, the p-chart, the
        funnel plot and the rates, drawn from the analytics API (which audits the reads).
        Its query parameters (``event_type``, ``clinic``, ``grain``, ...) are the initial
        filters: the signal alert links here with them."""
        return page.render(
            "analytics.html",
            clinics=sorted(page.caller.principal.clinic_names.items()),
            drugs=OPTIONS["drug"],
            routes=ANALYTICS_ROUTES,
            dose_bands=ANALYTICS_DOSE_BANDS,
        )

    @get("/offline", opt=PUBLIC)
    async def offline(self, page: PageDep) -> Template:
        """What the service worker shows for a page it has no copy of while offline."""
        return render(page.request, page.settings, "offline.html", None)

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
