"""The alert detail page in a real browser (Debian's Chromium): what each report
contributed, what an amendment changed, and the assignee picked from the clinic's
safety officers and admins. Screenshots at both tablet sizes; axe-core finds nothing.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import asyncpg
import httpx
from playwright.async_api import BrowserContext, expect

from tests.helpers.browser import (
    BROWSER_MARKS,
    NURSE,
    OFFICER,
    add_staff,
    api_report,
    api_token,
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
from tests.helpers.reports import bp_report

__all__ = ["browser", "context", "db", "served", "web_database"]
pytestmark = BROWSER_MARKS

CRISIS = "bp-hypertensive-crisis"


async def amend_as_nurse(served: ServeProcess, report_id: str, changes: dict[str, Any]) -> None:
    token = await api_token(served, NURSE)
    async with httpx.AsyncClient(base_url=served.base_url, timeout=10) as http:
        response = await http.post(
            f"/api/v1/reports/{report_id}/amendments",
            json=changes,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 201, response.text


async def test_the_detail_shows_contributions_and_amendments_and_offers_the_clinics_officers(
    context: BrowserContext, served: ServeProcess, db: asyncpg.Connection[Any]
) -> None:
    # Another officer of C1 (offered), an officer of C2 (not offered).
    await add_staff(db, "C1", ("omar", "safety_officer"))
    await add_staff(db, "C2", ("otto", "safety_officer"))
    ref = patient("DETAIL")
    report = await api_report(
        served,
        bp_report("C1", patient_ref=ref, systolic=185, diastolic=100, symptoms=["chest_pain"]),
    )
    await amend_as_nurse(
        served, report["id"], {"reason": "misread the cuff", "systolic": 210, "diastolic": 125}
    )
    alert_id = await db.fetchval(
        "SELECT DISTINCT alert_id FROM alert_reports ar JOIN alerts a ON a.id = ar.alert_id"
        " WHERE ar.report_id = $1::uuid AND a.rule_id = $2",
        uuid.UUID(report["id"]),
        CRISIS,
    )

    page = await sign_in(context, OFFICER)
    await page.goto(f"/alerts/{alert_id}")
    facts = page.locator(".facts")
    await expect(facts).to_contain_text("Triggered by")
    await expect(facts).to_contain_text("BP 210/125 mmHg, symptoms chest pain")
    reports = page.locator(".report-list > li")
    await expect(reports).to_have_count(2)
    await expect(reports.nth(0)).to_contain_text("BP 185/100 mmHg, symptoms chest pain")
    await expect(reports.nth(0)).not_to_contain_text("Amendment changed")
    amended = reports.nth(1)
    await expect(amended).to_contain_text("version 2")
    await expect(amended).to_contain_text("BP 210/125 mmHg, symptoms chest pain")
    await expect(amended.locator(".changes li")).to_have_text(
        ["diastolic 100 → 125", "systolic 185 → 210"]
    )

    # The assignee is chosen from the clinic's officers and admins, not typed.
    assignee = page.get_by_label("Assign to")
    await expect(assignee.locator("option")).to_have_text(
        ["olga (safety officer)", "omar (safety officer)"]
    )
    await expect(assignee).to_have_value(OFFICER)
    await check_and_capture(page, "officer-alert-detail-contributions")

    await assignee.select_option("omar")
    await page.locator('form[data-action="assign"]').get_by_role("button", name="Assign").click()
    await expect(facts).to_contain_text(re.compile(r"Assigned to\s*omar"))
    await expect(page.get_by_label("Assign to")).to_have_value("omar")
    assigned = await db.fetchval(
        "SELECT u.username FROM alerts a JOIN users u ON u.id = a.assigned_to WHERE a.id = $1",
        alert_id,
    )
    assert assigned == "omar"
