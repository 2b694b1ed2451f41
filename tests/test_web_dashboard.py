"""The safety-signals dashboard in a real browser (issue 16): last month's sessions built
through the API at two clinics, one of them with many deeply sedated patients (MOAA/S 1,
rule:sedation-moaa-s-1: above its upper 3-sigma limit, a signal); the page draws the
p-chart and the funnel plot (Chart.js, served by the service) with tables holding the
API's numbers, lists the clinic above its limit first under "What is unusual", takes its
filters from the query (as the signal alert links to it), has no script error or CSP
violation and passes axe; a nurse gets a 403 and no link to it. Screenshots at both
tablet sizes, and the page printed to PDF, go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import BrowserContext, Page, expect

from tests.helpers.browser import (
    AUDITOR,
    BROWSER_MARKS,
    NEXT_FRAMES,
    NURSE,
    OFFICER,
    OTHER_NURSE,
    SCREENSHOTS,
    browser,
    check_and_capture,
    context,
    db,
    served,
    sign_in,
    web_database,
)
from tests.helpers.processes import ServeProcess
from tests.helpers.sessions import clone_sessions, dosed_session, iso, post
from tests.helpers.world import PASSWORD

pytestmark = BROWSER_MARKS
__all__ = ["browser", "context", "db", "served", "web_database"]

DEEP_SEDATION = "rule:sedation-moaa-s-1"
# Last month: C1 60 sessions with 2 deeply sedated, C2 20 with 8. The network's rate
# 10/80 = 12.5 per 100; C2's upper limit 12.5 + 3 sqrt(0.125 * 0.875 / 20) = 34.68, its
# rate 40: above, with 20 sessions a signal. C1's limit 25.31, its rate 3.33: inside.
CLINICS = {"C1": (NURSE, 60, 2), "C2": (OTHER_NURSE, 20, 8)}
# The month before: C1 30 with 1, C2 20 with 1 (3.33 and 5.00 per 100; inside).
EARLIER = {"C1": (NURSE, 30, 1), "C2": (OTHER_NURSE, 20, 1)}

_CANVAS = """(canvas) => {
    const chart = Chart.getChart(canvas);
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let painted = 0;
    for (let i = 3; i < pixels.length; i += 4) {
        if (pixels[i] !== 0) painted += 1;
    }
    return {
        painted,
        total: canvas.width * canvas.height,
        labels: chart ? chart.data.datasets.map((d) => d.label) : null,
    };
}"""


def last_month() -> date:
    today = datetime.now(UTC).date()
    first = today.replace(day=1)
    return (first - timedelta(days=1)).replace(day=1)


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


async def clinic_month(
    served: ServeProcess,
    conn: asyncpg.Connection[Any],
    nurse: str,
    clinic: str,
    at: datetime,
    sessions: int,
    events: int,
) -> None:
    """``sessions`` sessions at ``clinic`` dosed from ``at``, ``events`` of them with a
    MOAA/S of 1 (through the API), the others quiet (one through the API, copied)."""
    tag = f"SIG-{clinic}-{at:%Y%m}"
    async with await api_client(served, nurse) as http:
        for i in range(events):
            session_id = await dosed_session(
                http, {}, at + timedelta(minutes=i), f"{tag}-{i}", clinic
            )
            observed = await post(
                http,
                f"/api/v1/sessions/{session_id}/observations",
                {},
                {"observed_at": iso(at + timedelta(minutes=i + 20)), "moaa_s": 1},
            )
            assert observed.status_code == 201, observed.text
        quiet = await dosed_session(http, {}, at, f"{tag}-Q", clinic)
    await clone_sessions(conn, quiet, sessions - events - 1)


@pytest.fixture(scope="module")
async def signals(served: ServeProcess, web_database: str) -> dict[str, Any]:
    """Last month's sessions (see CLINICS); the control chart and funnel as the API
    gives them to the auditor (every clinic)."""
    month = last_month()
    before = (month - timedelta(days=1)).replace(day=1)
    conn = await asyncpg.connect(web_database)
    try:
        for start, clinics in ((before, EARLIER), (month, CLINICS)):
            at = datetime(start.year, start.month, 10, 9, 0, tzinfo=UTC)
            for clinic, (nurse, sessions, events) in clinics.items():
                await clinic_month(served, conn, nurse, clinic, at, sessions, events)
    finally:
        await conn.close()
    async with await api_client(served, AUDITOR) as http:
        chart = await http.get(
            "/api/v1/analytics/control-chart", params={"event_type": DEEP_SEDATION}
        )
        assert chart.status_code == 200, chart.text
        funnel = await http.get(
            "/api/v1/analytics/funnel",
            params={"event_type": DEEP_SEDATION, "period_start": month.isoformat()},
        )
        assert funnel.status_code == 200, funnel.text
        rates = await http.get(
            "/api/v1/analytics/rates",
            params={"event_type": DEEP_SEDATION, "group": "clinic"},
        )
        assert rates.status_code == 200, rates.text
    return {"chart": chart.json(), "funnel": funnel.json(), "rates": rates.json()}


async def open_dashboard(page: Page, query: str = "") -> None:
    await page.goto(f"/analytics{query}")
    await expect(page.locator("html")).to_have_attribute("data-charts-ready", "yes")


async def cells(page: Page, table: str) -> list[list[str]]:
    rows: list[list[str]] = await page.locator(f"#{table} tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))"
    )
    return rows


def two(value: float) -> str:
    return f"{value:,.2f}"


async def test_the_dashboard_charts_the_signal_with_the_apis_numbers(
    context: BrowserContext, served: ServeProcess, signals: dict[str, Any]
) -> None:
    month = last_month().isoformat()
    chart, funnel = signals["chart"], signals["funnel"]
    above = [p for p in chart["points"] if p["above"]]
    assert [(p["clinic"], p["period_start"], p["signal"]) for p in above] == [("C2", month, True)]
    page = await sign_in(context, AUDITOR)
    await (
        page.get_by_role("navigation", name="Main")
        .get_by_role("link", name="Safety signals")
        .click()
    )
    await expect(page).to_have_url(re.compile(r"/analytics$"))
    await expect(page.locator("html")).to_have_attribute("data-charts-ready", "yes")
    await expect(page.get_by_role("heading", name="Safety signals", level=1)).to_be_visible()
    # The event types are those the rates name (the most frequent chosen first; sessions
    # left open may have raised another rule's alerts too): deep sedation among them.
    await page.get_by_label("Event type").select_option(DEEP_SEDATION)
    await page.get_by_role("button", name="Show").click()
    await expect(page).to_have_url(re.compile(r"event_type=rule%3Asedation-moaa-s-1"))
    await expect(page.locator("html")).to_have_attribute("data-charts-ready", "yes")

    # What is unusual: C2 last month, a signal, first.
    unusual = await cells(page, "table-unusual")
    assert unusual[0][1] == "C2"
    assert unusual[0][7] == "Signal: above"
    sedation = [r for r in unusual if r[2] == "Alert rule: sedation-moaa-s-1"]
    assert len(sedation) == 1
    assert sedation[0][1] == "C2"
    assert sedation[0][3:8] == ["20", "8", two(40), two(above[0]["ucl_per_100"]), "Signal: above"]
    link = page.locator("#table-unusual tbody tr", has_text="sedation-moaa-s-1").get_by_role("link")
    href = await link.get_attribute("href") or ""
    assert "event_type=rule%3Asedation-moaa-s-1" in href
    assert "clinic=C2" in href

    # Both charts drawn: Chart.js charts with paint on them.
    for name in ("pchart", "funnel"):
        drawn = await page.locator(f"#chart-{name}").evaluate(_CANVAS)
        assert drawn["painted"] > drawn["total"] * 0.01, (name, drawn)
        assert {"C1", "C2", "Network"} <= set(drawn["labels"]), (name, drawn)

    # The tables hold the API's numbers.
    points = await cells(page, "table-pchart")
    expected = sorted(chart["points"], key=lambda p: (p["period_start"], p["clinic"]))
    assert [r[1:8] for r in points] == [
        [
            p["clinic"],
            str(p["sessions"]),
            str(p["events"]),
            two(p["rate_per_100"]),
            two(p["centre_per_100"]),
            two(p["lcl_per_100"]),
            two(p["ucl_per_100"]),
        ]
        for p in expected
    ]
    assert [r[8] for r in points] == [
        "Signal: above" if p["signal"] else "Inside" for p in expected
    ]
    funnel_rows = await cells(page, "table-funnel")
    assert [r[:4] for r in funnel_rows] == [
        [c["clinic"], str(c["sessions"]), str(c["events"]), two(c["rate_per_100"])]
        for c in funnel["clinics"]
    ]
    # C1's 3.33 is under its lower 95% limit (4.13), C2's 40 over its upper 99.8% (34.18).
    assert {r[0]: r[6] for r in funnel_rows} == {"C1": "Below 95%", "C2": "Above 99.8%"}
    assert {c["clinic"]: c["position"] for c in funnel["clinics"]} == {
        "C1": "below_95",
        "C2": "above_998",
    }
    rates = await cells(page, "table-rates")
    assert [(r[1], r[2], r[3], r[4]) for r in rates] == [
        (r["clinic"], str(r["sessions"]), str(r["sessions_with_event"]), two(r["rate_per_100"]))
        for r in signals["rates"]["rows"]
    ]
    await check_and_capture(page, "dashboard")

    # Printed: no navigation or filters, the charts within the paper's width.
    await page.emulate_media(media="print")
    await page.evaluate(NEXT_FRAMES)
    await page.evaluate("window.dispatchEvent(new Event('beforeprint'))")
    await expect(page.locator("header.topbar")).to_be_hidden()
    await expect(page.locator("#analytics-filters")).to_be_hidden()
    main_width = await page.locator("main").evaluate("el => el.clientWidth")
    for name in ("pchart", "funnel"):
        box = await page.locator(f"#chart-{name}").bounding_box()
        assert box is not None
        assert box["width"] <= main_width + 1, name
    await page.pdf(path=str(SCREENSHOTS / "dashboard.pdf"), format="A4", print_background=True)
    await page.emulate_media(media="screen")


async def test_the_alerts_link_opens_the_dashboard_with_its_filters(
    context: BrowserContext, served: ServeProcess, signals: dict[str, Any]
) -> None:
    page = await sign_in(context, AUDITOR)
    await open_dashboard(page, f"?event_type={DEEP_SEDATION}&clinic=C2&grain=month")
    await expect(page.get_by_label("Clinic", exact=True)).to_have_value("C2")
    await expect(page.get_by_label("Event type")).to_have_value(DEEP_SEDATION)
    await expect(page.get_by_label("Periods")).to_have_value("month")
    await expect(page.locator("#analytics-shown")).to_contain_text(
        "Shown: Hillside Clinic (C2), every drug, every route, every dose; months from"
    )
    points = await cells(page, "table-pchart")
    assert {r[1] for r in points} == {"C2"}
    drawn = await page.locator("#chart-pchart").evaluate(_CANVAS)
    assert "C2 upper limit" in drawn["labels"], drawn
    # Changing a filter reloads the page with it.
    await page.get_by_label("Clinic", exact=True).select_option("")
    await page.get_by_role("button", name="Show").click()
    await expect(page).to_have_url(re.compile(r"clinic=&"))
    await expect(page.locator("html")).to_have_attribute("data-charts-ready", "yes")
    assert {r[1] for r in await cells(page, "table-pchart")} == {"C1", "C2"}

    # The safety officer of C1 sees her clinic only: nothing unusual there.
    await page.close()
    await context.clear_cookies()
    page = await sign_in(context, OFFICER)
    await open_dashboard(page)
    assert {r[1] for r in await cells(page, "table-pchart")} == {"C1"}
    await expect(page.locator("#table-unusual tbody")).to_contain_text("Nothing above")
    await check_and_capture(page, "dashboard-officer")


async def test_a_nurse_has_no_dashboard(context: BrowserContext, served: ServeProcess) -> None:
    page = await sign_in(context, NURSE)
    nav = page.get_by_role("navigation", name="Main")
    await expect(nav.get_by_role("link", name="Patients")).to_be_visible()
    await expect(nav.get_by_role("link", name="Safety signals")).to_have_count(0)
    response = await page.goto("/analytics")
    assert response is not None
    assert response.status == 403
