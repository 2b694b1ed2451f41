"""The web pages' security and plumbing, without a browser: the session cookie, CSRF,
login and logout through the forms (audited), role landing pages, headers and assets.

The browser tests (tests/test_web_browser.py) cover what only a browser can show.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec.inspect as mi
import pytest
from litestar.testing import AsyncTestClient

import safetyreport
from safetyreport.app import create_app
from safetyreport.auth.http import SESSION_COOKIE, csrf_token_for
from safetyreport.auth.permissions import Role
from safetyreport.auth.users import principal_by_username
from safetyreport.caller import Caller
from safetyreport.reports.service import insert_report
from safetyreport.reports.types import KINDS, STOCK_CONCERNS
from safetyreport.reports.validation import validate_report
from safetyreport.settings import AlertSettings, Settings
from safetyreport.web import forms
from safetyreport.web.assets import CONTENT_SECURITY_POLICY, STATIC_DIR, TEMPLATE_DIR
from safetyreport.web.session import LOGIN_CSRF_COOKIE
from tests.helpers.reports import bp_report, misuse_report, stock_report
from tests.helpers.web import CSRF_FIELD, form_login
from tests.helpers.world import PASSWORD, World

PEER = "testclient"
_CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]*)">')


@pytest.fixture
async def people(world: World) -> dict[str, str]:
    await world.clinic("C1")
    return {
        "nurse": await world.user("nina", "nurse", ["C1"]),
        "safety_officer": await world.user("olga", "safety_officer", ["C1"]),
        "auditor": await world.user("audra", "auditor", all_clinics=True),
        "admin": await world.user("adam", "admin", all_clinics=True),
    }


def set_cookie_header(response: httpx.Response, name: str) -> str:
    headers = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    assert len(headers) == 1, response.headers
    return headers[0]


def page_csrf(html: str) -> str:
    match = _CSRF_META.search(html)
    assert match is not None
    assert match[1]
    return match[1]


# --- login and logout through the pages --------------------------------------------------


async def test_form_login_sets_an_httponly_strict_session_cookie(
    client: AsyncTestClient[Any], people: dict[str, str], db: asyncpg.Connection[Any]
) -> None:
    response = await form_login(client, people["nurse"])
    assert response.status_code == 303
    assert response.headers["location"] == "/report"
    cookie = set_cookie_header(response, SESSION_COOKIE).lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "path=/" in cookie
    assert "secure" not in cookie  # plain http: a Secure cookie would never come back
    # The cookie carries an ordinary session token (only its hash is stored).
    token = client.cookies[SESSION_COOKIE]
    me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["username"] == people["nurse"]
    assert await db.fetchval("SELECT count(*) FROM sessions WHERE revoked_at IS NULL") == 1


@pytest.mark.parametrize(
    ("role", "landing"),
    [
        ("nurse", "/report"),
        ("safety_officer", "/alerts"),
        ("auditor", "/audit"),
        ("admin", "/alerts"),
    ],
)
async def test_each_role_lands_on_its_own_page(
    client: AsyncTestClient[Any], people: dict[str, str], role: Role, landing: str
) -> None:
    response = await form_login(client, people[role])
    assert response.headers["location"] == landing
    home = await client.get("/", follow_redirects=False)
    assert home.headers["location"] == landing
    page = await client.get(landing)
    assert page.status_code == 200, page.text
    assert f'data-user="{people[role]}"' in page.text


async def test_login_returns_to_the_page_asked_for_but_never_elsewhere(
    client: AsyncTestClient[Any], people: dict[str, str]
) -> None:
    asked = await client.get("/alerts", follow_redirects=False)
    assert asked.status_code == 303
    assert asked.headers["location"] == "/login?next=/alerts"
    response = await form_login(client, people["safety_officer"], next="/alerts")
    assert response.headers["location"] == "/alerts"
    client.cookies.clear()
    for evil in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        response = await form_login(client, people["safety_officer"], next=evil)
        assert response.headers["location"] == "/alerts", evil
        client.cookies.clear()


async def test_anonymous_pages_lead_to_the_login_form(client: AsyncTestClient[Any]) -> None:
    for path in ("/", "/report", "/alerts", "/audit", f"/reports/{uuid.uuid4()}"):
        response = await client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login"), path
    # The patient and REMS pages are returned to after signing in.
    for path in ("/patients", "/patients/PT-1", "/rems", "/analytics"):
        response = await client.get(path, follow_redirects=False)
        assert response.headers["location"] == f"/login?next={path}", path


async def test_wrong_password_shows_the_form_again_and_is_audited(
    client: AsyncTestClient[Any], people: dict[str, str], db: asyncpg.Connection[Any]
) -> None:
    response = await form_login(client, people["nurse"], "not-the-password")
    assert response.status_code == 401
    assert "Wrong username or password." in response.text
    assert SESSION_COOKIE not in client.cookies
    actions = await db.fetch(
        "SELECT action, object_id FROM audit_entries WHERE action LIKE 'auth.%'"
    )
    assert [(r["action"], r["object_id"]) for r in actions] == [
        ("auth.login_failed", people["nurse"])
    ]


async def test_login_form_needs_its_csrf_cookie(
    client: AsyncTestClient[Any], people: dict[str, str], db: asyncpg.Connection[Any]
) -> None:
    """Another site cannot post our login form (login CSRF): it lacks the cookie."""
    page = await client.get("/login")
    match = CSRF_FIELD.search(page.text)
    assert match is not None
    client.cookies.delete(LOGIN_CSRF_COOKIE)
    data = {"username": people["nurse"], "password": PASSWORD, "csrf": match[1]}
    response = await client.post("/login", data=data, follow_redirects=False)
    assert response.status_code == 403
    assert SESSION_COOKIE not in client.cookies
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


async def test_logout_form_revokes_the_session_and_is_audited_like_the_api(
    client: AsyncTestClient[Any], people: dict[str, str], db: asyncpg.Connection[Any]
) -> None:
    await form_login(client, people["nurse"])
    token = client.cookies[SESSION_COOKIE]
    page = await client.get("/report")

    refused = await client.post("/logout", data={"csrf": "forged"}, follow_redirects=False)
    assert refused.status_code == 403
    assert (await client.get("/api/v1/me")).status_code == 200  # still signed in

    response = await client.post(
        "/logout", data={"csrf": page_csrf(page.text)}, follow_redirects=False
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    assert "max-age=0" in set_cookie_header(response, SESSION_COOKIE).lower()
    old = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert old.status_code == 401
    rows = await db.fetch(
        "SELECT action, actor, actor_role, client_addr FROM audit_entries"
        " WHERE action LIKE 'auth.%' ORDER BY recorded_at, seq"
    )
    assert [tuple(r) for r in rows] == [
        ("auth.login", people["nurse"], "nurse", PEER),
        ("auth.logout", people["nurse"], "nurse", PEER),
    ]


# --- the cookie on the API: CSRF for unsafe requests, bearer clients unaffected ----------------


async def test_cookie_authenticated_writes_need_the_csrf_header(
    client: AsyncTestClient[Any], people: dict[str, str], db: asyncpg.Connection[Any]
) -> None:
    await form_login(client, people["nurse"])
    csrf = page_csrf((await client.get("/report")).text)
    headers = {"Idempotency-Key": "k-1"}

    for sent in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": ""}):
        response = await client.post("/api/v1/reports", json=bp_report(), headers=headers | sent)
        assert response.status_code == 403, response.text
        assert "X-CSRF-Token" in response.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM reports") == 0

    response = await client.post(
        "/api/v1/reports", json=bp_report(), headers=headers | {"X-CSRF-Token": csrf}
    )
    assert response.status_code == 201, response.text
    # Reading needs no token.
    assert (await client.get("/api/v1/reports")).status_code == 200


async def test_bearer_requests_need_no_csrf_token_even_with_a_cookie(
    client: AsyncTestClient[Any], people: dict[str, str], world: World
) -> None:
    await form_login(client, people["safety_officer"])
    headers = await world.login(people["nurse"])
    response = await client.post(
        "/api/v1/reports", json=bp_report(), headers=headers | {"Idempotency-Key": "k-2"}
    )
    assert response.status_code == 201, response.text
    # The bearer token wins over the cookie: the report is the nurse's.
    assert response.json()["created_by"] == people["nurse"]


async def test_cookie_logout_through_the_api_needs_the_csrf_header(
    client: AsyncTestClient[Any], people: dict[str, str]
) -> None:
    await form_login(client, people["nurse"])
    csrf = page_csrf((await client.get("/report")).text)
    assert (await client.post("/api/v1/auth/logout")).status_code == 403
    response = await client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf})
    assert response.status_code == 204
    assert (await client.get("/api/v1/me")).status_code == 401


async def test_web_session_gives_the_pages_a_fresh_csrf_token(
    client: AsyncTestClient[Any], people: dict[str, str]
) -> None:
    assert (await client.get("/web/session")).status_code == 401
    await form_login(client, people["nurse"])
    response = await client.get("/web/session")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {
        "username": people["nurse"],
        "role": "nurse",
        "csrf_token": csrf_token_for(client.cookies[SESSION_COOKIE]),
    }


def test_csrf_tokens_differ_per_session_and_reveal_nothing() -> None:
    first, second = csrf_token_for("token-one"), csrf_token_for("token-two")
    assert first != second
    assert csrf_token_for("token-one") == first
    assert "token-one" not in first


# --- TLS ---------------------------------------------------------------------------------


@pytest.fixture
async def https_client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(
        app=create_app(settings), base_url="https://testserver.local"
    ) as client:
        yield client


@pytest.fixture
async def proxied_client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    trusting = replace(settings, trusted_proxies=frozenset({PEER}))
    async with AsyncTestClient(app=create_app(trusting)) as client:
        yield client


async def test_session_cookie_is_secure_over_https(
    https_client: AsyncTestClient[Any], people: dict[str, str]
) -> None:
    response = await form_login(https_client, people["nurse"])
    assert "secure" in set_cookie_header(response, SESSION_COOKIE).lower()


async def test_a_trusted_proxy_can_say_the_browser_used_https(
    proxied_client: AsyncTestClient[Any], client: AsyncTestClient[Any], people: dict[str, str]
) -> None:
    page = await proxied_client.get("/login")
    match = CSRF_FIELD.search(page.text)
    assert match is not None
    data = {"username": people["nurse"], "password": PASSWORD, "csrf": match[1]}
    headers = {"X-Forwarded-Proto": "https"}
    response = await proxied_client.post(
        "/login", data=data, headers=headers, follow_redirects=False
    )
    assert "secure" in set_cookie_header(response, SESSION_COOKIE).lower()
    # An untrusted peer cannot claim it.
    page = await client.get("/login")
    match = CSRF_FIELD.search(page.text)
    assert match is not None
    data["csrf"] = match[1]
    response = await client.post("/login", data=data, headers=headers, follow_redirects=False)
    assert "secure" not in set_cookie_header(response, SESSION_COOKIE).lower()


# --- pages, headers, assets ----------------------------------------------------------------


async def test_pages_carry_a_strict_content_security_policy(
    client: AsyncTestClient[Any], people: dict[str, str]
) -> None:
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    await form_login(client, people["admin"])
    # /patients/PT-1: a patient nobody reported, so the not-found page, which carries it too.
    pages = {"/login": 200, "/alerts": 200, "/audit": 200, "/offline": 200, "/patients": 200}
    for path, status in {**pages, "/rems": 200, "/analytics": 200, "/patients/PT-1": 404}.items():
        response = await client.get(path)
        assert response.status_code == status, path
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"


def test_templates_have_no_inline_script_or_event_handler() -> None:
    """The CSP forbids them; this finds them before a browser silently ignores them."""
    for path in TEMPLATE_DIR.glob("*.html"):
        html = path.read_text()
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert "src=" in tag, (path.name, tag)
        assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html), path.name
        assert not re.search(r"\son[a-z]+\s*=", html), path.name
        assert "style=" not in html, path.name


async def test_wrong_role_gets_a_forbidden_page(
    client: AsyncTestClient[Any], people: dict[str, str]
) -> None:
    await form_login(client, people["nurse"])
    for path in ("/alerts", "/audit"):
        response = await client.get(path)
        assert response.status_code == 403
        assert response.headers["content-type"].startswith("text/html")
        assert "not for the nurse role" in response.text


async def test_the_session_flowsheet_is_for_the_report_writers_and_names_no_patient(
    client: AsyncTestClient[Any], people: dict[str, str]
) -> None:
    """Nurses and safety officers (its nav link too); the others get a forbidden page.
    The page is kept on the tablet, so every patient datum comes from its script."""
    assert (await client.get("/sessions/flowsheet", follow_redirects=False)).headers[
        "location"
    ] == "/login?next=/sessions/flowsheet"
    for role in ("nurse", "safety_officer", "auditor", "admin"):
        client.cookies.clear()
        await form_login(client, people[role])
        response = await client.get("/sessions/flowsheet")
        landing = await client.get("/", follow_redirects=True)
        if role in ("nurse", "safety_officer"):
            assert response.status_code == 200, role
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert '<script type="module" src="/static/js/flowsheet.js">' in response.text
            for step in ("session", "dose", "observation", "discharge"):
                assert f'id="form-{step}"' in response.text
            assert 'href="/sessions/flowsheet"' in landing.text
            assert "None" not in response.text
        else:
            assert response.status_code == 403, role
            assert 'href="/sessions/flowsheet"' not in landing.text


@pytest.mark.parametrize("step", sorted(forms.STEP_TYPES))
def test_each_flowsheet_form_has_its_steps_fields_with_the_types_rules(step: str) -> None:
    """Every field of the step's body but the ones the page sets (the session's id, its
    checklist object) or asks for only when refused (an override's reason)."""
    names: dict[str, mi.Field] = {}
    for struct in forms.STEP_TYPES[step]:
        info = mi.type_info(struct)
        assert isinstance(info, mi.StructType)
        names |= {f.name: f for f in info.fields}
    shown = [f for section in forms.step_sections(step) for f in section.fields]
    assert sorted(f.name for f in shown) == sorted(
        set(names) - {"id", "checklist", "override_reason"}
    )
    for field in shown:
        assert field.required == names[field.name].required, (step, field.name)
        assert field.label


async def test_a_report_of_another_clinic_is_a_not_found_page(
    client: AsyncTestClient[Any], people: dict[str, str], world: World
) -> None:
    await world.clinic("C2")
    other = await world.user("otto", "nurse", ["C2"])
    created = await world.client.post(
        "/api/v1/reports",
        json=bp_report("C2"),
        headers=await world.login(other) | {"Idempotency-Key": "k-3"},
    )
    await form_login(client, people["nurse"])
    response = await client.get(f"/reports/{created.json()['id']}")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")


async def test_report_pages_show_a_stock_incident_without_a_patient_and_old_stock_concerns(
    client: AsyncTestClient[Any], people: dict[str, str], world: World
) -> None:
    """A stock incident is shown by its incident type; a misuse concern stored with a
    stock type of old is amended with those types offered, a new one never is."""
    nurse = await principal_by_username(world.db, people["nurse"])
    assert nurse is not None
    raw = misuse_report("C1", patient_ref="PT-OLD", concern_type="theft") | {
        "expected_quantity": 10,
        "actual_quantity": 9,
        "unit": "ml",
    }
    old = validate_report(raw, skew=timedelta(0), stock_concerns_allowed=True)
    async with world.db.transaction():
        stored = await insert_report(world.db, Caller(nurse, "test"), old, AlertSettings())
    headers = await world.login(people["nurse"]) | {"Idempotency-Key": "k-stock"}
    stock = await world.client.post("/api/v1/reports", json=stock_report("C1"), headers=headers)
    assert stock.status_code == 201, stock.text
    await form_login(client, people["nurse"])

    old_page = await client.get(f"/reports/{stored.id}")
    assert old_page.status_code == 200
    assert 'value="theft" selected' in old_page.text
    assert 'data-field="expected_quantity"' in old_page.text

    stock_page = await client.get(f"/reports/{stock.json()['id']}")
    assert stock_page.status_code == 200
    heading = re.search(r"<h1>(.*?)</h1>", stock_page.text)
    assert heading is not None
    assert (
        heading[1]
        == f"Stock incident · {forms.OPTIONS['incident_type'][stock_report()['incident_type']]}"
    )
    assert "None" not in heading[1]
    assert 'data-field="patient_ref"' not in stock_page.text

    recent = await client.get("/report/recent")
    assert recent.status_code == 200
    assert ">None<" not in recent.text
    assert "Stock incident" in recent.text

    report_page = await client.get("/report")
    new_form = report_page.text.split('id="form-misuse_concern"', 1)[1].split("</form>", 1)[0]
    assert 'value="drug_seeking"' in new_form
    assert 'value="theft"' not in new_form


async def test_api_answers_with_patient_data_are_never_cached(
    client: AsyncTestClient[Any], people: dict[str, str]
) -> None:
    await form_login(client, people["safety_officer"])
    for path in ("/api/v1/alerts", "/api/v1/reports", "/api/v1/me"):
        response = await client.get(path)
        assert response.status_code == 200, path
        # Without it a browser's back button showed a stale queue from its HTTP cache.
        assert response.headers["cache-control"] == "no-store", path
    assert (await client.get("/static/js/alerts.js")).headers["cache-control"] == "no-cache"


async def test_static_assets_and_the_service_worker_are_served(
    client: AsyncTestClient[Any],
) -> None:
    files = sorted(p for p in STATIC_DIR.rglob("*") if p.is_file())
    assert files
    for path in files:
        response = await client.get(f"/static/{path.relative_to(STATIC_DIR).as_posix()}")
        assert response.status_code == 200, path
        assert response.content == path.read_bytes()
    script = await client.get("/static/js/report.js")
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    worker = await client.get("/sw.js")
    assert worker.status_code == 200
    assert worker.headers["content-type"].startswith("text/javascript")
    assert worker.headers["cache-control"] == "no-cache"
    for path in files:
        assert f'"/static/{path.relative_to(STATIC_DIR).as_posix()}"' in worker.text


# --- the forms follow the report types ----------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_form_has_every_field_of_its_kind_with_the_types_rules(kind: str) -> None:
    info = mi.type_info(KINDS[kind])
    assert isinstance(info, mi.StructType)
    fields = {f.name: f for f in info.fields}
    form = forms.report_form(kind)
    assert sorted(f.name for f in form) == sorted(fields)
    for field in form:
        assert field.required == fields[field.name].required, field.name
        assert field.label
    systolic = next((f for f in form if f.name == "systolic"), None)
    if systolic is not None:
        assert (systolic.minimum, systolic.maximum) == (50, 300)


def test_option_labels_cover_exactly_the_allowed_values() -> None:
    """Each form offers exactly the values a new report may have; the form for amending a
    misuse concern stored with a stock concern type of old offers those types too."""
    for kind in KINDS:
        info = mi.type_info(KINDS[kind])
        assert isinstance(info, mi.StructType)
        types = {f.name: f.type for f in info.fields}
        for legacy in (False, True):
            for field in forms.report_form(kind, legacy):
                if not field.options or field.widget == "yesno":
                    continue
                allowed = _allowed_values(types[field.name])
                if field.name == "concern_type" and not legacy:
                    allowed -= STOCK_CONCERNS
                assert {value for value, _ in field.options} == allowed, (kind, field.name)


def test_field_conditions_depend_on_earlier_fields_and_name_their_real_values() -> None:
    for kind in KINDS:
        info = mi.type_info(KINDS[kind])
        assert isinstance(info, mi.StructType)
        types = {f.name: f.type for f in info.fields}
        form = {f.name: f for f in forms.report_form(kind, legacy=True)}
        for field in form.values():
            for condition in (field.shown_when, field.required_when):
                if condition is None:
                    continue
                on, values = condition
                # The field it depends on comes first in the form, and has those values.
                assert list(form).index(on) < list(form).index(field.name), (kind, field.name)
                assert set(values) <= _allowed_values(types[on]), (kind, field.name)
    adverse = {f.name: f for f in forms.report_form("adverse_event")}
    assert adverse["cssrs"].widget == "questions"
    assert [q for q, _ in adverse["cssrs"].questions] == ["q1", "q2", "q3", "q4", "q5", "q6"]
    assert adverse["moaa_s"].shown_when == ("category", ("vomiting",))
    assert adverse["moaa_s"].required_when == ("category", ("vomiting",))
    stock = {f.name for f in forms.report_form("stock_incident")}
    assert not stock & {"patient_ref", "seriousness", "outcome", "occurred_at", "systolic"}


def _allowed_values(t: mi.Type) -> set[str]:
    if isinstance(t, mi.UnionType):
        return set().union(*(_allowed_values(x) for x in t.types))
    if isinstance(t, mi.ListType):
        return _allowed_values(t.item_type)
    if isinstance(t, mi.LiteralType):
        return {str(v) for v in t.values}
    if isinstance(t, mi.IntType):
        assert t.ge is not None
        assert t.le is not None
        return {str(v) for v in range(t.ge, t.le + 1)}
    return set()


def test_assets_are_inside_the_package() -> None:
    """hatch packages src/safetyreport whole: templates and static files ship with it."""
    assert safetyreport.__file__ is not None
    package = Path(safetyreport.__file__).parent
    assert STATIC_DIR.is_relative_to(package)
    assert TEMPLATE_DIR.is_relative_to(package)


# --- contrast (WCAG AA) ------------------------------------------------------------------------

# (text or control colour, background, minimum ratio): 4.5 for text, 3 for focus rings
# and the borders that show where a field is (WCAG 1.4.3 and 1.4.11).
_PAIRS = [
    ("--ink", "--bg", 4.5),
    ("--ink", "--card", 4.5),
    ("--muted", "--card", 4.5),
    ("--muted", "--bg", 4.5),
    ("--muted", "--waiting-bg", 4.5),
    ("--primary", "--card", 4.5),
    ("--primary", "--selected-bg", 4.5),
    ("--primary-dark", "--selected-bg", 4.5),
    ("#ffffff", "--primary", 4.5),
    ("#ffffff", "--primary-dark", 4.5),
    ("--danger", "--danger-bg", 4.5),
    ("--danger", "--card", 4.5),
    ("--ok", "--ok-bg", 4.5),
    ("--warn", "--warn-bg", 4.5),
    ("#ffffff", "--sev-critical", 4.5),
    ("#ffffff", "--sev-urgent", 4.5),
    ("#ffffff", "--sev-high", 4.5),
    ("#ffffff", "--sev-info", 4.5),
    ("#ffffff", "--topbar", 4.5),
    ("#ffffff", "--topbar-current", 4.5),
    ("#ffffff", "--topbar-hover", 4.5),
    ("--topbar-muted", "--topbar", 4.5),
    ("--focus", "--card", 3),
    ("--focus", "--bg", 3),
    ("--topbar-focus", "--topbar", 3),
    ("--line", "--card", 3),
]


def _luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def test_colours_meet_wcag_aa_contrast() -> None:
    css = (STATIC_DIR / "css" / "app.css").read_text()
    root = css.split(":root {", 1)[1].split("}", 1)[0]
    variables = dict(re.findall(r"(--[\w-]+):\s*(#[0-9a-fA-F]{6});", root))

    def colour(name: str) -> str:
        return variables[name] if name.startswith("--") else name

    for fg, bg, minimum in _PAIRS:
        light, dark = sorted((_luminance(colour(fg)), _luminance(colour(bg))), reverse=True)
        ratio = (light + 0.05) / (dark + 0.05)
        assert ratio >= minimum, f"{fg} on {bg}: {ratio:.2f} < {minimum}"
