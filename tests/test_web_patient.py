"""The patient page in a real browser (issue 15): a history of three sessions built
through the API, drawn by the page from the timeline's JSON as charts (Chart.js, served
by the service) of the doses, blood pressure, pulse and MOAA/S, with tables holding the
API's numbers; found from the search box and from a report's page; printable; no script
error or CSP violation; the read audited by the API call the page makes; another clinic's
patient not found. Screenshots at both tablet sizes, and the page printed to PDF, go to
test-artifacts/screenshots/.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from playwright.async_api import BrowserContext, Page, expect

from safetyreport.rems.service import FORM_DUE_AFTER
from tests.helpers.browser import (
    AUDITOR,
    BROWSER_MARKS,
    NEXT_FRAMES,
    NURSE,
    OFFICER,
    OTHER_NURSE,
    SCREENSHOTS,
    api_report,
    browser,
    check_and_capture,
    context,
    db,
    patient,
    served,
    sign_in,
    web_database,
)
from tests.helpers.processes import ServeProcess
from tests.helpers.reports import audit_rows, bp_report
from tests.helpers.sessions import observed_session
from tests.helpers.waiting import eventually
from tests.helpers.world import PASSWORD

pytestmark = BROWSER_MARKS
__all__ = ["browser", "context", "db", "served", "web_database"]

CHARTS = ("doses", "bp", "pulse", "moaas")
# The points of each chart's datasets: the doses in one; per session, the three readings
# and the discharge (which has a pressure and a MOAA/S score, no pulse); pressure has two
# lines per session.
DATASETS = {"doses": [3], "bp": [4] * 6, "pulse": [3] * 3, "moaas": [4] * 3}
# (days before now, mg, readings): three sessions, each observed three times; the
# first outside the last 30 days.
HISTORY = [
    (
        40,
        56,
        [
            {"minutes": 5, "systolic": 132, "diastolic": 84, "pulse": 78, "moaa_s": 5},
            {"minutes": 40, "systolic": 151, "diastolic": 92, "pulse": 88, "moaa_s": 3},
            {"minutes": 110, "systolic": 128, "diastolic": 80, "pulse": 74, "moaa_s": 5},
        ],
    ),
    (
        8,
        84,
        [
            {"minutes": 5, "systolic": 138, "diastolic": 86, "pulse": 80, "moaa_s": 4},
            {"minutes": 40, "systolic": 158, "diastolic": 96, "pulse": 92, "moaa_s": 2},
            {"minutes": 110, "systolic": 131, "diastolic": 82, "pulse": 76, "moaa_s": 5},
        ],
    ),
    (
        1,
        84,
        [
            {"minutes": 5, "systolic": 135, "diastolic": 85, "pulse": 79, "moaa_s": 4},
            {"minutes": 40, "systolic": 149, "diastolic": 90, "pulse": 86, "moaa_s": 3},
            {"minutes": 110, "systolic": 126, "diastolic": 79, "pulse": 72, "moaa_s": 5},
        ],
    ),
]

# The painted pixels of a chart's canvas (not transparent), and its Chart.js datasets.
_CANVAS = """(canvas) => {
    const chart = Chart.getChart(canvas);
    const ctx = canvas.getContext("2d");
    const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    let painted = 0;
    for (let i = 3; i < pixels.length; i += 4) {
        if (pixels[i] !== 0) painted += 1;
    }
    return {
        painted,
        total: canvas.width * canvas.height,
        datasets: chart ? chart.data.datasets.map((d) => d.data.length) : null,
    };
}"""

_NEXT_FRAME = (
    "() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))"
)


async def api_client(served: ServeProcess, username: str) -> httpx.AsyncClient:
    async with httpx.AsyncClient(base_url=served.base_url, timeout=10) as http:
        login = await http.post(
            "/api/v1/auth/login", json={"username": username, "password": PASSWORD}
        )
        assert login.status_code == 200, login.text
        token = login.json()["token"]
    return httpx.AsyncClient(
        base_url=served.base_url, timeout=30, headers={"Authorization": f"Bearer {token}"}
    )


async def build_history(served: ServeProcess, ref: str, username: str = NURSE) -> dict[str, Any]:
    """Three sessions of ``ref`` through the API; the timeline as the API gives it."""
    now = datetime.now(UTC).replace(microsecond=0)
    clinic = "C2" if username == OTHER_NURSE else "C1"
    async with await api_client(served, username) as http:
        for days, mg, readings in HISTORY:
            dosed_at = now - timedelta(days=days, hours=3)
            await observed_session(http, {}, ref, dosed_at, readings, dose_mg=mg, clinic=clinic)
        # The REMS forms of the sessions dosed over 7 days ago are overdue: the service's
        # periodic check raises an alert for each, which the timeline then holds. Wait
        # for them (in the database: each timeline read is audited), so that the page
        # shows the same timeline as the answer returned.
        await _wait_for_overdue_checks(served, ref)
        timeline = await http.get(f"/api/v1/patients/{ref}/timeline")
        assert timeline.status_code == 200, timeline.text
        answer: dict[str, Any] = timeline.json()
        return answer


async def _wait_for_overdue_checks(served: ServeProcess, ref: str) -> None:
    overdue = sum(1 for days, _mg, _r in HISTORY if timedelta(days=days) > FORM_DUE_AFTER)
    assert served.database_url is not None
    conn = await asyncpg.connect(served.database_url)

    async def checked() -> int:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM rems_forms f JOIN treatment_sessions s "
            "ON s.id = f.session_id WHERE s.patient_ref = $1 "
            "AND f.overdue_checked_at IS NOT NULL",
            ref,
        )
        return count

    async def all_checked() -> bool:
        return await checked() >= overdue

    try:
        await eventually(all_checked, "the REMS-overdue checks")
        assert await checked() == overdue
    finally:
        await conn.close()


async def open_patient(page: Page, ref: str) -> None:
    await page.goto(f"/patients/{ref}")
    await expect(page.locator("html")).to_have_attribute("data-charts-ready", "yes")


async def cells(page: Page, table: str) -> list[list[str]]:
    rows: list[list[str]] = await page.locator(f"#{table} tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))"
    )
    return rows


def readings_of(timeline: dict[str, Any], *names: str) -> list[tuple[str, ...]]:
    """The observations' and discharges' values of ``names``, in the page's order:
    session by session (they do not overlap), then in time."""
    return [
        tuple(str(e["vitals"].get(n, "")) for n in names)
        for e in timeline["entries"]
        if e["type"] in ("observation", "discharge") and any(n in e["vitals"] for n in names)
    ]


# --- the charts ------------------------------------------------------------------------


async def test_the_patient_page_charts_the_history_with_the_apis_numbers(
    context: BrowserContext, served: ServeProcess, db: asyncpg.Connection[Any]
) -> None:
    ref = patient("HX")
    timeline = await build_history(served, ref)
    page = await sign_in(context, OFFICER)
    before = len(await audit_rows(db, "patient.timeline_read", ref))
    await open_patient(page, ref)
    await expect(page.get_by_role("heading", name=f"Patient {ref}")).to_be_visible()

    # Each chart is drawn: a Chart.js chart with a line per session, and paint on it.
    for name in CHARTS:
        drawn = await page.locator(f"#chart-{name}").evaluate(_CANVAS)
        assert drawn["painted"] > drawn["total"] * 0.01, (name, drawn)
        assert drawn["datasets"] == DATASETS[name], (name, drawn)

    # The tables hold the API's numbers.
    summary = await cells(page, "dose-summary")
    assert summary == [
        [f"Last {w['days']} days", str(w["sessions"]), f"{w['dose_mg']:g}"]
        for w in timeline["summary"]
    ]
    assert [row[1:3] for row in summary] == [["2", "168"], ["3", "224"], ["3", "224"]]
    doses = [e for e in timeline["entries"] if e["type"] == "dose"]
    dose_rows = await cells(page, "table-doses")
    assert [(r[0], r[4]) for r in dose_rows] == [
        (str(n), f"{e['dose_mg']:g}") for n, e in enumerate(doses, start=1)
    ]
    bp = await cells(page, "table-bp")
    assert [tuple(r[3:5]) for r in bp] == readings_of(timeline, "systolic", "diastolic")
    assert [r[0] for r in bp] == ["1"] * 4 + ["2"] * 4 + ["3"] * 4
    assert [r[2] for r in bp[:4]] == ["+5", "+40", "+110", "+125"]
    pulse = await cells(page, "table-pulse")
    assert [tuple(r[3:]) for r in pulse] == readings_of(timeline, "pulse")
    moaas = await cells(page, "table-moaas")
    assert [tuple(r[3:]) for r in moaas] == readings_of(timeline, "moaa_s")
    assert await page.locator("#timeline tbody tr").count() == len(timeline["entries"])

    # The read is audited by the API call the page made, once.
    reads = await audit_rows(db, "patient.timeline_read", ref)
    assert len(reads) == before + 1
    assert reads[-1]["actor"] == OFFICER
    await check_and_capture(page, "patient")

    # Printed: no navigation or search box, the charts within the paper's width.
    await page.emulate_media(media="print")
    await page.evaluate(NEXT_FRAMES)  # the print layout has been drawn
    await page.evaluate("window.dispatchEvent(new Event('beforeprint'))")
    await expect(page.locator("header.topbar")).to_be_hidden()
    await expect(page.locator("form.find-patient")).to_be_hidden()
    main_width = await page.locator("main").evaluate("el => el.clientWidth")
    for name in CHARTS:
        box = await page.locator(f"#chart-{name}").bounding_box()
        assert box is not None
        assert box["width"] <= main_width + 1, name
    # As it prints (A4), for a person to look at.
    await page.pdf(path=str(SCREENSHOTS / "patient.pdf"), format="A4", print_background=True)
    await page.emulate_media(media="screen")


async def test_a_patient_is_found_from_the_search_box_and_from_a_report(
    context: BrowserContext, served: ServeProcess
) -> None:
    ref = patient("FIND")
    await build_history(served, ref)
    report = await api_report(served, bp_report("C1", patient_ref=ref))
    page = await sign_in(context, NURSE)
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Patients").click()
    await expect(page).to_have_url(re.compile(r"/patients$"))
    await page.get_by_label("Patient reference").fill("not a ref!")
    await page.get_by_role("button", name="Open").click()
    await expect(page.locator("#find-patient-error")).to_contain_text("Letters, digits")
    await check_and_capture(page, "patient-search")
    await page.get_by_label("Patient reference").fill(ref)
    await page.get_by_role("button", name="Open").click()
    await expect(page).to_have_url(re.compile(f"/patients/{ref}$"))
    await expect(page.locator("html")).to_have_attribute("data-charts-ready", "yes")
    await expect(page.locator("#timeline")).to_contain_text("Blood pressure report")

    await page.goto(f"/reports/{report['id']}")
    await page.get_by_role("link", name=f"Patient's history: {ref}").click()
    await expect(page).to_have_url(re.compile(f"/patients/{ref}$"))
    await expect(page.locator("html")).to_have_attribute("data-charts-ready", "yes")


async def test_another_clinics_patient_is_not_found(
    context: BrowserContext, served: ServeProcess, db: asyncpg.Connection[Any]
) -> None:
    ref = patient("ELSE")
    await build_history(served, ref, OTHER_NURSE)
    page = await sign_in(context, AUDITOR)  # granted every clinic: sees it
    await open_patient(page, ref)
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(re.compile(r"/login$"))
    await page.close()
    page = await sign_in(context, OFFICER)
    # Another clinic's patient is a not-found page, as the timeline API's 404.
    missing = await page.goto(f"/patients/{ref}")
    assert missing is not None
    assert missing.status == 404
    await expect(page.locator("h1")).to_have_text("Not found")
    await expect(page.locator("p.lead")).to_contain_text(f"no patient {ref} at your clinics")
    await check_and_capture(page, "patient-not-found")
    # Nothing about the patient was read for her: no audit entry of hers.
    reads = await audit_rows(db, "patient.timeline_read", ref)
    assert [r["actor"] for r in reads] == [OTHER_NURSE, AUDITOR]
    # A reference that cannot be one is a not-found page.
    response = await page.goto(f"/patients/{uuid.uuid4()}%20x")
    assert response is not None
    assert response.status == 404
