"""The browser tests' shared parts: Debian's Chromium driven by Playwright, one served
``safetyreport serve`` process and database per test module, and the helpers that sign in,
fill the forms, scan a page with axe-core and take screenshots at both tablet sizes.

A test module imports the fixtures it uses (``web_database``, ``served``, ``browser``,
``context``, ``db``) from here, so each browser test module gets its own server and
database, and sets its own ``pytestmark = BROWSER_MARKS``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    async_playwright,
    expect,
)

from safetyreport.audit.chain import SYSTEM_CLI
from safetyreport.auth.permissions import Role
from safetyreport.auth.users import add_clinic, add_user
from safetyreport.db.pool import connect
from tests.helpers.postgres import Databases, with_database
from tests.helpers.processes import ServeProcess, serving
from tests.helpers.world import PASSWORD

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
# axe-core, vendored (tests/assets/axe-core/README.md): loaded into each captured page.
AXE = Path(__file__).resolve().parents[1] / "assets" / "axe-core" / "axe.min.js"
_AXE_RUN = """async () => {
    const result = await axe.run(document, {resultTypes: ["violations"]});
    return result.violations.map(v => `${v.id} (${v.impact}): ${v.help}: `
        + v.nodes.map(n => n.target.join(" ")).join(", "));
}"""
VIEWPORTS = {"1024x768": (1024, 768), "768x1024": (768, 1024)}
# Resolves after the page has drawn two more frames.
NEXT_FRAMES = (
    "() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))"
)
# Bound for waiting on the page (on the database: helpers.waiting); never a fixed sleep.
WAIT_MS = 15_000

# Marked end_to_end: CI runs them once, in its embedded-PostgreSQL run.
BROWSER_MARKS = [
    pytest.mark.end_to_end,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"
    ),
]

NURSE, OFFICER, AUDITOR = "nina", "olga", "audra"
OTHER_NURSE = "nora"
RANK = {"critical": 3, "urgent": 2, "high": 1, "info": 0}
TIMEZONE = "Europe/Berlin"  # UTC+01:00 in January


# --- fixtures: one server and one browser for the module -----------------------------------


async def add_staff(conn: Any, clinic: str, *people: tuple[str, Role]) -> None:
    """Users of ``clinic`` (username, role), all with the test password."""
    for username, role in people:
        await add_user(
            conn,
            username=username,
            password=PASSWORD,
            role=role,
            clinics=[clinic],
            all_clinics=False,
            actor=SYSTEM_CLI,
        )


@pytest.fixture(scope="module")
async def web_database(server_url: str, databases: Databases) -> AsyncIterator[str]:
    """A migrated database with clinic C1, a nurse, a safety officer and an auditor."""
    name = await databases.take()
    url = with_database(server_url, name)
    conn = await connect(url)
    try:
        await add_clinic(conn, "C1", "Riverside Clinic", SYSTEM_CLI)
        await add_staff(conn, "C1", (NURSE, "nurse"), (OFFICER, "safety_officer"))
        # A nurse of another clinic, for the shared-tablet test.
        await add_clinic(conn, "C2", "Hillside Clinic", SYSTEM_CLI)
        await add_staff(conn, "C2", (OTHER_NURSE, "nurse"))
        await add_user(
            conn,
            username=AUDITOR,
            password=PASSWORD,
            role="auditor",
            clinics=[],
            all_clinics=True,
            actor=SYSTEM_CLI,
        )
    finally:
        await conn.close()
    yield url
    databases.release(name)


@pytest.fixture(scope="module")
async def served(
    web_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServeProcess]:
    # The lock-out test signs in "from" many addresses: the test is the trusted proxy.
    proxy = {"SAFETYREPORT_TRUSTED_PROXIES": "127.0.0.1"}
    async with serving(web_database, tmp_path_factory.mktemp("web"), "web", env=proxy) as s:
        yield s


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield chromium
        await chromium.close()


def watch(ctx: BrowserContext) -> list[str]:
    """Script errors and CSP violations of every page of ``ctx``, collected as they come."""
    problems: list[str] = []

    def on_console(message: Any) -> None:
        # Failed loads (a 422 on purpose, the network cut on purpose) are not script errors.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            problems.append(message.text)

    ctx.on("console", on_console)

    def on_error(error: Any) -> None:
        # The message first (what tests compare), then where it came from.
        stack = getattr(error.error, "stack", None)
        problems.append(f"{error.error}" + (f" at {stack}" if stack else ""))

    ctx.on("weberror", on_error)
    ctx.set_default_timeout(WAIT_MS)
    return problems


@pytest.fixture
async def context(browser: Browser, served: ServeProcess) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile; fails the test on any script error or CSP violation."""
    ctx = await browser.new_context(
        base_url=served.base_url,
        viewport={"width": 1024, "height": 768},
        accept_downloads=True,
        service_workers="allow",
        # Not UTC, so a page that forgot the offset would store the wrong time.
        timezone_id=TIMEZONE,
    )
    problems = watch(ctx)
    yield ctx
    await ctx.close()
    assert problems == [], problems


@pytest.fixture
async def db(web_database: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn = await connect(web_database)
    yield conn
    await conn.close()


# --- helpers ---------------------------------------------------------------------------


def patient(prefix: str) -> str:
    """A patient reference no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:6].upper()}"


async def _page_scripts_have_run(page: Page) -> None:
    """The URL changes when the next page's response arrives, before its module scripts
    have run: a field filled then is wiped when the page's script opens its forms (CI
    saw a report submitted with its fields empty). Module scripts run before ``load``."""
    await page.wait_for_load_state("load")


async def sign_in(context: BrowserContext, username: str) -> Page:
    page = await context.new_page()
    await page.goto("/")
    await expect(page).to_have_url(re.compile(r"/login$"))
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/(report|alerts|audit)$"))
    await _page_scripts_have_run(page)
    return page


async def count_reports(db: asyncpg.Connection[Any], *patients: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM reports WHERE patient_ref = ANY($1)", list(patients)
    )
    return count


async def api_token(served: ServeProcess, username: str) -> str:
    async with httpx.AsyncClient(base_url=served.base_url, timeout=10) as http:
        response = await http.post(
            "/api/v1/auth/login", json={"username": username, "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token


async def api_report(served: ServeProcess, body: dict[str, Any]) -> dict[str, Any]:
    """Submit a report through the API, as another tablet would."""
    token = await api_token(served, NURSE)
    async with httpx.AsyncClient(base_url=served.base_url, timeout=10) as http:
        response = await http.post(
            "/api/v1/reports",
            json=body,
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())},
        )
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created


def form(page: Page, kind: str) -> Any:
    return page.locator(f"form#form-{kind}")


async def choose_kind(page: Page, label: str) -> None:
    await page.locator("fieldset.kind-picker").get_by_text(label, exact=True).click()


async def fill_blood_pressure(page: Page, patient_ref: str, systolic: str, diastolic: str) -> None:
    await choose_kind(page, "Blood pressure")
    bp = form(page, "blood_pressure")
    await bp.get_by_label("Patient reference").fill(patient_ref)
    await bp.get_by_label("Systolic (mmHg)").fill(systolic)
    await bp.get_by_label("Diastolic (mmHg)").fill(diastolic)


async def fill_dissociation(page: Page, patient_ref: str) -> None:
    await choose_kind(page, "Dissociation or sedation")
    dissociation = form(page, "dissociation")
    await dissociation.get_by_label("Patient reference").fill(patient_ref)
    await dissociation.get_by_label("4 - lethargic response to name").check()
    await dissociation.get_by_label("Moderate").check()
    await dissociation.locator('[data-field="resolved"]').get_by_label("Yes").check()
    # Resolved now: the outcome cannot be "ongoing" (the form's default).
    await dissociation.get_by_label("Outcome").select_option("resolved")
    await dissociation.get_by_label("SpO2 (%)").fill("96")


async def fill_misuse(page: Page, patient_ref: str) -> None:
    await choose_kind(page, "Misuse concern")
    misuse = form(page, "misuse_concern")
    await misuse.get_by_label("Patient reference").fill(patient_ref)
    await misuse.get_by_label("Concern", exact=True).select_option("drug_seeking")
    await misuse.get_by_label("What happened").fill("Asked which clinics give the most.")
    await misuse.get_by_label("DAST-10 score").fill("4")


async def submit(page: Page, kind: str) -> None:
    await form(page, kind).get_by_role("button", name="Submit report").click()


async def expect_sent(page: Page, kind: str) -> None:
    await expect(form(page, kind).locator(".form-status")).to_contain_text("Report sent")


async def screenshot(page: Page, name: str) -> None:
    """Full-page screenshots of ``page`` at both tablet sizes."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for size, (width, height) in VIEWPORTS.items():
        await page.set_viewport_size({"width": width, "height": height})
        # What redraws itself on a resize (a chart, on the next frame) has done so.
        await page.evaluate(NEXT_FRAMES)
        await page.screenshot(path=str(SCREENSHOTS / f"{name}-{size}.png"), full_page=True)
    await page.set_viewport_size({"width": 1024, "height": 768})


# --- accessibility and screenshots ------------------------------------------------------

_UNLABELLED = """() => [...document.querySelectorAll(
    'input:not([type=hidden]), select, textarea, button')]
  .filter((el) => el.offsetParent !== null)
  .filter((el) => el.tagName === 'BUTTON'
    ? !el.textContent.trim() && !el.getAttribute('aria-label')
    : el.labels.length === 0 && !el.getAttribute('aria-label'))
  .map((el) => el.outerHTML)"""


async def accessibility_violations(page: Page) -> list[str]:
    """What axe-core finds wrong on the page as it is now (WCAG 2 A/AA and best practice).

    Loaded through the DevTools protocol, so the page's strict CSP stays as it is."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.evaluate(AXE.read_text(encoding="utf-8"))
    violations: list[str] = await page.evaluate(_AXE_RUN)
    return violations


async def check_and_capture(page: Page, name: str) -> None:
    """Every visible control has a label (or text); nothing jumps the tab order; axe-core
    reports no violation."""
    assert await page.evaluate(_UNLABELLED) == [], name
    assert await page.locator("[tabindex]:not([tabindex='0']):not([tabindex='-1'])").count() == 0
    assert await accessibility_violations(page) == [], name
    await screenshot(page, name)


async def sign_in_on(page: Page, username: str) -> None:
    await page.goto("/login")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/(report|alerts|audit)$"))
    await _page_scripts_have_run(page)
