"""The pages in a real browser: Debian's Chromium driven by Playwright.

The service runs as a real ``safetyreport serve`` process (the ``serving`` helper), so
cookies, the service worker and the event stream behave as in production; the browser
never downloads anything (``executable_path`` is Debian's Chromium). One server, one
database and one browser serve the whole module (``tests/helpers/browser.py``); each test
has its own browser context (cookies, storage, service worker) and its own patient
references, so tests do not see each other's reports.

These tests are marked ``end_to_end``: CI runs them once, in its embedded-PostgreSQL
run, since what they check does not depend on which PostgreSQL serves the service and
they are among the slowest.

Screenshots of every page at 1024x768 and 768x1024 go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from playwright.async_api import Browser, BrowserContext, Page, Route, expect

from tests.helpers.browser import (
    AUDITOR,
    BROWSER_MARKS,
    NURSE,
    OFFICER,
    OTHER_NURSE,
    RANK,
    add_staff,
    api_report,
    browser,
    check_and_capture,
    choose_kind,
    context,
    count_reports,
    db,
    expect_sent,
    fill_blood_pressure,
    fill_dissociation,
    fill_misuse,
    form,
    patient,
    screenshot,
    served,
    sign_in,
    sign_in_on,
    submit,
    watch,
    web_database,
)
from tests.helpers.processes import ServeProcess
from tests.helpers.reports import bp_report, stock_report
from tests.helpers.waiting import eventually
from tests.helpers.world import PASSWORD

pytestmark = BROWSER_MARKS
# The module's fixtures, imported from the helper (pytest finds them by name here).
__all__ = ["browser", "context", "db", "served", "web_database"]

# --- the nurse -------------------------------------------------------------------------


async def test_nurse_submits_each_kind_and_sees_the_servers_field_errors(
    context: BrowserContext, db: asyncpg.Connection[Any]
) -> None:
    page = await sign_in(context, NURSE)
    await expect(page.get_by_role("heading", name="Report a safety event")).to_be_visible()
    # Her clinic is preselected.
    await expect(form(page, "blood_pressure").get_by_label("Clinic", exact=True)).to_have_value(
        "C1"
    )

    bp, dissociation, misuse = patient("BP"), patient("DS"), patient("MC")
    await fill_blood_pressure(page, bp, "150", "92")
    # Local time on the tablet; the page sends it with its UTC offset.
    await form(page, "blood_pressure").get_by_label("When it happened").fill("2026-01-15T10:30")
    await submit(page, "blood_pressure")
    await expect_sent(page, "blood_pressure")
    # The form is ready for the next report.
    await expect(form(page, "blood_pressure").get_by_label("Patient reference")).to_have_value("")
    await fill_dissociation(page, dissociation)
    await submit(page, "dissociation")
    await expect_sent(page, "dissociation")
    await fill_misuse(page, misuse)
    await submit(page, "misuse_concern")
    await expect_sent(page, "misuse_concern")

    rows = await db.fetch(
        "SELECT r.kind, r.patient_ref, u.username FROM reports r JOIN users u"
        " ON u.id = r.created_by WHERE r.patient_ref = ANY($1) ORDER BY r.kind",
        [bp, dissociation, misuse],
    )
    occurred = await db.fetchval("SELECT occurred_at FROM reports WHERE patient_ref = $1", bp)
    assert occurred == datetime(2026, 1, 15, 9, 30, tzinfo=UTC)
    assert [tuple(r) for r in rows] == [
        ("blood_pressure", bp, NURSE),
        ("dissociation", dissociation, NURSE),
        ("misuse_concern", misuse, NURSE),
    ]
    # The recent list shows them without a reload.
    for ref in (bp, dissociation, misuse):
        await expect(page.locator("#recent-list")).to_contain_text(ref)

    # A reading the browser cannot judge (systolic below diastolic) goes to the server,
    # whose 422 appears beside the field; the values stay for her to correct.
    bad = patient("BAD")
    await fill_blood_pressure(page, bad, "120", "130")
    await submit(page, "blood_pressure")
    systolic_error = page.locator("#blood_pressure-systolic-error")
    await expect(systolic_error).to_have_text("systolic must exceed diastolic")
    await expect(form(page, "blood_pressure").get_by_label("Systolic (mmHg)")).to_have_attribute(
        "aria-invalid", "true"
    )
    await expect(form(page, "blood_pressure").locator(".error-summary")).to_be_visible()
    await expect(page.locator('.outbox-item[data-state="failed"]')).to_have_count(1)
    assert await count_reports(db, bad) == 0

    # Out of range: the browser says so before anything is sent.
    await form(page, "blood_pressure").get_by_label("Systolic (mmHg)").fill("400")
    await submit(page, "blood_pressure")
    await expect(systolic_error).to_have_text("Enter a number from 50 to 300.")

    await form(page, "blood_pressure").get_by_label("Systolic (mmHg)").fill("140")
    await submit(page, "blood_pressure")
    await expect_sent(page, "blood_pressure")
    # The corrected report replaced the refused one: one report, nothing left failed.
    await expect(page.locator('.outbox-item[data-state="failed"]')).to_have_count(0)
    assert await count_reports(db, bad) == 1


async def stored_body(db: asyncpg.Connection[Any], report_id: Any) -> dict[str, Any]:
    """The current version's body of a report, as stored."""
    body: dict[str, Any] = await db.fetchval(
        "SELECT body FROM report_versions WHERE report_id = $1 ORDER BY version DESC LIMIT 1",
        report_id,
    )
    return body


async def test_nurse_files_an_adverse_event_with_only_its_categorys_fields(
    context: BrowserContext, db: asyncpg.Connection[Any]
) -> None:
    page = await sign_in(context, NURSE)
    await choose_kind(page, "Other adverse event")
    ae = form(page, "adverse_event")
    cssrs, rescue = (
        ae.locator('[data-field="cssrs"]'),
        ae.locator('[data-field="rescue_medication"]'),
    )
    infusion = ae.locator('[data-field="infusion_minutes"]')
    # No category yet: none of the categories' own fields, nor IV ketamine's infusion time.
    for field in (cssrs, rescue, infusion):
        await expect(field).to_be_hidden()
    await ae.get_by_label("Emergence reaction").check()
    await expect(rescue).to_be_visible()
    # Required for this category: not marked optional.
    await expect(rescue.locator("[data-optional]")).to_be_hidden()
    await expect(cssrs).to_be_hidden()
    await ae.get_by_label("Suicidal thoughts or behaviour").check()
    await expect(rescue).to_be_hidden()
    await expect(cssrs).to_be_visible()

    ref = patient("AE")
    await ae.get_by_label("Patient reference").fill(ref)
    await ae.get_by_label("The event in your own words").fill("Said he wished he would not wake up")
    await cssrs.locator('[data-question="q1"]').get_by_label("Yes").check()
    await submit(page, "adverse_event")
    # Half a screener: the browser asks for all six answers before anything is sent.
    await expect(page.locator("#adverse_event-cssrs-error")).to_have_text(
        "Answer all 6 questions, or none."
    )
    for q in ("q2", "q3", "q4", "q5", "q6"):
        await cssrs.locator(f'[data-question="{q}"]').get_by_label("No").check()
    await ae.get_by_label("1 - several days").check()
    await ae.get_by_label("Pulse (/min)").fill("72")
    await ae.get_by_label("Respiratory rate (breaths/min)").fill("14")
    await ae.get_by_label("SpO2 (%)").fill("97")
    # 50 mg of esketamine nasal spray is no dose: the server's 422 shows beside the dose.
    await ae.get_by_label("Dose (mg)").fill("50")
    await submit(page, "adverse_event")
    await expect(page.locator("#adverse_event-dose_mg-error")).to_contain_text("28, 56, 84")
    await expect(ae.get_by_label("Dose (mg)")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator('.outbox-item[data-state="failed"]')).to_have_count(1)

    await ae.get_by_label("Drug", exact=True).select_option("ketamine_iv")
    await expect(infusion).to_be_visible()
    await ae.get_by_label("Dose (mg)").fill("35")
    await ae.get_by_label("Weight (kg)").fill("70")
    await ae.get_by_label("Infusion time (min)").fill("40")
    await check_and_capture(page, "nurse-report-adverse-event-suicidality")
    await submit(page, "adverse_event")
    await expect_sent(page, "adverse_event")
    await expect(page.locator('.outbox-item[data-state="failed"]')).to_have_count(0)

    row = await db.fetchrow("SELECT id, kind FROM reports WHERE patient_ref = $1", ref)
    assert row is not None
    assert row["kind"] == "adverse_event"
    body = await stored_body(db, row["id"])
    answers = {"q1": True, "q2": False, "q3": False, "q4": False, "q5": False, "q6": False}
    assert {k: v for k, v in body.items() if k not in ("occurred_at", "clinic")} == {
        "kind": "adverse_event",
        "patient_ref": ref,
        "outcome": "ongoing",
        "category": "suicidality",
        "verbatim_term": "Said he wished he would not wake up",
        "cssrs": answers,
        "phq9_item9": 1,
        "pulse": 72,
        "respiratory_rate": 14,
        "spo2": 97,
        "drug": "ketamine_iv",
        "dose_mg": 35,
        "weight_kg": 70,
        "infusion_minutes": 40,
    }
    # The report page shows what was filed, the dose per kg with it.
    await page.locator("#recent-list").get_by_role("link", name=re.compile(ref)).click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(f"Other adverse event · {ref}")
    facts = page.locator("dl.facts")
    await expect(facts).to_contain_text("Suicidal thoughts or behaviour")
    await expect(facts).to_contain_text("0.50 mg/kg")
    await expect(facts).to_contain_text("1 - several days")
    await check_and_capture(page, "nurse-report-detail-adverse-event")


async def test_the_time_of_a_report_left_open_is_taken_again_when_touched(
    context: BrowserContext,
) -> None:
    """A form opened long ago does not keep the time it was opened: touched after a few
    idle minutes, "When it happened" is now again, with "n min ago" beside it."""
    await context.clock.install()
    page = await sign_in(context, NURSE)
    bp = form(page, "blood_pressure")
    when = bp.get_by_label("When it happened")
    ago = bp.locator(".time-ago")
    await expect(ago).to_have_text("now")
    opened = await when.input_value()
    await page.clock.fast_forward("10:00")
    await expect(ago).to_have_text("10 min ago")
    assert await when.input_value() == opened
    await bp.get_by_label("Patient reference").click()
    await expect(ago).to_have_text("now")
    assert await when.input_value() != opened
    # A time the nurse typed is hers: it stays, however long the form waits.
    await when.fill("2026-01-20T09:15")
    await page.clock.fast_forward("10:00")
    await bp.get_by_label("Patient reference").click()
    assert await when.input_value() == "2026-01-20T09:15"


async def test_a_nurse_finds_a_patients_reports_and_opens_one_to_correct_it(
    context: BrowserContext, served: ServeProcess
) -> None:
    """Any report of her clinics, however old, found by patient reference."""
    ref = patient("FIND")
    old = await api_report(
        served, bp_report("C1", patient_ref=ref, occurred_at="2025-06-01T09:00:00Z")
    )
    await api_report(served, bp_report("C1", patient_ref=patient("OTHER")))
    page = await sign_in(context, NURSE)
    finder = page.get_by_role("search", name="Find the reports of a patient")
    await finder.get_by_role("textbox").fill("not a reference!")
    await finder.get_by_role("button", name="Find").click()
    await expect(page.locator("#find-patient-error")).to_be_visible()
    await finder.get_by_role("textbox").fill(ref)
    await finder.get_by_role("button", name="Find").click()
    await expect(page.locator("#recent-heading")).to_have_text(f"Reports of patient {ref}")
    found = page.locator("#recent-list li")
    await expect(found).to_have_count(1)
    await expect(found).to_contain_text(ref)
    await check_and_capture(page, "nurse-report-find-patient")
    await found.get_by_role("link").click()
    await expect(page).to_have_url(re.compile(f"/reports/{old['id']}$"))
    await expect(page.get_by_role("button", name="Save amendment")).to_be_visible()
    await page.go_back()
    await finder.get_by_role("textbox").fill(patient("NOBODY"))
    await finder.get_by_role("button", name="Find").click()
    await expect(page.locator("#recent-list")).to_contain_text("No report of patient")
    await page.get_by_role("button", name="Show recent").click()
    await expect(page.locator("#recent-heading")).to_have_text(re.compile("Recent reports"))


async def test_an_officer_resolves_a_theft_with_its_dea_details(
    context: BrowserContext, served: ServeProcess, db: asyncpg.Connection[Any]
) -> None:
    """A theft alert is resolved with the date the DEA was notified and the Form 106
    number (or why it was not reportable): the page asks for them and shows them."""
    lot = f"LOT-{uuid.uuid4().hex[:6].upper()}"
    report = await api_report(served, stock_report("C1", lot=lot))
    alert_id = await db.fetchval(
        "SELECT alert_id FROM alert_reports WHERE report_id = $1::uuid", report["id"]
    )
    page = await sign_in(context, OFFICER)
    await page.goto(f"/alerts/{alert_id}")
    resolve = page.locator('form[data-action="resolve"]')
    await resolve.get_by_label("Reason for resolving").fill("Reported to the DEA.")
    await resolve.get_by_role("button", name="Resolve").click()
    await expect(page.locator("#resolve-dea-notified-error")).to_be_visible()
    await check_and_capture(page, "officer-alert-detail-dea")
    await resolve.get_by_label("Date the DEA was notified").fill("2026-01-16")
    await resolve.get_by_label("Form 106 number").fill("F106-2026-0042")
    await resolve.get_by_role("button", name="Resolve").click()
    await expect(page.locator(".status-chip")).to_have_text("Resolved")
    await expect(page.locator(".facts")).to_contain_text("Form 106 number F106-2026-0042")


async def test_the_servers_errors_speak_the_forms_words(
    context: BrowserContext, db: asyncpg.Connection[Any]
) -> None:
    """A 422 names fields and values as the API does (``ketamine_iv``); the form shows
    them as its own labels."""
    page = await sign_in(context, NURSE)
    ref = patient("WORDS")
    await fill_dissociation(page, ref)
    dissociation = form(page, "dissociation")
    await dissociation.get_by_label("Drug", exact=True).select_option("ketamine_iv")
    await dissociation.get_by_label("Dose (mg)").fill("35")
    await submit(page, "dissociation")
    error = page.locator("#dissociation-weight_kg-error")
    await expect(error).to_have_text("required with a dose of “Ketamine IV” (mg/kg)")
    summary = dissociation.locator(".error-summary")
    await expect(summary).to_contain_text("Weight (kg): required with a dose of “Ketamine IV”")
    await expect(summary).not_to_contain_text("ketamine_iv")
    await dissociation.get_by_label("Weight (kg)").fill("70")
    await submit(page, "dissociation")
    await expect_sent(page, "dissociation")
    stored = await db.fetchval("SELECT count(*) FROM reports WHERE patient_ref = $1", ref)
    assert stored == 1


async def test_nurse_files_a_stock_incident_without_a_patient(
    context: BrowserContext, db: asyncpg.Connection[Any]
) -> None:
    page = await sign_in(context, NURSE)
    # A new misuse concern is about a patient: stock types are not offered there.
    await choose_kind(page, "Misuse concern")
    concern = form(page, "misuse_concern").get_by_label("Concern", exact=True)
    assert await concern.locator("option[value=theft]").count() == 0
    await expect(form(page, "misuse_concern").get_by_label("Expected quantity")).to_be_hidden()

    await choose_kind(page, "Stock incident")
    stock = form(page, "stock_incident")
    for label in ("Patient reference", "Outcome", "Serious because of", "When it happened"):
        await expect(stock.get_by_text(label, exact=True)).to_have_count(0)
    await stock.get_by_label("Theft", exact=True).check()
    await stock.get_by_label("What happened").fill("Two vials missing from the locked cabinet.")
    # Theft needs the quantities: required now, and the browser says so.
    await expect(stock.locator('[data-field="expected_quantity"] [data-optional]')).to_be_hidden()
    await submit(page, "stock_incident")
    await expect(page.locator("#stock_incident-expected_quantity-error")).to_have_text(
        "This is required."
    )
    await stock.get_by_label("When it was discovered").fill("2026-01-20T18:45")
    await stock.get_by_label("Drug", exact=True).select_option("ketamine_iv")
    await stock.get_by_label("Expected quantity").fill("10")
    await stock.get_by_label("Actual quantity").fill("8")
    await stock.get_by_label("ml", exact=True).check()
    lot = f"LOT-{uuid.uuid4().hex[:6].upper()}"
    await stock.get_by_label("Lot number").fill(lot)
    await check_and_capture(page, "nurse-report-stock-incident")
    await submit(page, "stock_incident")
    await expect_sent(page, "stock_incident")

    row = await db.fetchrow(
        "SELECT r.id, r.kind, r.patient_ref, r.occurred_at FROM reports r"
        " JOIN report_versions v ON v.report_id = r.id WHERE v.body->>'lot' = $1",
        lot,
    )
    assert row is not None
    assert (row["kind"], row["patient_ref"]) == ("stock_incident", None)
    assert row["occurred_at"] == datetime(2026, 1, 20, 17, 45, tzinfo=UTC)
    body = await stored_body(db, row["id"])
    assert body == {
        "kind": "stock_incident",
        "clinic": "C1",
        "drug": "ketamine_iv",
        "incident_type": "theft",
        "discovered_at": "2026-01-20T17:45:00Z",
        "description": "Two vials missing from the locked cabinet.",
        "expected_quantity": 10,
        "actual_quantity": 8,
        "unit": "ml",
        "lot": lot,
    }
    link = page.locator("#recent-list li", has_text="expected 10")
    await expect(link.first).to_contain_text("Stock incident")
    await page.goto(f"/reports/{row['id']}")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Stock incident · Theft")
    await check_and_capture(page, "nurse-report-detail-stock-incident")


async def test_reports_made_offline_arrive_exactly_once_when_back_online(
    context: BrowserContext, db: asyncpg.Connection[Any]
) -> None:
    page = await sign_in(context, NURSE)
    # The service worker holds this page and its assets before the network goes.
    await expect(page.locator("html")).to_have_attribute("data-offline-ready", "yes")
    await context.set_offline(True)
    await expect(page.locator("#net-status")).to_contain_text("Offline")

    first, second = patient("OFF"), patient("OFF")
    await fill_blood_pressure(page, first, "146", "88")
    await submit(page, "blood_pressure")
    await expect(form(page, "blood_pressure").locator(".form-status")).to_contain_text(
        "saved on this tablet"
    )
    await fill_dissociation(page, second)
    await submit(page, "dissociation")
    await expect(page.locator('.outbox-item[data-state="queued"]')).to_have_count(2)

    # Reloading without a network: the service worker serves the page, the outbox
    # (IndexedDB) still holds both reports.
    await page.reload()
    await expect(page.get_by_role("heading", name="Report a safety event")).to_be_visible()
    queued = page.locator('.outbox-item[data-state="queued"]')
    await expect(queued).to_have_count(2)
    await expect(queued.nth(0)).to_contain_text(first)
    await expect(queued.nth(1)).to_contain_text(second)
    # A page it has no copy of: the offline page, not the network.
    other = await context.new_page()
    await other.goto("/reports/" + str(uuid.uuid4()))
    await expect(other.get_by_role("heading", name="You are offline")).to_be_visible()
    await other.close()
    assert await count_reports(db, first, second) == 0

    await context.set_offline(False)
    await expect(page.locator("body")).to_have_attribute("data-outbox", "0")
    await expect(page.locator('.outbox-item[data-state="sent"]')).to_have_count(2)
    await expect(page.locator("#outbox-summary")).to_have_text("All reports sent.")

    async def both_arrived() -> bool:
        return await count_reports(db, first, second) >= 2

    await eventually(both_arrived, "the two offline reports")
    # Exactly two: the periodic retry and the online event did not send one twice.
    await page.reload()
    await expect(page.locator("#recent-list")).to_contain_text(second)
    assert await count_reports(db, first, second) == 2


async def test_a_lost_answer_is_retried_with_the_same_key_and_stores_one_report(
    browser: Browser, served: ServeProcess, db: asyncpg.Connection[Any]
) -> None:
    """The server stores the report but the tablet never hears back; its retry (same
    Idempotency-Key) gets the stored answer replayed, and no second report exists."""
    # No service worker here, so every request of the page passes through the route.
    ctx = await browser.new_context(base_url=served.base_url, service_workers="block")
    problems = watch(ctx)
    answers: list[tuple[int, str | None]] = []

    async def lose_the_first_answer(route: Route) -> None:
        response = await route.fetch()  # the server stores the report
        answers.append((response.status, response.headers.get("idempotency-replayed")))
        if len(answers) == 1:
            await route.abort("connectionreset")
        else:
            await route.fulfill(response=response)

    try:
        page = await sign_in(ctx, NURSE)
        await page.route("**/api/v1/reports", lose_the_first_answer)
        ref = patient("LOST")
        await fill_blood_pressure(page, ref, "144", "86")
        await submit(page, "blood_pressure")
        await expect(form(page, "blood_pressure").locator(".form-status")).to_contain_text(
            "saved on this tablet"
        )
        await expect(page.locator('.outbox-item[data-state="queued"]')).to_have_count(1)
        assert await count_reports(db, ref) == 1  # stored, though the tablet does not know
        # What the browser does when the network comes back.
        await page.evaluate("window.dispatchEvent(new Event('online'))")
        await expect(page.locator('.outbox-item[data-state="sent"]')).to_have_count(1)
        await expect(page.locator("body")).to_have_attribute("data-outbox", "0")
        assert answers == [(201, None), (201, "true")]
        assert await count_reports(db, ref) == 1
    finally:
        await ctx.close()
    assert problems == [], problems


async def test_a_form_typed_in_before_its_script_arrives_loses_nothing(
    browser: Browser, served: ServeProcess, db: asyncpg.Connection[Any]
) -> None:
    """On bad Wi-Fi the page can show before report.js has run. The form stays disabled
    until the script has opened it, so nothing typed is wiped by the opening and no
    submit bypasses the outbox (CI once saw a test type into a form the script then reset)."""
    ctx = await browser.new_context(base_url=served.base_url, service_workers="block")
    problems = watch(ctx)
    script_may_arrive = asyncio.Event()

    async def slow_script(route: Route) -> None:
        await script_may_arrive.wait()
        await route.continue_()

    try:
        page = await sign_in(ctx, NURSE)
        await ctx.route("**/static/js/report.js*", slow_script)
        # Not "domcontentloaded": that waits for the module script held back here.
        await page.goto("/report", wait_until="commit")
        submit_button = form(page, "blood_pressure").get_by_role("button", name="Submit report")
        await expect(submit_button).to_be_disabled()
        await expect(form(page, "blood_pressure").get_by_label("Systolic (mmHg)")).to_be_disabled()
        script_may_arrive.set()
        ref = patient("SLOW")
        await fill_blood_pressure(page, ref, "150", "90")  # waits for the form to open
        await submit(page, "blood_pressure")
        await expect_sent(page, "blood_pressure")
        assert await count_reports(db, ref) == 1
    finally:
        script_may_arrive.set()
        await ctx.close()
    assert problems == [], problems


async def test_nurse_amends_a_report_with_a_reason(
    context: BrowserContext, served: ServeProcess, db: asyncpg.Connection[Any]
) -> None:
    ref = patient("AM")
    created = await api_report(served, bp_report("C1", patient_ref=ref, systolic=150))
    page = await sign_in(context, NURSE)
    await page.locator("#recent-list").get_by_role("link", name=re.compile(ref)).click()
    await expect(page.get_by_role("heading", name=re.compile(ref))).to_be_visible()
    amend = page.locator("#amend-form")
    await amend.get_by_label("Systolic (mmHg)").fill("158")
    await amend.get_by_role("button", name="Save amendment").click()
    # No reason: refused in the browser.
    await expect(page.locator("#amend-reason-error")).to_have_text("This is required.")
    await amend.get_by_label("Reason for the change").fill("Misread the monitor")
    await amend.get_by_role("button", name="Save amendment").click()
    await expect(page.locator(".history")).to_contain_text("Misread the monitor")
    await expect(page.locator(".meta").first).to_contain_text("version 2")
    rows = await db.fetch(
        "SELECT version, reason, body->>'systolic' AS systolic FROM report_versions"
        " WHERE report_id = $1 ORDER BY version",
        uuid.UUID(created["id"]),
    )
    assert [tuple(r) for r in rows] == [(1, None, "150"), (2, "Misread the monitor", "158")]


# --- the safety officer ------------------------------------------------------------------


async def test_officer_sees_a_new_alert_live_and_acknowledges_and_resolves_it(
    context: BrowserContext, served: ServeProcess, db: asyncpg.Connection[Any]
) -> None:
    page = await sign_in(context, OFFICER)
    await expect(page.locator("#stream-status")).to_have_attribute("data-state", "live")
    # A marker that a reload would wipe.
    await page.evaluate("window.__notReloaded = true")

    ref = patient("LIVE")
    # Severe hypertension with a target-organ symptom: a hypertensive emergency, critical.
    crisis = bp_report("C1", patient_ref=ref, systolic=185, diastolic=112, symptoms=["chest_pain"])
    await api_report(served, crisis)
    card = page.locator("section.alert-group", has_text=ref).locator("li.alert-row")
    await expect(card).to_have_count(1)
    assert await page.evaluate("window.__notReloaded === true")
    await expect(card.locator(".sev-tag")).to_have_text("◆ critical")
    await expect(card.locator(".time-left")).to_contain_text("left")
    # Each group at the highest severity of its alerts.
    for group in await page.locator("section.alert-group").all():
        severities = await group.locator("li.alert-row").evaluate_all(
            "(rows) => rows.map((r) => r.dataset.severity)"
        )
        top = max(severities, key=lambda s: RANK[s])
        assert await group.get_attribute("data-severity") == top, severities

    await card.get_by_role("button", name="Acknowledge").click()
    await expect(card).to_have_attribute("data-status", "acknowledged")
    await expect(card.locator(".assigned")).to_contain_text(f"Acknowledged by {OFFICER}")

    await card.get_by_role("button", name="Resolve…").click()
    await card.get_by_role("button", name="Resolve alert").click()
    await expect(card.locator("[data-field='reason'] .error")).to_have_text(
        "Say why the alert is resolved."
    )
    await card.get_by_label("Reason for resolving").fill("Rechecked: 150/90, physician informed")
    await card.get_by_role("button", name="Resolve alert").click()
    # Resolved alerts leave the queue of unresolved ones.
    await expect(
        page.locator("section.alert-group", has_text=ref).locator("li.alert-row")
    ).to_have_count(0)
    assert await page.evaluate("window.__notReloaded === true")

    row = await db.fetchrow(
        "SELECT a.status, a.resolution_reason, ack.username AS acknowledged_by FROM alerts a"
        " JOIN users ack ON ack.id = a.acknowledged_by WHERE a.group_key = $1",
        ref,
    )
    assert row is not None
    assert tuple(row) == ("resolved", "Rechecked: 150/90, physician informed", OFFICER)

    # The detail page: its report and history; notes, reopening and assigning.
    await page.get_by_label("Show").select_option("resolved")
    resolved = page.locator("section.alert-group", has_text=ref).locator("li.alert-row")
    await resolved.locator("a.rule-link").click()
    history = page.locator(".history")
    await expect(history).to_contain_text("Acknowledged by olga")
    await expect(history).to_contain_text("Rechecked: 150/90")
    await expect(page.get_by_role("link", name=re.compile(ref))).to_be_visible()
    await page.get_by_label("Add a note").fill("Patient called back, stable")
    await page.get_by_role("button", name="Add note").click()
    await expect(history).to_contain_text("Patient called back, stable")
    await page.get_by_label("Reason for reopening").fill("BP up again at discharge")
    await page.get_by_role("button", name="Reopen").click()
    await expect(page.locator(".status-chip")).to_have_text("Open")
    await page.get_by_label("Assign to", exact=True).select_option(OFFICER)
    await page.get_by_role("button", name="Assign").click()
    await expect(page.locator("dt:text-is('Assigned to') + dd")).to_have_text(OFFICER)
    actions = await db.fetch(
        "SELECT e.action FROM alert_events e JOIN alerts a ON a.id = e.alert_id"
        " WHERE a.group_key = $1 ORDER BY e.id",
        ref,
    )
    assert [r["action"] for r in actions] == [
        "opened",
        "acknowledged",
        "resolved",
        "noted",
        "reopened",
        "assigned",
    ]


# --- the auditor -------------------------------------------------------------------------


async def test_auditor_downloads_an_export_and_sees_it_verified(
    context: BrowserContext, tmp_path: Path
) -> None:
    page = await sign_in(context, AUDITOR)
    await expect(page.locator("#results tr").first).to_be_visible()
    await page.locator("#search-form").get_by_label("Action").fill("auth.login")
    await page.get_by_role("button", name="Search", exact=True).click()
    actions = page.locator("#results tr .action")
    # The newest entry before the search is a login too: wait until no other action shows.
    await expect(actions.filter(has_not_text="auth.login")).to_have_count(0)
    await expect(actions.first).to_have_text("auth.login")
    assert set(await actions.all_inner_texts()) == {"auth.login"}
    await page.locator("#search-form").get_by_role("button", name="Clear filters").click()

    # NDJSON: download, then check the downloaded file.
    async with page.expect_download() as download_info:
        await page.get_by_role("button", name="Download export").click()
    download = await download_info.value
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    assert saved.suffix == ".ndjson"
    await expect(page.locator("#export-result")).to_contain_text("the last line is the manifest")
    await page.get_by_label("Export file to check").set_input_files(saved)
    await page.get_by_role("button", name="Verify file").click()
    verdict = page.locator("#verify-file-result")
    await expect(verdict).to_have_attribute("data-ok", "true")
    await expect(verdict).to_contain_text("Verified")

    # An altered copy is caught.
    altered = tmp_path / "altered.ndjson"
    altered.write_text(saved.read_text().replace(NURSE, "mallory", 1))
    await page.get_by_label("Export file to check").set_input_files(altered)
    await page.get_by_role("button", name="Verify file").click()
    await expect(verdict).to_have_attribute("data-ok", "false")
    await expect(verdict.locator("li").first).to_be_visible()

    # CSV in a zip, checked straight from the download.
    await page.get_by_label("CSV (zip with manifest.json)").check()
    async with page.expect_download() as download_info:
        await page.get_by_role("button", name="Download export").click()
    assert (await download_info.value).suggested_filename.endswith(".zip")
    await page.get_by_role("button", name="Verify this download").click()
    await expect(verdict).to_have_attribute("data-ok", "true")

    await page.get_by_role("button", name="Verify the live audit trail").click()
    await expect(page.locator("#verify-live-result")).to_have_attribute("data-ok", "true")


# --- every page: keyboard, labels, screenshots ---------------------------------------------


async def test_keyboard_sign_in_and_screenshots_of_every_page(
    browser: Browser, served: ServeProcess
) -> None:
    ref = patient("SHOT")
    report = await api_report(served, bp_report("C1", patient_ref=ref, systolic=186))
    ctx = await browser.new_context(
        base_url=served.base_url, viewport={"width": 1024, "height": 768}
    )
    problems = watch(ctx)
    try:
        page = await ctx.new_page()
        await page.goto("/login")
        await check_and_capture(page, "login")
        # Keyboard only: the skip link, the home link, the fields, the button.
        await page.keyboard.press("Tab")
        await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
        await page.keyboard.press("Tab")
        await page.keyboard.press("Tab")
        await expect(page.get_by_label("Username")).to_be_focused()
        await page.keyboard.type(NURSE)
        await page.keyboard.press("Tab")
        await page.keyboard.type("wrong-password-000")
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
        await check_and_capture(page, "login-error")
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_label("Password").press("Enter")
        await expect(page).to_have_url(re.compile(r"/report$"))
        await check_and_capture(page, "nurse-report-blood-pressure")
        await choose_kind(page, "Dissociation or sedation")
        await check_and_capture(page, "nurse-report-dissociation")
        await choose_kind(page, "Misuse concern")
        await form(page, "misuse_concern").get_by_role("button", name="Submit report").click()
        await expect(form(page, "misuse_concern").locator(".error-summary")).to_be_visible()
        await check_and_capture(page, "nurse-report-misuse-errors")
        await page.goto(f"/reports/{report['id']}")
        await check_and_capture(page, "nurse-report-detail")
        await page.goto("/offline")
        await check_and_capture(page, "offline")
        await page.goto("/alerts")
        await check_and_capture(page, "nurse-forbidden")
        await page.get_by_role("button", name="Sign out").click()
        await expect(page).to_have_url(re.compile(r"/login$"))

        await sign_in_on(page, OFFICER)
        await expect(
            page.locator("section.alert-group", has_text=ref).locator("li.alert-row")
        ).to_have_count(1)
        await check_and_capture(page, "officer-alert-queue")
        await (
            page.locator("section.alert-group", has_text=ref)
            .locator("li.alert-row")
            .get_by_role("button", name="Resolve…")
            .click()
        )
        await check_and_capture(page, "officer-alert-queue-resolving")
        await (
            page.locator("section.alert-group", has_text=ref)
            .locator("li.alert-row")
            .locator("a.rule-link")
            .click()
        )
        await expect(page.get_by_role("heading", name="History")).to_be_visible()
        await check_and_capture(page, "officer-alert-detail")
        await page.get_by_role("button", name="Sign out").click()
        # Signing out deletes the kept pages first, then posts the form: wait for it.
        await expect(page).to_have_url(re.compile(r"/login$"))

        await sign_in_on(page, AUDITOR)
        await expect(page.locator("#results tr").first).to_be_visible()
        await page.get_by_role("button", name="Verify the live audit trail").click()
        await expect(page.locator("#verify-live-result")).to_be_visible()
        await check_and_capture(page, "auditor-audit")
    finally:
        await ctx.close()
    assert problems == [], problems


# --- a shared tablet: what stays behind when a session ends (issue 10, item 8) -----------

# Every entry of every cache of the origin, with its body.
_KEPT = """async () => {
  const kept = [];
  for (const name of await caches.keys()) {
    const cache = await caches.open(name);
    for (const request of await cache.keys()) {
      const response = await cache.match(request);
      kept.push({ cache: name, url: request.url, text: await response.text() });
    }
  }
  return kept;
}"""

# The outbox (IndexedDB) as stored: who wrote each entry, for whom, in which state.
_OUTBOX = """() => new Promise((resolve, reject) => {
  const open = indexedDB.open("safetyreport");
  open.onerror = () => reject(open.error);
  open.onsuccess = () => {
    const request = open.result.transaction("outbox").objectStore("outbox").getAll();
    request.onerror = () => reject(request.error);
    request.onsuccess = () => {
      resolve(request.result.map((e) => ({ user: e.user, patient: e.body.patient_ref })));
      open.result.close();
    };
  };
})"""


async def kept_pages(page: Page) -> list[dict[str, str]]:
    kept: list[dict[str, str]] = await page.evaluate(_KEPT)
    return [entry for entry in kept if entry["cache"].startswith("sr-pages-")]


async def kept_text(page: Page) -> str:
    kept: list[dict[str, str]] = await page.evaluate(_KEPT)
    return "\n".join(entry["text"] for entry in kept)


async def sign_out(page: Page) -> None:
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(re.compile(r"/login$"))


async def test_a_shared_tablet_keeps_nothing_of_the_last_user_but_her_unsent_reports(
    context: BrowserContext, db: asyncpg.Connection[Any]
) -> None:
    sent, waiting = patient("SHARED"), patient("SHARED")
    page = await sign_in(context, NURSE)
    await expect(page.locator("html")).to_have_attribute("data-offline-ready", "yes")
    await fill_blood_pressure(page, sent, "151", "93")
    await submit(page, "blood_pressure")
    await expect_sent(page, "blood_pressure")
    await expect(page.locator("#recent-list")).to_contain_text(sent)
    # The page kept for offline use is the shell: the recent list is not in it.
    assert [p["url"] for p in await kept_pages(page)] == [f"{page.url}"]
    assert sent not in await kept_text(page)

    # A second report cannot reach the server (it is down, say) and waits in the outbox.
    async def server_down(route: Route) -> None:
        await route.abort("connectionrefused")

    await context.route("**/api/v1/reports", server_down)
    await fill_blood_pressure(page, waiting, "149", "91")
    await submit(page, "blood_pressure")
    await expect(page.locator('.outbox-item[data-state="queued"]')).to_have_count(1)
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await sign_out(page)
    await context.unroute("**/api/v1/reports", server_down)

    # Signed out: no page of hers is kept; her unsent report is, for her alone.
    assert await kept_pages(page) == []
    assert sent not in await kept_text(page)
    assert waiting not in await kept_text(page)
    assert await page.evaluate(_OUTBOX) == [{"user": NURSE, "patient": waiting}]
    await context.set_offline(True)
    await page.goto("/report")
    await expect(page.get_by_role("heading", name="You are offline")).to_be_visible()
    assert NURSE not in await page.content()
    await context.set_offline(False)

    # Another nurse (another clinic) on the same tablet sees nothing of hers, sends nothing.
    await sign_in_on(page, OTHER_NURSE)
    await expect(page.locator("#recent-list")).to_contain_text("No reports yet.")
    await page.evaluate("window.dispatchEvent(new Event('online'))")  # a flush, now
    await expect(page.locator("#outbox")).to_be_hidden()
    for text in (sent, waiting, NURSE):
        assert text not in await page.content(), text
    assert await count_reports(db, waiting) == 0
    assert await page.evaluate(_OUTBOX) == [{"user": NURSE, "patient": waiting}]
    await sign_out(page)
    assert await count_reports(db, waiting) == 0

    # She signs in again: her report is sent, once.
    await sign_in_on(page, NURSE)
    await expect(page.locator('.outbox-item[data-state="sent"]')).to_have_count(1)
    await expect(page.locator("body")).to_have_attribute("data-outbox", "0")

    async def arrived() -> bool:
        return await count_reports(db, waiting) >= 1

    await eventually(arrived, "the report left on the tablet")
    await page.reload()
    await expect(page.locator("#recent-list")).to_contain_text(waiting)
    assert await count_reports(db, waiting) == 1
    assert await page.evaluate(_OUTBOX) == []


async def test_a_401_forgets_the_kept_pages(
    context: BrowserContext, db: asyncpg.Connection[Any]
) -> None:
    page = await sign_in(context, NURSE)
    await expect(page.locator("html")).to_have_attribute("data-offline-ready", "yes")
    assert len(await kept_pages(page)) == 1
    # The session is revoked elsewhere (an admin, a sign-out on another tab).
    await db.execute("UPDATE sessions SET revoked_at = now() WHERE revoked_at IS NULL")
    status = await page.evaluate(
        "import('/static/js/common.js').then((m) => m.api('GET', '/api/v1/me'))"
        ".then((r) => r.status)"
    )
    assert status == 401
    assert await kept_pages(page) == []


async def test_idle_expiry_forgets_the_kept_pages_and_leaves_the_page(
    context: BrowserContext, db: asyncpg.Connection[Any]
) -> None:
    page = await context.new_page()
    await page.clock.install()
    await sign_in_on(page, NURSE)
    await expect(page.locator("html")).to_have_attribute("data-offline-ready", "yes")
    assert len(await kept_pages(page)) == 1
    # Nobody touched the tablet for longer than the server's idle timeout (30 min).
    await db.execute("UPDATE sessions SET last_seen_at = now() - interval '2 hours'")
    await page.clock.fast_forward("31:00")
    await expect(page).to_have_url(re.compile(r"/login\?next=%2Freport$"))
    assert await kept_pages(page) == []


async def test_the_api_reference_renders_under_the_csp_from_this_origin_alone(
    context: BrowserContext, served: ServeProcess
) -> None:
    page = await context.new_page()
    elsewhere: list[str] = []
    page.on(
        "request",
        lambda request: (
            None if request.url.startswith(served.base_url) else elsewhere.append(request.url)
        ),
    )
    response = await page.goto("/schema")
    assert response is not None
    assert response.status == 200
    assert "script-src 'self'" in (await response.all_headers())["content-security-policy"]
    await expect(page.get_by_role("heading", name=re.compile("API reference"))).to_be_visible()
    operation = page.locator("details.api-op", has_text="/api/v1/reports").first
    await operation.locator("summary").click()
    await expect(operation.get_by_role("heading", name="Responses")).to_be_visible()
    await check_and_capture(page, "api-reference")
    assert elsewhere == []


# A refused entry, as the report page leaves it after a 422.
_PUT_FAILED = """({user, patient}) => new Promise((resolve, reject) => {
  const open = indexedDB.open("safetyreport");
  open.onerror = () => reject(open.error);
  open.onsuccess = () => {
    const tx = open.result.transaction("outbox", "readwrite");
    tx.objectStore("outbox").put({
      key: crypto.randomUUID(), user, kind: "blood_pressure",
      body: { kind: "blood_pressure", patient_ref: patient },
      state: "failed", error: { message: "refused", errors: [{ field: "$", message: "refused" }] },
      createdAt: new Date().toISOString(), attempts: 1,
    });
    tx.oncomplete = () => { open.result.close(); resolve(null); };
    tx.onerror = () => reject(tx.error);
  };
})"""


async def test_an_officer_who_lands_on_the_alerts_has_her_waiting_reports_sent_there(
    context: BrowserContext, db: asyncpg.Connection[Any]
) -> None:
    waiting, others = patient("OFFICER"), patient("OTHER")

    async def server_down(route: Route) -> None:
        await route.abort("connectionrefused")

    async def queue_and_sign_out(page: Page, username: str, patient_ref: str) -> None:
        await sign_in_on(page, username)
        await page.goto("/report")
        await context.route("**/api/v1/reports", server_down)
        await fill_blood_pressure(page, patient_ref, "148", "90")
        await submit(page, "blood_pressure")
        await expect(page.locator('.outbox-item[data-state="queued"]')).to_have_count(1)
        page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await sign_out(page)
        await context.unroute("**/api/v1/reports", server_down)

    # Another nurse, then the officer, leave a report each on the same tablet.
    page = await context.new_page()
    await queue_and_sign_out(page, OTHER_NURSE, others)
    await queue_and_sign_out(page, OFFICER, waiting)
    assert await count_reports(db, waiting, others) == 0
    assert sorted(await page.evaluate(_OUTBOX), key=lambda e: e["user"]) == [
        {"user": OTHER_NURSE, "patient": others},
        {"user": OFFICER, "patient": waiting},
    ]

    # And one of hers the server refused earlier (a 422): it waits for correction.
    refused = patient("REFUSED")
    await page.evaluate(_PUT_FAILED, {"user": OFFICER, "patient": refused})

    # She signs in again and lands on the alerts: her report is sent from there, once.
    posts: list[str] = []

    def note_post(request: Any) -> None:
        if request.method == "POST" and request.url.endswith("/api/v1/reports"):
            posts.append(request.headers.get("idempotency-key", ""))

    page.on("request", note_post)
    await sign_in_on(page, OFFICER)
    await expect(page).to_have_url(re.compile(r"/alerts$"))
    notice = page.locator("#outbox-notice")
    await expect(notice).to_contain_text("1 report(s) you saved on this tablet have been sent.")
    await expect(notice).to_contain_text("1 report(s) were refused by the server")
    await expect(notice.get_by_role("link", name="Open the report form")).to_be_visible()

    async def arrived() -> bool:
        return await count_reports(db, waiting) >= 1

    await eventually(arrived, "the officer's report")
    await screenshot(page, "alerts-outbox-sent")
    left = [{"user": OTHER_NURSE, "patient": others}, {"user": OFFICER, "patient": refused}]
    assert sorted(await page.evaluate(_OUTBOX), key=lambda e: e["user"]) == left

    # Another visit to a page (another send round) sends nothing more, nor the nurse's.
    await page.reload()
    await expect(page).to_have_url(re.compile(r"/alerts$"))
    await page.evaluate("window.dispatchEvent(new Event('online'))")  # a send round, now
    await page.wait_for_timeout(1000)  # time for a POST, if one were (wrongly) made
    await expect(notice).to_contain_text("1 report(s) were refused by the server")
    assert len(posts) == 1, posts
    assert await count_reports(db, waiting) == 1
    assert await count_reports(db, others, refused) == 0
    assert sorted(await page.evaluate(_OUTBOX), key=lambda e: e["user"]) == left


async def test_an_admin_sees_the_sign_in_lock_outs_on_her_alerts_page_an_officer_does_not(
    context: BrowserContext, served: ServeProcess, db: asyncpg.Connection[Any]
) -> None:
    admin, victim = "alma", "vick"
    await add_staff(db, "C1", (admin, "admin"), (victim, "nurse"))
    # Failed sign-ins from many addresses lock the account: an attack, raising an alert.
    async with httpx.AsyncClient(base_url=served.base_url, timeout=10) as http:
        for i in range(20):
            response = await http.post(
                "/api/v1/auth/login",
                json={"username": victim, "password": "wrong-password-123"},
                headers={"X-Forwarded-For": f"203.0.113.{i + 1}"},
            )
            assert response.status_code == 401, response.text

    page = await sign_in(context, admin)
    await expect(page).to_have_url(re.compile(r"/alerts$"))
    panel = page.get_by_role("region", name="Sign-in lock-outs")
    await expect(panel).to_be_visible()
    await expect(panel.get_by_role("alert")).to_contain_text("1 lock-out in the last 24 hours")
    entry = panel.locator('li.lockout[data-scope="account"]')
    await expect(entry).to_have_count(1)
    await expect(entry).to_contain_text(f"Account {victim}: attacked from many addresses")
    await expect(entry).to_contain_text("20 failed sign-ins")
    await expect(entry).to_contain_text(re.compile(r"(locked until|lock ended) \d{4}-"))
    await expect(page.locator("#queue-summary")).not_to_have_text("Loading alerts…")
    await check_and_capture(page, "admin-alert-queue-lockouts")
    await sign_out(page)

    page = await sign_in(context, OFFICER)
    await expect(page).to_have_url(re.compile(r"/alerts$"))
    await expect(page.locator("#queue-summary")).not_to_have_text("Loading alerts…")
    assert await page.locator("#lockouts").count() == 0
    await expect(page.get_by_text("Sign-in lock-outs")).to_have_count(0)
