"""Where the pages load from, which hosts the service answers to, and nosniff.

Issue 10, item 6: ``/schema`` loaded unpinned JavaScript from a CDN into this origin with
no CSP. Every HTML answer of every GET route (as each role, and signed out), /schema and
its sub-pages included, must load nothing from another origin and carry the strict CSP.
Item 17: a request for a Host outside the allow-list is refused before authentication
and database work; every answer, static files included, carries ``nosniff``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from safetyreport.app import create_app
from safetyreport.front_door import host_allowed, host_name
from safetyreport.settings import Settings, SettingsError
from safetyreport.web.assets import CONTENT_SECURITY_POLICY, STATIC_DIR
from tests.helpers.reports import bp_report
from tests.helpers.web import form_login
from tests.helpers.world import PASSWORD, World

OUR_HOST = "testserver.local"
# Endless (the event stream): never answers HTML and would not end.
NOT_FETCHED = {"/api/v1/alerts/stream"}
# Absolute URLs that stay here (or load nothing from anywhere).
OWN_SCHEMES = ("data:", "mailto:", f"http://{OUR_HOST}/", f"https://{OUR_HOST}/")
ROLES = ("nurse", "safety_officer", "auditor", "admin")

# Every way an HTML page or a style sheet names something to load.
_URL_ATTRIBUTE = re.compile(
    r"""\b(?:src|href|action|formaction|poster|data|manifest|srcset)\s*=\s*["']([^"']*)["']""",
    re.IGNORECASE,
)
_CSS_URL = re.compile(r"""url\(\s*["']?([^"')]*)["']?\s*\)""", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"""@import\s+["']([^"']+)["']""", re.IGNORECASE)
_LOOSE_SOURCES = ("*", "'unsafe-inline'", "'unsafe-eval'", "http:", "https:", "data:", "blob:")


def foreign_urls(text: str) -> list[str]:
    """URLs in ``text`` that point at another origin (or run script): none is allowed."""
    found = []
    candidates = [m for rx in (_URL_ATTRIBUTE, _CSS_URL, _CSS_IMPORT) for m in rx.findall(text)]
    for candidate in candidates:
        for url in (part.strip().split(" ")[0] for part in candidate.split(",")):
            lowered = url.lower()
            scheme = re.match(r"^[a-z][a-z0-9+.-]*:", lowered)
            ours = lowered.startswith(OWN_SCHEMES)
            if lowered.startswith("//") or (scheme and not ours):
                found.append(url)
    return found


def csp_problems(policy: str | None) -> list[str]:
    """What makes a Content-Security-Policy missing or loose."""
    if not policy:
        return ["no Content-Security-Policy"]
    directives = {
        name: sources for name, *sources in (d.split() for d in policy.split(";") if d.strip())
    }
    problems = []
    for required, value in (
        ("default-src", ["'self'"]),
        ("object-src", ["'none'"]),
        ("base-uri", ["'none'"]),
        ("frame-ancestors", ["'none'"]),
    ):
        if directives.get(required) != value:
            problems.append(f"{required} is {directives.get(required)}, not {value}")
    for name in ("script-src", "style-src", "connect-src"):
        sources = directives.get(name, directives.get("default-src", []))
        loose = [s for s in sources if s in _LOOSE_SOURCES or "://" in s]
        if loose:
            problems.append(f"{name} allows {loose}")
    return problems


def test_the_scanner_finds_what_the_old_schema_page_loaded() -> None:
    """The checks below would have caught /schema as it was (Scalar from jsDelivr)."""
    old = (
        '<script id="api-reference" data-url="/schema/openapi.json"></script>'
        '<script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference"></script>'
        "<link rel='icon' type='image/png' href='https://cdn.jsdelivr.net/gh/x.png'>"
        '<img srcset="/a.png 1x, //cdn.example/b.png 2x">'
        "<style>@import 'https://fonts.example/x.css'; b { background: url(//x.example/i) }</style>"
    )
    assert len(foreign_urls(old)) == 5
    ours = '<a href="/schema/openapi.json">x</a><img src="data:image/png;base64,">'
    assert foreign_urls(ours) == []
    assert csp_problems(None) == ["no Content-Security-Policy"]
    assert csp_problems("default-src 'self'; script-src 'self' 'unsafe-inline'")
    assert csp_problems(CONTENT_SECURITY_POLICY) == []


@pytest.fixture
async def people(world: World) -> dict[str, str]:
    await world.clinic("C1")
    return {
        "nurse": await world.user("nina", "nurse", ["C1"]),
        "safety_officer": await world.user("olga", "safety_officer", ["C1"]),
        "auditor": await world.user("audra", "auditor", all_clinics=True),
        "admin": await world.user("adam", "admin", all_clinics=True),
    }


async def _objects(world: World, nurse: str, officer: str) -> dict[str, str]:
    """A report and the alert it raises, for routes with an id in their path."""
    created = await world.client.post(
        "/api/v1/reports",
        json=bp_report("C1", systolic=190, diastolic=100),
        headers=await world.login(nurse) | {"Idempotency-Key": str(uuid.uuid4())},
    )
    assert created.status_code == 201, created.text
    alerts = await world.client.get("/api/v1/alerts", headers=await world.login(officer))
    assert alerts.json()["items"], alerts.text
    return {
        # No such patient (a 404 answer, checked all the same).
        "patient_ref": "PT-NOBODY",
        "report_id": created.json()["id"],
        "alert_id": alerts.json()["items"][0]["id"],
        "notification_id": str(uuid.uuid4()),
        "rule_id": "dissociation-present",
        "change_id": "1",
        "clinic": "C1",
        # No such session or form: their 404 answers are checked all the same.
        "session_id": str(uuid.uuid4()),
        "form_id": str(uuid.uuid4()),
    }


def _get_paths(app_routes: list[Any], ids: dict[str, str]) -> list[str]:
    """A concrete URL for every GET route (several for the catch-alls)."""
    paths = []
    for route in app_routes:
        if not isinstance(route, HTTPRoute) or route.path in NOT_FETCHED:
            continue
        if not any("GET" in h.http_methods for h in route.route_handlers):
            continue
        if route.path == "/static/{file_path:path}":
            paths += [f"/static/{p.relative_to(STATIC_DIR).as_posix()}" for p in _static()]
        elif route.path == "/schema/{path:str}":
            paths += ["/schema/scalar", "/schema/swagger", "/schema/no-such-page"]
        else:
            paths.append(re.sub(r"\{(\w+):\w+\}", lambda m: ids[m[1]], route.path))
    return paths


def _static() -> list[Any]:
    return sorted(p for p in STATIC_DIR.rglob("*") if p.is_file())


async def test_no_page_loads_anything_from_another_origin_and_each_has_the_strict_csp(
    client: AsyncTestClient[Any], people: dict[str, str], world: World
) -> None:
    ids = await _objects(world, people["nurse"], people["safety_officer"])
    paths = _get_paths(client.app.routes, ids)
    assert "/schema" in paths
    assert "/report" in paths
    pages_seen = set()
    for who in (None, *ROLES):
        client.cookies.clear()
        if who is not None:
            assert (await form_login(client, people[who])).status_code == 303
        for path in paths:
            response = await client.get(path, follow_redirects=True)
            assert response.status_code < 500, (who, path, response.text)
            assert response.headers.get("x-content-type-options") == "nosniff", (who, path)
            content_type = response.headers.get("content-type", "")
            if content_type.startswith("text/css"):
                assert foreign_urls(response.text) == [], (who, path)
            if not content_type.startswith("text/html"):
                continue
            pages_seen.add(path)
            where = (who, path, response.status_code)
            assert foreign_urls(response.text) == [], where
            assert csp_problems(response.headers.get("content-security-policy")) == [], where
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    # The scan reached the pages of every role, the reference and its sub-pages.
    expected = {"/report", "/alerts", "/audit", "/login", "/offline", "/schema"}
    assert expected | {"/schema/no-such-page", f"/reports/{ids['report_id']}"} <= pages_seen


async def test_the_api_reference_is_rendered_here_with_every_operation(
    client: AsyncTestClient[Any],
) -> None:
    page = await client.get("/schema")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<script" not in page.text
    document = (await client.get("/schema/openapi.json")).json()
    for path, item in document["paths"].items():
        for method in item:
            assert f'<code class="api-path">{path}</code>' in page.text, (method, path)
    for name in document["components"]["schemas"]:
        assert f'id="schema-{name}"' in page.text
    # Litestar's CDN-backed viewers are gone.
    for old in ("/schema/scalar", "/schema/swagger", "/schema/redoc"):
        assert (await client.get(old)).status_code == 404


async def test_the_api_reference_page_can_be_turned_off(settings: Settings) -> None:
    assert Settings.from_env({"SAFETYREPORT_API_REFERENCE": "off"}).api_reference is False
    with pytest.raises(SettingsError, match="SAFETYREPORT_API_REFERENCE"):
        Settings.from_env({"SAFETYREPORT_API_REFERENCE": "maybe"})
    app = create_app(replace(settings, api_reference=False))
    async with AsyncTestClient(app=app) as client:
        page = await client.get("/schema")
        assert page.status_code == 404
        assert "<html" not in page.text
        assert (await client.get("/schema/openapi.json")).status_code == 200


# --- item 17: the Host allow-list --------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:8000", "localhost"),
        ("LOCALHOST", "localhost"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]:8000", "[::1]"),
        ("[::1]", "[::1]"),
        ("safety.clinic.example.", "safety.clinic.example"),
        ("", ""),
    ],
)
def test_host_names_lose_their_port(header: str, name: str) -> None:
    assert host_name(header) == name


def test_the_allow_list_takes_names_subdomains_or_anything() -> None:
    default = Settings.from_env({}).allowed_hosts
    for name in ("localhost", "127.0.0.1", "[::1]", OUR_HOST, "testserver"):
        assert host_allowed(name, default)
    assert not host_allowed("evil.example", default)
    assert not host_allowed("", default)
    listed = Settings.from_env({"SAFETYREPORT_ALLOWED_HOSTS": "Safety.Example, *.clinic.example"})
    assert host_allowed("safety.example", listed.allowed_hosts)
    assert host_allowed("a.clinic.example", listed.allowed_hosts)
    assert not host_allowed("clinic.example.evil", listed.allowed_hosts)
    assert not host_allowed("evilclinic.example", listed.allowed_hosts)
    assert not host_allowed("localhost", listed.allowed_hosts)
    anything = Settings.from_env({"SAFETYREPORT_ALLOWED_HOSTS": "*"}).allowed_hosts
    assert host_allowed("whatever.example", anything)
    with pytest.raises(SettingsError, match="SAFETYREPORT_ALLOWED_HOSTS"):
        Settings.from_env({"SAFETYREPORT_ALLOWED_HOSTS": " , "})


async def test_a_foreign_host_is_refused_before_authentication_and_the_database(
    client: AsyncTestClient[Any], people: dict[str, str], world: World, db: asyncpg.Connection[Any]
) -> None:
    token = await world.login(people["nurse"])
    audit_before = await db.fetchval("SELECT count(*) FROM audit_entries")
    foreign = {"Host": "rebound.attacker.example"}
    refused = [
        await client.get("/api/v1/me", headers=token | foreign),
        await client.get("/report", headers=foreign),
        await client.get("/schema", headers=foreign),
        await client.get("/static/css/app.css", headers=foreign),
        await client.get("/no/such/path", headers=foreign),
        # A wrong password would be audited and counted towards a lock-out: it never arrives.
        await client.post(
            "/api/v1/auth/login",
            json={"username": people["nurse"], "password": "wrong"},
            headers=foreign,
        ),
        await client.post(
            "/api/v1/reports",
            json=bp_report("C1"),
            headers=token | foreign | {"Idempotency-Key": "k-host"},
        ),
    ]
    for response in refused:
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["x-content-type-options"] == "nosniff"
        problem = response.json()
        assert problem["status"] == 400
        assert "rebound.attacker.example" in problem["detail"]
    assert await db.fetchval("SELECT count(*) FROM audit_entries") == audit_before
    assert await db.fetchval("SELECT count(*) FROM reports") == 0
    # The same requests by a name on the list are answered.
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", OUR_HOST):
        me = await client.get("/api/v1/me", headers=token | {"Host": host})
        assert me.status_code == 200, (host, me.text)


async def test_any_host_is_answered_when_the_list_says_star(settings: Settings) -> None:
    app = create_app(replace(settings, allowed_hosts=frozenset({"*"})))
    async with AsyncTestClient(app=app) as client:
        response = await client.get("/health", headers={"Host": "anything.example"})
        assert response.status_code == 200


# --- item 17: nosniff on everything ------------------------------------------------------


async def test_every_static_file_and_answer_carries_nosniff(
    client: AsyncTestClient[Any], people: dict[str, str]
) -> None:
    responses: list[httpx.Response] = [
        await client.get(f"/static/{p.relative_to(STATIC_DIR).as_posix()}") for p in _static()
    ]
    responses += [
        await client.get("/static/no-such-file.js"),
        await client.get("/sw.js"),
        await client.get("/health"),
        await client.get("/schema/openapi.json"),
        await client.get("/api/v1/me"),
        await client.get("/no/such/path"),
    ]
    await form_login(client, people["nurse"], PASSWORD)
    responses.append(await client.get("/report"))
    for response in responses:
        assert response.headers.get("x-content-type-options") == "nosniff", response.url
    # Each page keeps its other security headers.
    page = responses[-1]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "same-origin"
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
