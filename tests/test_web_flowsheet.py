"""The session flowsheet on the nurse's tablet, in a real browser: the alert card of the
checklist's pre-dose hold at once, a session recorded offline that reaches the server
exactly once and in order, and a refused discharge showing the server's criteria, then
discharged with an override. Debian's Chromium driven by Playwright; see
tests/helpers/browser.py.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import asyncpg
from playwright.async_api import BrowserContext, Page, expect

from tests.helpers.browser import (
    BROWSER_MARKS,
    NURSE,
    SCREENSHOTS,
    browser,
    check_and_capture,
    context,
    db,
    patient,
    served,
    sign_in,
    web_database,
)
from tests.helpers.waiting import eventually

pytestmark = BROWSER_MARKS
# The module's fixtures, imported from the helper (pytest finds them by name here).
__all__ = ["browser", "context", "db", "served", "web_database"]

FLOWSHEET = "/sessions/flowsheet"
HOLD = "bp-pre-dose-hold"
SESSION_ID = re.compile(r"\?id=([0-9a-f-]{36})$")


def step(page: Page, name: str) -> Any:
    return page.locator(f"form#form-{name}")


async def yes_no(form: Any, field: str, answer: str) -> None:
    await form.locator(f'[data-field="{field}"]').get_by_label(answer, exact=True).check()


async def open_session(page: Page, ref: str, systolic: str, diastolic: str) -> None:
    session = step(page, "session")
    await session.get_by_label("Patient reference").fill(ref)
    await session.get_by_label("Under 65").check()
    await session.get_by_label("Prescriber").fill("Dr Vale")
    await session.get_by_label("Systolic (mmHg)").fill(systolic)
    await session.get_by_label("Diastolic (mmHg)").fill(diastolic)
    await yes_no(session, "fasting", "Yes")
    await yes_no(session, "cns_depressants", "No")
    await yes_no(session, "pregnancy_possible", "No")
    await yes_no(session, "transport_arranged", "Yes")
    await session.get_by_role("button", name="Open session").click()


async def record_dose(page: Page, mg: str = "56") -> None:
    dose = step(page, "dose")
    await dose.get_by_label("Dose (mg)").fill(mg)
    await dose.get_by_role("button", name="Record dose").click()


async def observe(page: Page, **values: str) -> None:
    form = step(page, "observation")
    labels = {
        "systolic": "Systolic (mmHg)",
        "diastolic": "Diastolic (mmHg)",
        "pulse": "Pulse (/min)",
        "spo2": "SpO2 (%)",
    }
    for name, value in values.items():
        await form.get_by_label(labels[name]).fill(value)
    await form.get_by_role("button", name="Add observation").click()


async def session_id(page: Page) -> str:
    await expect(page).to_have_url(SESSION_ID)
    match = SESSION_ID.search(page.url)
    assert match is not None
    return match[1]


async def open_flowsheet(context: BrowserContext) -> Page:
    page = await sign_in(context, NURSE)
    await page.get_by_role("link", name="Flowsheet").click()
    await expect(page.get_by_role("heading", name="Session flowsheet")).to_be_visible()
    await expect(page.locator("body")).to_have_attribute("data-ready", "yes")
    return page


def keep_shots(name: str) -> None:
    """Copies of the screenshots for the reviewer (FLOWSHEET_SHOTS, if set)."""
    target = os.environ.get("FLOWSHEET_SHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for shot in SCREENSHOTS.glob(f"{name}-*.png"):
            shutil.copy(shot, target)


async def test_a_checklist_blood_pressure_that_holds_shows_the_card_at_once(
    context: BrowserContext, db: asyncpg.Connection[Any]
) -> None:
    page = await open_flowsheet(context)
    await check_and_capture(page, "flowsheet-new")
    keep_shots("flowsheet-new")
    ref = patient("FSHOLD")
    await open_session(page, ref, "150", "95")

    hold = page.locator(f'.action-card[data-rule="{HOLD}"]')
    await expect(hold.get_by_role("heading")).to_have_text(f"Do not dose {ref}")
    guidance: str = await db.fetchval("SELECT guidance FROM alert_rules WHERE id = $1", HOLD)
    await expect(hold.locator(".guidance")).to_have_text(guidance)
    await expect(hold).to_contain_text("checklist BP 150/95 (before dose)")
    await expect(step(page, "session").locator(".form-status")).to_contain_text(
        f"Do not dose {ref}"
    )
    # The session is open: its bar, the dose form; the session form is done.
    await expect(page.locator("#session-heading")).to_have_text(f"Session of {ref}")
    await expect(step(page, "session")).to_be_hidden()
    await expect(step(page, "dose")).to_be_visible()
    await expect(page.locator('.outbox-item[data-kind="session"]')).to_have_attribute(
        "data-state", "sent"
    )

    # Dosing while the hold is open: refused, and the reason field is offered.
    await record_dose(page)
    dose = step(page, "dose")
    await expect(dose.locator(".error-summary")).to_contain_text("give a reason")
    reason = dose.get_by_label("Reason for dosing despite the hold")
    await expect(reason).to_be_visible()
    await expect(page.locator('.outbox-item[data-kind="dose"]')).to_have_attribute(
        "data-state", "failed"
    )
    await check_and_capture(page, "flowsheet-hold")
    keep_shots("flowsheet-hold")
    await reason.fill("Recheck 138/88 after 5 minutes; Dr Vale agreed.")
    await dose.get_by_role("button", name="Record dose").click()
    await expect(page.locator('.outbox-item[data-kind="dose"]')).to_have_attribute(
        "data-state", "sent"
    )
    await expect(page.locator("#flow-timer")).to_be_visible()
    await expect(page.locator("#next-due")).to_contain_text("blood pressure at 40 min")
    await expect(hold).to_contain_text("Override recorded")
    row = await db.fetchrow(
        "SELECT dose_mg, dose_override_reason FROM treatment_sessions WHERE patient_ref = $1", ref
    )
    assert row is not None
    assert (row["dose_mg"], row["dose_override_reason"]) == (
        56,
        "Recheck 138/88 after 5 minutes; Dr Vale agreed.",
    )

    # A session this tablet does not hold (opened on another, or forgotten): its address
    # loads it from the API.
    sid = await session_id(page)
    await page.evaluate("localStorage.clear()")
    await page.goto(f"{FLOWSHEET}?id={sid}")
    await expect(page.locator("body")).to_have_attribute("data-ready", "yes")
    await expect(page.locator("#session-heading")).to_have_text(f"Session of {ref}")
    await expect(page.locator("#session-facts")).to_contain_text("150/95")
    await expect(page.locator("#flow-timer")).to_be_visible()
    await expect(step(page, "dose")).to_be_hidden()
    await expect(step(page, "observation")).to_be_visible()


async def test_a_session_recorded_offline_reaches_the_server_once_in_order(
    context: BrowserContext, db: asyncpg.Connection[Any]
) -> None:
    page = await open_flowsheet(context)
    # The service worker holds this page and its assets before the network goes.
    await expect(page.locator("html")).to_have_attribute("data-offline-ready", "yes")
    await context.set_offline(True)
    await expect(page.locator("#net-status")).to_contain_text("Offline")

    ref = patient("FSOFF")
    await open_session(page, ref, "124", "78")
    await expect(step(page, "session").locator(".form-status")).to_contain_text(
        "saved on this tablet"
    )
    sid = await session_id(page)
    await record_dose(page)
    await expect(step(page, "dose")).to_be_hidden()
    # Reloaded without a network: the page comes from the service worker, the session
    # from this tablet (by its id), its steps from the outbox.
    await page.reload()
    await expect(page.locator("body")).to_have_attribute("data-ready", "yes")
    await expect(page.locator("#session-heading")).to_have_text(f"Session of {ref}")
    await expect(page.locator("#since-dose")).to_contain_text("min")
    await observe(page, systolic="132", diastolic="84", pulse="76")
    await observe(page, spo2="97", pulse="72")
    queued = page.locator('.outbox-item[data-state="queued"]')
    await expect(queued).to_have_count(4)
    await expect(page.locator("#obs-rows tr")).to_have_count(2)
    await check_and_capture(page, "flowsheet-offline")
    keep_shots("flowsheet-offline")
    assert await db.fetchval("SELECT count(*) FROM treatment_sessions WHERE id = $1", sid) == 0

    await context.set_offline(False)
    await page.evaluate("window.dispatchEvent(new Event('online'))")  # a flush, now
    await expect(page.locator("body")).to_have_attribute("data-outbox", "0")
    await expect(page.locator('.outbox-item[data-state="sent"]')).to_have_count(4)
    await expect(page.locator("#outbox-summary")).to_have_text("Every step is on the server.")

    async def observed() -> bool:
        count: int = await db.fetchval(
            "SELECT count(*) FROM session_observations WHERE session_id = $1", sid
        )
        return count >= 2

    await eventually(observed, "the two offline observations")
    # Another flush or two (the periodic retry, a reload) sends nothing again.
    await page.evaluate("window.dispatchEvent(new Event('online'))")
    await page.reload()
    await expect(page.locator("body")).to_have_attribute("data-ready", "yes")
    await expect(page.locator("body")).to_have_attribute("data-outbox", "0")
    session = await db.fetchrow(
        "SELECT patient_ref, dose_mg, dosed_at, created_at FROM treatment_sessions WHERE id = $1",
        sid,
    )
    assert session is not None
    assert (session["patient_ref"], session["dose_mg"]) == (ref, 56)
    assert await db.fetchval("SELECT count(*) FROM treatment_sessions WHERE patient_ref = $1", ref)
    observations = await db.fetch(
        "SELECT vitals FROM session_observations WHERE session_id = $1 ORDER BY created_at", sid
    )
    assert [dict(o["vitals"]) for o in observations] == [
        {"systolic": 132, "diastolic": 84, "pulse": 76},
        {"spo2": 97, "pulse": 72},
    ]
    actions = await db.fetch(
        "SELECT action, count(*) AS n FROM audit_entries WHERE object_id = $1"
        " AND action LIKE 'session.%' AND action <> 'session.read' GROUP BY action",
        sid,
    )
    assert {a["action"]: a["n"] for a in actions} == {
        "session.opened": 1,
        "session.dosed": 1,
        "session.observed": 2,
    }


async def test_a_refused_discharge_names_the_criteria_then_an_override_closes_it(
    context: BrowserContext, db: asyncpg.Connection[Any]
) -> None:
    page = await open_flowsheet(context)
    ref = patient("FSOUT")
    await open_session(page, ref, "122", "76")
    sid = await session_id(page)
    await record_dose(page)
    await expect(page.locator('.outbox-item[data-kind="dose"]')).to_have_attribute(
        "data-state", "sent"
    )
    discharge = step(page, "discharge")
    criteria = page.locator("#criteria")
    await discharge.get_by_label("4 - lethargic response to name").check()
    await yes_no(discharge, "escort", "Yes")
    # Live, before the server is asked.
    await expect(criteria.locator('[data-rule="moaa_s_5"]')).to_have_attribute(
        "data-state", "unmet"
    )
    await expect(criteria.locator('[data-rule="escort"]')).to_have_attribute("data-state", "met")
    await expect(criteria.locator('[data-rule="monitored_120_minutes"]')).to_have_attribute(
        "data-state", "unmet"
    )
    await discharge.get_by_role("button", name="Discharge").click()

    refused = {
        "monitored_120_minutes": "fewer than 120 minutes since the dose",
        "blood_pressure_35_to_50_minutes": "no blood pressure observed between 35 and 50",
        "required_at_discharge": "no blood pressure at discharge",
        "moaa_s_5": "MOAA/S below 5 at discharge",
    }
    for rule, message in refused.items():
        item = criteria.locator(f'[data-rule="{rule}"]')
        await expect(item).to_have_attribute("data-state", "refused")
        await expect(item).to_contain_text(f"Refused by the server: {message}")
    await expect(criteria.locator('[data-rule="escort"]')).to_have_attribute("data-state", "met")
    reason = discharge.get_by_label("Reason for discharging although a criterion is unmet")
    await expect(reason).to_be_visible()
    await check_and_capture(page, "flowsheet-discharge-refused")
    keep_shots("flowsheet-discharge-refused")
    assert (
        await db.fetchval("SELECT discharged_at FROM treatment_sessions WHERE id = $1", sid) is None
    )

    await reason.fill("Patient left against advice; escort present, GP informed.")
    await discharge.get_by_role("button", name="Discharge").click()
    await expect(page.locator("#closed-session")).to_be_visible()
    await expect(page.locator("#closed-text")).to_contain_text(f"{ref} was discharged")
    row = await db.fetchrow("SELECT discharge FROM treatment_sessions WHERE id = $1", sid)
    assert row is not None
    assert row["discharge"]["override_reason"].startswith("Patient left against advice")
    assert {u["rule"] for u in row["discharge"]["unmet"]} == set(refused)
    await check_and_capture(page, "flowsheet-discharged")
    keep_shots("flowsheet-discharged")


async def test_a_step_refused_after_reconnecting_is_shown_and_holds_back_the_later_ones(
    context: BrowserContext, db: asyncpg.Connection[Any]
) -> None:
    """Offline, the hold is not known yet: the dose saved behind the session is refused
    when they are sent, shown in its form, and the observation after it waits (neither
    dropped nor retried) until the dose is corrected; then both go, once, in order."""
    page = await open_flowsheet(context)
    await expect(page.locator("html")).to_have_attribute("data-offline-ready", "yes")
    await context.set_offline(True)
    ref = patient("FSWAIT")
    await open_session(page, ref, "150", "95")
    sid = await session_id(page)
    await record_dose(page)
    await observe(page, systolic="138", diastolic="86")
    await expect(page.locator('.outbox-item[data-state="queued"]')).to_have_count(3)

    await context.set_offline(False)
    await page.evaluate("window.dispatchEvent(new Event('online'))")
    hold = page.locator(f'.action-card[data-rule="{HOLD}"]')
    await expect(hold.get_by_role("heading")).to_have_text(f"Do not dose {ref}")
    await expect(page.locator('.outbox-item[data-kind="dose"]')).to_have_attribute(
        "data-state", "failed"
    )
    waiting = page.locator('.outbox-item[data-kind="observation"]')
    await expect(waiting).to_have_attribute("data-state", "waiting")
    await expect(waiting).to_contain_text("Waits for the refused step above")
    await expect(page.locator("#outbox-summary")).to_contain_text("1 step(s) refused")
    # Retries send neither again.
    await page.evaluate("window.dispatchEvent(new Event('online'))")
    await expect(waiting).to_have_attribute("data-state", "waiting")
    assert (
        await db.fetchval("SELECT count(*) FROM session_observations WHERE session_id = $1", sid)
        == 0
    )

    # After a reload the refusal is still shown, in its form.
    await page.reload()
    await expect(page.locator("body")).to_have_attribute("data-ready", "yes")
    dose = step(page, "dose")
    await expect(dose.locator(".step-state")).to_contain_text("The server refused this step")
    await dose.get_by_label("Reason for dosing despite the hold").fill("Prescriber reviewed.")
    await dose.get_by_role("button", name="Record dose").click()
    await expect(page.locator("body")).to_have_attribute("data-outbox", "0")
    await expect(page.locator('.outbox-item[data-state="sent"]')).to_have_count(3)
    row = await db.fetchrow(
        "SELECT dose_mg, dose_override_reason FROM treatment_sessions WHERE id = $1", sid
    )
    assert row is not None
    assert (row["dose_mg"], row["dose_override_reason"]) == (56, "Prescriber reviewed.")
    observations = await db.fetch(
        "SELECT vitals FROM session_observations WHERE session_id = $1", sid
    )
    assert [dict(o["vitals"]) for o in observations] == [{"systolic": 138, "diastolic": 86}]
    # In order: the corrected dose took the refused one's place, before the observation.
    actions = await db.fetch(
        "SELECT action FROM audit_entries WHERE object_id = $1 AND action LIKE 'session.%'"
        " AND action <> 'session.read' ORDER BY chain, seq",
        sid,
    )
    assert [a["action"] for a in actions] == ["session.opened", "session.dosed", "session.observed"]
    await expect(hold).to_contain_text("Override recorded by you: Prescriber reviewed.")
