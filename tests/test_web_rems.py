"""The safety officers' REMS forms page in a real browser (issue 15): an overdue form
listed before the forms due, with its patient, session, due date and days overdue, and
its prefilled content; its submission recorded from the page with the REMS confirmation
number (checked in the browser first), stored and audited, and the form gone from the
list; a nurse cannot open the page, nor sees it in the navigation. Screenshots at both
tablet sizes go to test-artifacts/screenshots/.

A form is made overdue the way tests/test_rems_forms.py makes one: its session is dosed
9 days ago (the form is due 7 days after the dose).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from playwright.async_api import BrowserContext, expect

from tests.helpers.browser import (
    BROWSER_MARKS,
    NURSE,
    OFFICER,
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
from tests.helpers.reports import audit_rows
from tests.helpers.sessions import observed_session
from tests.helpers.world import PASSWORD

pytestmark = BROWSER_MARKS
__all__ = ["browser", "context", "db", "served", "web_database"]

READINGS = [
    {"minutes": 5, "systolic": 131, "diastolic": 84, "pulse": 80, "moaa_s": 4},
    {"minutes": 40, "systolic": 146, "diastolic": 88, "pulse": 84, "moaa_s": 3},
    {"minutes": 110, "systolic": 128, "diastolic": 80, "pulse": 76, "moaa_s": 5},
]


async def discharged(served: ServeProcess, ref: str, days_ago: float) -> str:
    """A session of ``ref`` dosed ``days_ago``, observed and discharged: its form made."""
    async with httpx.AsyncClient(base_url=served.base_url, timeout=30) as http:
        login = await http.post(
            "/api/v1/auth/login", json={"username": NURSE, "password": PASSWORD}
        )
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['token']}"}
        dosed_at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days_ago)
        return await observed_session(http, headers, ref, dosed_at, READINGS)


async def test_an_overdue_form_is_listed_first_and_its_submission_recorded(
    context: BrowserContext, served: ServeProcess, db: asyncpg.Connection[Any]
) -> None:
    late, soon = patient("LATE"), patient("SOON")
    late_session = await discharged(served, late, 9)
    await discharged(served, soon, 0.2)
    form_id = str(
        await db.fetchval("SELECT id FROM rems_forms WHERE session_id = $1::uuid", late_session)
    )
    page = await sign_in(context, OFFICER)
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="REMS forms").click()
    await expect(page).to_have_url(re.compile(r"/rems$"))
    await expect(page.locator("#rems-summary")).to_have_text("1 form overdue, 1 due.")

    overdue = page.locator("#overdue-list > li")
    await expect(overdue).to_have_count(1)
    row = overdue.first
    await expect(row).to_have_attribute("data-form-id", form_id)
    await expect(row.get_by_role("link", name=late)).to_have_attribute("href", f"/patients/{late}")
    await expect(row.locator(".rems-session")).to_contain_text(f"{late_session} · 56 mg")
    await expect(row.locator(".rems-session")).not_to_contain_text("object")
    await expect(row.locator(".rems-left")).to_have_text("2 days overdue")
    await expect(row.locator(".rems-due-utc")).to_contain_text("UTC")
    await expect(page.locator("#due-list > li")).to_have_count(1)
    await expect(page.locator("#due-list")).to_contain_text(soon)
    # Overdue comes first on the page.
    titles = await page.locator(".rems-group h2").all_inner_texts()
    assert [t.split()[0] for t in titles] == ["Overdue", "Due"]

    # The prefilled content.
    await row.get_by_text("Form content").click()
    content = row.locator(".rems-content")
    await expect(content).to_contain_text("Dr Vale")
    await expect(content.locator("tbody tr")).to_have_count(3)
    await expect(content).to_contain_text("146/88")
    await check_and_capture(page, "rems")

    # Checked in the browser first: empty, then not a confirmation number.
    field = row.get_by_label("REMS confirmation number")
    record = row.get_by_role("button", name="Record submission")
    await record.click()
    await expect(row.locator(".rems-submit .error")).to_contain_text("Enter the confirmation")
    await field.fill("ABC 123")
    await record.click()
    await expect(row.locator(".rems-submit .error")).to_contain_text("Letters, digits and dashes")
    await expect(field).to_have_attribute("aria-invalid", "true")
    assert await db.fetchval("SELECT submitted_at FROM rems_forms WHERE id = $1", form_id) is None

    await field.fill("SPR-2026-4471")
    await record.click()
    await expect(page.locator("#rems-done")).to_contain_text("confirmation SPR-2026-4471")
    await expect(page.locator("#overdue-list > li")).to_have_count(0)
    await expect(page.locator("#overdue-empty")).to_be_visible()
    await expect(page.locator("#rems-summary")).to_have_text("No form is overdue; 1 due.")
    stored = await db.fetchrow(
        "SELECT f.confirmation_number, u.username FROM rems_forms f"
        " JOIN users u ON u.id = f.submitted_by WHERE f.id = $1",
        form_id,
    )
    assert stored is not None
    assert tuple(stored) == ("SPR-2026-4471", OFFICER)
    (audited,) = await audit_rows(db, "rems_form.submitted", form_id)
    assert audited["actor"] == OFFICER
    assert audited["details"]["was_overdue"] is True

    # After a reload it stays off the list.
    await page.reload()
    await expect(page.locator("#rems-summary")).to_have_text("No form is overdue; 1 due.")
    await expect(page.locator("#overdue-empty")).to_be_visible()


async def test_a_nurse_cannot_open_the_rems_page(context: BrowserContext) -> None:
    page = await sign_in(context, NURSE)
    await expect(page.get_by_role("navigation", name="Main")).not_to_contain_text("REMS")
    response = await page.goto("/rems")
    assert response is not None
    assert response.status == 403
    await expect(page.locator("main")).to_contain_text("not for the nurse role")
