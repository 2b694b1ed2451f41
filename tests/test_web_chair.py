"""At the chair, in a real browser: the action cards a report's alerts bring to the
nurse's tablet, the pre-dose hold that waits for an override with a reason, and the
confirmation that stays under the form after a report is sent (also after a corrected
422). Debian's Chromium driven by Playwright; see tests/helpers/browser.py.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import BrowserContext, Page, Request, expect

from tests.helpers.browser import (
    BROWSER_MARKS,
    NURSE,
    OFFICER,
    api_token,
    browser,
    check_and_capture,
    context,
    db,
    fill_blood_pressure,
    fill_dissociation,
    form,
    patient,
    served,
    sign_in,
    submit,
    web_database,
)
from tests.helpers.processes import ServeProcess

pytestmark = BROWSER_MARKS
# The module's fixtures, imported from the helper (pytest finds them by name here).
__all__ = ["browser", "context", "db", "served", "web_database"]

CRISIS = "bp-hypertensive-crisis"
HOLD = "bp-pre-dose-hold"
NOTIFIED = "the safety officer has been notified."


# The patients of the answers the tablet keeps for the action cards.
_KEPT = """() => new Promise((resolve, reject) => {
  const open = indexedDB.open("safetyreport-answers");
  open.onerror = () => reject(open.error);
  open.onupgradeneeded = () => open.result.createObjectStore("answers", { keyPath: "key" });
  open.onsuccess = () => {
    const request = open.result.transaction("answers").objectStore("answers").getAll();
    request.onerror = () => reject(request.error);
    request.onsuccess = () => {
      resolve(request.result.map((a) => a.body.patient_ref));
      open.result.close();
    };
  };
})"""


def card(page: Page, rule: str) -> Any:
    return page.locator(f'.action-card[data-rule="{rule}"]')


def status(page: Page) -> Any:
    return form(page, "blood_pressure").locator(".form-status")


async def guidance(db: asyncpg.Connection[Any], rule: str) -> str:
    text: str = await db.fetchval("SELECT guidance FROM alert_rules WHERE id = $1", rule)
    return text


async def alert_of(db: asyncpg.Connection[Any], rule: str, patient_ref: str) -> asyncpg.Record:
    row: asyncpg.Record | None = await db.fetchrow(
        "SELECT a.id, a.override_reason, u.username AS overridden_by FROM alerts a"
        " LEFT JOIN users u ON u.id = a.overridden_by"
        " WHERE a.rule_id = $1 AND a.group_key = $2",
        rule,
        patient_ref,
    )
    assert row is not None
    return row


async def test_a_crisis_reading_shows_its_action_card_until_dismissed(
    context: BrowserContext, db: asyncpg.Connection[Any]
) -> None:
    page = await sign_in(context, NURSE)
    ref = patient("CRISIS")
    await fill_blood_pressure(page, ref, "210", "125")
    await form(page, "blood_pressure").get_by_label("Chest pain").check()
    await submit(page, "blood_pressure")

    crisis = card(page, CRISIS)
    await expect(crisis).to_be_visible()
    await expect(crisis.locator(".sev-tag")).to_have_text("Critical")
    await expect(crisis).to_contain_text("Status: Open")
    await expect(crisis).to_contain_text(ref)
    await expect(crisis).to_contain_text("BP 210/125 (after dose)")
    await expect(crisis.locator(".guidance")).to_have_text(await guidance(db, CRISIS))
    # The gravest first.
    await expect(page.locator(".action-card").first).to_have_attribute("data-rule", CRISIS)
    await expect(status(page)).to_contain_text(f"Report sent: BP 210/125 (after dose), {ref}. ")
    await expect(status(page)).to_contain_text(NOTIFIED)
    await check_and_capture(page, "chair-cards")

    # The cards are kept on the tablet until she dismisses them: a reload shows them.
    await page.reload()
    await expect(crisis).to_be_visible()
    await crisis.get_by_role("button", name=re.compile(r"^Dismiss")).click()
    await expect(crisis).to_have_count(0)
    await page.reload()
    await expect(page.get_by_role("heading", name="Report a safety event")).to_be_visible()
    await expect(crisis).to_have_count(0)


async def test_a_report_sent_in_the_background_shows_its_cards(
    context: BrowserContext, db: asyncpg.Connection[Any]
) -> None:
    page = await sign_in(context, NURSE)
    ref = patient("LATER")
    await context.set_offline(True)
    await fill_blood_pressure(page, ref, "210", "125")
    await form(page, "blood_pressure").get_by_label("Chest pain").check()
    await submit(page, "blood_pressure")
    await expect(status(page)).to_contain_text("No connection")
    await expect(card(page, CRISIS)).to_have_count(0)

    await context.set_offline(False)
    await page.evaluate("window.dispatchEvent(new Event('online'))")  # a flush, now
    crisis = card(page, CRISIS)
    await expect(crisis).to_be_visible()
    await expect(crisis).to_contain_text(ref)
    await expect(crisis.locator(".guidance")).to_have_text(await guidance(db, CRISIS))
    assert await page.evaluate(_KEPT) == [ref]
    # The form that saved it says it has gone, and what it raised.
    await expect(status(page)).to_contain_text(f"Report sent: BP 210/125 (after dose), {ref}.")
    await expect(status(page)).to_contain_text(NOTIFIED)

    # They name a patient: signing out forgets them (a shared tablet).
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(re.compile(r"/login$"))
    assert await page.evaluate(_KEPT) == []


async def test_a_pre_dose_hold_says_do_not_dose_until_an_override_with_a_reason(
    context: BrowserContext, db: asyncpg.Connection[Any]
) -> None:
    page = await sign_in(context, NURSE)
    overrides: list[Request] = []
    page.on("request", lambda r: overrides.append(r) if "/override" in r.url else None)
    ref = patient("HOLD")
    await fill_blood_pressure(page, ref, "150", "95")
    await form(page, "blood_pressure").get_by_label("Before dose").check()
    await submit(page, "blood_pressure")

    hold = card(page, HOLD)
    await expect(hold.get_by_role("heading")).to_have_text(f"Do not dose {ref}")
    await expect(hold.locator(".guidance")).to_have_text(await guidance(db, HOLD))
    await expect(status(page)).to_contain_text(f"Do not dose {ref}")
    # Pinned: no way to dismiss it while it holds.
    await expect(hold.get_by_role("button", name=re.compile(r"^Dismiss"))).to_have_count(0)

    # No reason: said by the field, and nothing is sent or recorded.
    reason = hold.get_by_label("Reason for dosing despite the hold")
    await hold.get_by_role("button", name="Record override").click()
    await expect(hold.locator(".error")).to_have_text(
        "Write the reason for dosing despite the hold. Nothing was recorded."
    )
    await expect(reason).to_have_attribute("aria-invalid", "true")
    await expect(reason).to_be_focused()
    assert overrides == []
    await check_and_capture(page, "chair-hold")

    # Offline: said in plain words; still nothing recorded.
    text = "Recheck 138/88 after 5 minutes; Dr Reyes agreed to dose."
    await reason.fill(text)
    await context.set_offline(True)
    await hold.get_by_role("button", name="Record override").click()
    await expect(hold.locator(".error")).to_contain_text("No connection")
    await context.set_offline(False)
    row = await alert_of(db, HOLD, ref)
    assert row["override_reason"] is None

    await hold.get_by_role("button", name="Record override").click()
    await expect(hold.locator(".override-done")).to_have_text(
        f"Override recorded by you: {text.rstrip('.')}. Dosing may proceed."
    )
    row = await alert_of(db, HOLD, ref)
    assert (row["override_reason"], row["overridden_by"]) == (text, NURSE)
    await expect(hold.get_by_role("heading")).not_to_have_text(f"Do not dose {ref}")
    await check_and_capture(page, "chair-hold-overridden")
    # Now it may go.
    await hold.get_by_role("button", name=re.compile(r"^Dismiss")).click()
    await expect(hold).to_have_count(0)


async def test_the_confirmation_stays_after_a_corrected_422(
    context: BrowserContext, db: asyncpg.Connection[Any]
) -> None:
    page = await sign_in(context, NURSE)
    ref = patient("FIX")
    # Systolic below diastolic: the server's 422, beside the field.
    await fill_blood_pressure(page, ref, "120", "130")
    await submit(page, "blood_pressure")
    await expect(page.locator("#blood_pressure-systolic-error")).to_have_text(
        "systolic must exceed diastolic"
    )
    await expect(status(page)).to_contain_text("The server refused this report")

    bp = form(page, "blood_pressure")
    await bp.get_by_label("Systolic (mmHg)").fill("210")
    await bp.get_by_label("Diastolic (mmHg)").fill("125")
    await bp.get_by_label("Chest pain").check()
    await submit(page, "blood_pressure")
    await expect(status(page)).to_contain_text(f"Report sent: BP 210/125 (after dose), {ref}.")
    await expect(status(page)).to_contain_text(NOTIFIED)
    await expect(status(page)).to_have_attribute("role", "status")
    await expect(page.locator('.outbox-item[data-state="failed"]')).to_have_count(0)

    # It stays while she starts the next report, until she dismisses it.
    await bp.get_by_label("Patient reference").fill(patient("NEXT"))
    await expect(status(page)).to_contain_text(f"{ref}.")
    await bp.get_by_role("button", name="Dismiss the message").click()
    await expect(status(page)).to_have_text("")

    # A report that raises nothing says so.
    calm = patient("CALM")
    await fill_blood_pressure(page, calm, "118", "76")
    await submit(page, "blood_pressure")
    await expect(status(page)).to_have_text(
        f"Report sent: BP 118/76 (after dose), {calm}. No alert raised."
    )


# It uses the served process itself (the officer's API call): marked here too, as the suite
# layout check looks for the mark on the test.
@pytest.mark.end_to_end
async def test_a_hold_overridden_elsewhere_is_said_in_plain_words_and_may_go(
    context: BrowserContext, db: asyncpg.Connection[Any], served: ServeProcess
) -> None:
    page = await sign_in(context, NURSE)
    ref = patient("ELSE")
    await fill_blood_pressure(page, ref, "150", "95")
    await form(page, "blood_pressure").get_by_label("Before dose").check()
    await submit(page, "blood_pressure")
    hold = card(page, HOLD)
    await expect(hold.get_by_role("heading")).to_have_text(f"Do not dose {ref}")

    # The safety officer records the override first, from her own screen.
    alert_id = (await alert_of(db, HOLD, ref))["id"]
    token = await api_token(served, OFFICER)
    async with httpx.AsyncClient(base_url=served.base_url, timeout=10) as http:
        response = await http.post(
            f"/api/v1/alerts/{alert_id}/override",
            json={"reason": "Prescriber assessed the patient."},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 200, response.text

    await hold.get_by_label("Reason for dosing despite the hold").fill("Recheck 136/86.")
    await hold.get_by_role("button", name="Record override").click()
    await expect(hold.locator(".error")).to_have_text(
        f"Not recorded: the hold was already overridden by {OFFICER}."
    )
    assert (await alert_of(db, HOLD, ref))["override_reason"] == "Prescriber assessed the patient."
    await hold.get_by_role("button", name=re.compile(r"^Dismiss")).click()
    await expect(hold).to_have_count(0)


async def test_the_confirmation_sums_up_each_kind(
    context: BrowserContext, db: asyncpg.Connection[Any]
) -> None:
    page = await sign_in(context, NURSE)
    ref = patient("DS")
    await fill_dissociation(page, ref)
    await submit(page, "dissociation")
    await expect(form(page, "dissociation").locator(".form-status")).to_have_text(
        re.compile(rf"^Report sent: MOAA/S 4, moderate, {ref}\. (No alert raised\.|.*notified\.)")
    )
