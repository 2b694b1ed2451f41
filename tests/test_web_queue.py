"""The officer's queue in a real browser: new alerts cannot be missed, a patient's alerts
show together at their highest severity, and the most pressing come first.

Like ``test_web_browser.py``: one served process and database for the module, Debian's
Chromium, a fresh browser context per test and patient references no other test uses.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import asyncpg
import httpx
from playwright.async_api import BrowserContext, Locator, Page, expect

from safetyreport.audit.chain import SYSTEM_CLI
from safetyreport.auth.users import add_user
from tests.helpers.browser import (
    BROWSER_MARKS,
    OFFICER,
    OTHER_NURSE,
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
from tests.helpers.reports import adverse_report, bp_report, stock_report
from tests.helpers.world import PASSWORD

pytestmark = BROWSER_MARKS
# The module's fixtures, imported from the helper (pytest finds them by name here).
__all__ = ["browser", "context", "db", "served", "web_database"]

TITLE = "Alert queue · safetyreport"

# Instead of the browser's notifications (which a headless browser cannot show): one that
# records what would be shown, and whose permission the officer grants by the button.
_FAKE_NOTIFICATIONS = """
window.__notifications = [];
class FakeNotification {
  static permission = "default";
  static async requestPermission() {
    FakeNotification.permission = "granted";
    return "granted";
  }
  constructor(title, options) {
    window.__notifications.push({ title, body: options.body, tag: options.tag });
  }
  addEventListener() {}
  close() {}
}
window.Notification = FakeNotification;
"""


def crisis(ref: str, **more: Any) -> dict[str, Any]:
    """A hypertensive emergency (critical), with whatever else the reading shows."""
    return bp_report(
        "C1", patient_ref=ref, systolic=185, diastolic=112, symptoms=["chest_pain"], **more
    )


async def alerts_of(db: asyncpg.Connection[Any], ref: str) -> dict[str, str]:
    """rule id -> alert id of a patient's alerts."""
    rows = await db.fetch("SELECT rule_id, id::text FROM alerts WHERE group_key = $1", ref)
    return {r["rule_id"]: r["id"] for r in rows}


async def live_queue(context: BrowserContext) -> Page:
    page = await sign_in(context, OFFICER)
    await expect(page.locator("#stream-status")).to_have_attribute("data-state", "live")
    await expect(page.locator("#queue-summary")).not_to_have_text("Loading alerts…")
    return page


def row(page: Page, alert_id: str) -> Locator:
    return page.locator(f"li.alert-row[data-id='{alert_id}']")


async def test_a_new_critical_alert_shows_in_the_bar_and_title_until_acknowledged(
    context: BrowserContext, served: ServeProcess, db: asyncpg.Connection[Any]
) -> None:
    await context.add_init_script(_FAKE_NOTIFICATIONS)
    page = await live_queue(context)
    await expect(page.locator("#new-bar")).to_be_hidden()
    await expect(page).to_have_title(TITLE)
    await page.get_by_role("button", name="Allow notifications").click()
    await expect(page.locator("#notify-status")).to_have_text(
        "Notifications on for critical alerts."
    )
    await page.get_by_label("Sound for new alerts").check()

    ref = patient("NEW")
    await api_report(served, crisis(ref))
    alert_id = (await alerts_of(db, ref))["bp-hypertensive-crisis"]
    bar = page.locator("#new-bar")
    await expect(bar).to_be_visible()
    await expect(bar.get_by_role("heading")).to_have_text("★ 1 new alert")
    link = bar.get_by_role("link")
    await expect(link).to_have_count(1)
    await expect(link).to_contain_text("critical")
    await expect(link).to_contain_text(ref)
    await expect(page).to_have_title(f"(1) {TITLE}")
    await expect(row(page, alert_id)).to_have_class(re.compile(r"\bis-new\b"))
    await expect(row(page, alert_id).locator(".new-tag")).to_be_visible()
    # The notification names severity, rule and clinic, never the patient.
    notes = await page.evaluate("window.__notifications")
    assert len(notes) == 1, notes
    assert notes[0]["title"].startswith("Critical alert: ")
    assert "C1" in notes[0]["body"]
    assert ref not in notes[0]["title"] + notes[0]["body"]
    assert await page.evaluate("localStorage.getItem('safetyreport-queue-sound')") == "on"
    await check_and_capture(page, "officer-queue-new-alert")

    # The link leads to the row; that alone does not make it seen. Nor does a reload.
    await link.click()
    await expect(row(page, alert_id)).to_be_focused()
    await page.reload()
    await expect(page.locator("#new-bar")).to_be_visible()
    await expect(page).to_have_title(f"(1) {TITLE}")

    # Acknowledging it does.
    await row(page, alert_id).get_by_role("button", name="Acknowledge").click()
    await expect(row(page, alert_id)).to_have_attribute("data-status", "acknowledged")
    await expect(page.locator("#new-bar")).to_be_hidden()
    await expect(page).to_have_title(TITLE)
    await expect(row(page, alert_id)).not_to_have_class(re.compile(r"\bis-new\b"))

    # Another, opened: seen too, also after coming back to the queue.
    other = patient("NEW")
    await api_report(served, crisis(other))
    other_id = (await alerts_of(db, other))["bp-hypertensive-crisis"]
    await expect(page).to_have_title(f"(1) {TITLE}")
    await row(page, other_id).locator("a.rule-link").click()
    await expect(page).to_have_url(re.compile(f"/alerts/{other_id}$"))
    await page.go_back()
    await expect(row(page, other_id)).to_be_visible()
    await expect(page.locator("#new-bar")).to_be_hidden()
    await expect(page).to_have_title(TITLE)

    # A third, opened by its address (a link in a page email): seen when back at the queue.
    third = patient("NEW")
    await api_report(served, crisis(third))
    third_id = (await alerts_of(db, third))["bp-hypertensive-crisis"]
    # (A third patient's severe reading may also raise the clinic's BP-cluster pattern.)
    await expect(row(page, third_id)).to_have_class(re.compile(r"\bis-new\b"))
    await page.goto(f"/alerts/{third_id}")
    await page.goto("/alerts")
    await expect(row(page, third_id)).to_be_visible()
    await expect(row(page, third_id)).not_to_have_class(re.compile(r"\bis-new\b"))
    await expect(page.locator(f"#new-bar a[href='#alert-{third_id}']")).to_have_count(0)


async def test_a_renewed_alert_is_new_again(
    context: BrowserContext, served: ServeProcess, db: asyncpg.Connection[Any]
) -> None:
    """An acknowledged critical alert that a new report joins is open again: new again."""
    ref = patient("RENEW")
    await api_report(served, crisis(ref))
    alert_id = (await alerts_of(db, ref))["bp-hypertensive-crisis"]
    page = await live_queue(context)
    await row(page, alert_id).get_by_role("button", name="Acknowledge").click()
    await expect(row(page, alert_id)).to_have_attribute("data-status", "acknowledged")
    await expect(page.locator("#new-bar")).to_be_hidden()

    await api_report(served, crisis(ref, occurred_at="2026-01-15T10:50:00+01:00"))
    await expect(row(page, alert_id)).to_have_attribute("data-status", "open")
    await expect(page.locator(f"#new-bar a[href='#alert-{alert_id}']")).to_be_visible()
    await expect(page).to_have_title(re.compile(r"^\(\d+\) "))


async def test_a_patients_alerts_show_together_at_their_highest_severity(
    context: BrowserContext, served: ServeProcess, db: asyncpg.Connection[Any]
) -> None:
    ref = patient("GROUP")
    # Two high alerts (heart rate, breathing), then a fall (high), then the crisis (critical).
    await api_report(served, bp_report("C1", patient_ref=ref, pulse=135, spo2=92))
    await api_report(served, adverse_report("C1", patient_ref=ref))
    await api_report(served, crisis(ref, occurred_at="2026-01-15T10:45:00+01:00"))
    alerts = await alerts_of(db, ref)
    assert {"heart-rate", "breathing-impaired", "fall", "bp-hypertensive-crisis"} <= set(alerts)

    page = await live_queue(context)
    group = page.locator(
        "section.alert-group", has=page.get_by_role("heading", name=re.compile(ref))
    )
    await expect(group).to_have_count(1)
    await expect(group).to_have_attribute("data-severity", "critical")
    await expect(group.locator(".group-head .sev-tag")).to_have_text("◆ critical")
    await expect(group.locator("li.alert-row")).to_have_count(len(alerts))
    for alert_id in alerts.values():
        await expect(group.locator(f"li.alert-row[data-id='{alert_id}']")).to_have_count(1)
    # Each row: its severity (shape and word), guidance and the time left.
    crisis_row = row(page, alerts["bp-hypertensive-crisis"])
    await expect(crisis_row.locator(".sev-tag")).to_have_text("◆ critical")
    await expect(crisis_row.locator(".guidance")).not_to_be_empty()
    await expect(crisis_row.locator(".time-left")).to_have_text(re.compile(r"^\d+ (s|min) left$"))
    # The values that raised each alert, as the service describes them.
    await expect(row(page, alerts["heart-rate"]).locator(".triggered")).to_contain_text(
        "pulse 135/min"
    )
    await expect(crisis_row.locator(".triggered")).to_contain_text("BP 185/112 mmHg")
    fall_row = row(page, alerts["fall"])
    await expect(fall_row.locator(".sev-tag")).to_have_text("● high")
    await expect(fall_row.locator(".time-left")).to_have_text(re.compile(r" left$"))
    # Counts per severity at the top.
    await expect(page.locator("#severity-counts li[data-severity='critical'] .count")).to_have_text(
        re.compile(r"^[1-9]\d*$")
    )
    await check_and_capture(page, "officer-queue-groups")


async def test_the_most_pressing_come_first(
    context: BrowserContext, served: ServeProcess, db: asyncpg.Connection[Any]
) -> None:
    """Groups and rows in the order of the time left; rows without a deadline last."""
    refs = [patient("SORT") for _ in range(3)]
    for ref in refs:
        await api_report(served, bp_report("C1", patient_ref=ref, pulse=135, spo2=92))
    minutes = {refs[0]: 50, refs[1]: 5, refs[2]: 20}
    for ref, left in minutes.items():
        await db.execute(
            "UPDATE alerts SET ack_deadline = now() + make_interval(mins => $2)"
            " WHERE group_key = $1 AND rule_id = 'heart-rate'",
            ref,
            left,
        )
    # The first patient's breathing alert: acknowledged, so nothing is due.
    await db.execute(
        "UPDATE alerts SET status = 'acknowledged', acknowledged_at = now(),"
        " revision = revision + 1 WHERE group_key = $1 AND rule_id = 'breathing-impaired'",
        refs[0],
    )
    for ref in refs[1:]:
        await db.execute(
            "UPDATE alerts SET ack_deadline = now() + interval '2 hours'"
            " WHERE group_key = $1 AND rule_id = 'breathing-impaired'",
            ref,
        )

    page = await live_queue(context)
    order: list[str] = await page.evaluate(
        """(refs) => [...document.querySelectorAll("section.alert-group")]
             .map((g) => refs.find((r) => g.querySelector(".group-name").textContent.includes(r)))
             .filter(Boolean)""",
        refs,
    )
    assert order == [refs[1], refs[2], refs[0]], order
    first = page.locator("section.alert-group", has_text=refs[0])
    rules = await first.locator("li.alert-row").evaluate_all(
        "(rows) => rows.map((r) => r.querySelector('.rule-link').textContent)"
    )
    alerts = await alerts_of(db, refs[0])
    assert len(rules) == 2
    await expect(row(page, alerts["heart-rate"]).locator(".time-left")).to_have_text(
        re.compile(r"^(49|50) min left$")
    )
    await expect(row(page, alerts["breathing-impaired"]).locator(".time-left")).to_have_text(
        "no deadline"
    )
    ids = await first.locator("li.alert-row").evaluate_all(
        "(rows) => rows.map((r) => r.dataset.id)"
    )
    assert ids == [alerts["heart-rate"], alerts["breathing-impaired"]], ids


async def test_the_queue_at_tablet_portrait_width_stacks_the_row(
    context: BrowserContext, served: ServeProcess, db: asyncpg.Connection[Any]
) -> None:
    ref = patient("NARROW")
    await api_report(served, crisis(ref))
    alert_id = (await alerts_of(db, ref))["bp-hypertensive-crisis"]
    page = await live_queue(context)
    await page.set_viewport_size({"width": 768, "height": 1024})
    target = row(page, alert_id)
    box = await target.bounding_box()
    actions = await target.locator(".alert-actions").bounding_box()
    assert box is not None
    assert actions is not None
    # Nothing sticks out of the row, nor out of the page.
    assert actions["x"] + actions["width"] <= box["x"] + box["width"] + 1
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await target.get_by_role("button", name="Resolve…").click()
    await expect(target.get_by_label("Reason for resolving")).to_be_focused()


async def test_a_theft_is_resolved_from_the_queue_with_its_dea_details(
    context: BrowserContext, served: ServeProcess, db: asyncpg.Connection[Any]
) -> None:
    """The row's resolve form asks a theft for the DEA notice date and Form 106 number."""
    lot = f"LOT-{patient('Q')}"
    report = await api_report(served, stock_report("C1", lot=lot))
    alert_id = await db.fetchval(
        "SELECT alert_id::text FROM alert_reports WHERE report_id = $1::uuid", report["id"]
    )
    page = await live_queue(context)
    target = row(page, alert_id)
    group = page.locator("section.alert-group", has=target)
    await expect(group.locator(".group-name")).to_have_text("Clinic C1: stock and clinic-wide")
    await target.get_by_role("button", name="Acknowledge").click()
    await expect(target).to_have_attribute("data-status", "acknowledged")
    # Acknowledged, the DEA written notice is what is due.
    await expect(target.locator(".time-what")).to_contain_text("DEA notice by")
    await target.get_by_role("button", name="Resolve…").click()
    await target.get_by_label("Reason for resolving").fill("Reported to the DEA.")
    await target.get_by_role("button", name="Resolve alert").click()
    await expect(target.locator("[data-field='dea_notified_on'] .error")).to_be_visible()
    await check_and_capture(page, "officer-queue-resolve-theft")
    await target.get_by_label("Date the DEA was notified").fill("2026-01-16")
    await target.get_by_label("Form 106 number").fill("F106-2026-0077")
    await target.get_by_role("button", name="Resolve alert").click()
    await expect(target).to_have_count(0)
    row_ = await db.fetchrow(
        "SELECT status, dea_form106_number FROM alerts WHERE id = $1::uuid", alert_id
    )
    assert row_ is not None
    assert tuple(row_) == ("resolved", "F106-2026-0077")


async def test_the_clinic_filter_and_a_new_alert_of_a_clinic_filtered_out(
    context: BrowserContext, served: ServeProcess, db: asyncpg.Connection[Any]
) -> None:
    """An officer of two clinics filters to one; a new alert of the other is still in
    the bar, and its link shows every clinic again and leads to its row."""
    officer = f"otto{patient('x')[-6:].lower()}"
    await add_user(
        db,
        username=officer,
        password=PASSWORD,
        role="safety_officer",
        clinics=["C1", "C2"],
        all_clinics=False,
        actor=SYSTEM_CLI,
    )
    here, there = patient("HERE"), patient("THERE")
    await api_report(served, crisis(here))
    token = await api_token(served, OTHER_NURSE)
    async with httpx.AsyncClient(base_url=served.base_url, timeout=10) as http:
        response = await http.post(
            "/api/v1/reports",
            json=bp_report("C2", patient_ref=there, systolic=185, symptoms=["chest_pain"]),
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())},
        )
        assert response.status_code == 201, response.text

    page = await sign_in(context, officer)
    await expect(page.locator("#stream-status")).to_have_attribute("data-state", "live")
    groups = page.locator("section.alert-group")
    await expect(groups.filter(has_text=here)).to_have_count(1)
    await page.get_by_label("Clinic", exact=True).select_option("C2")
    await expect(groups.filter(has_text=here)).to_have_count(0)
    await expect(groups.filter(has_text=there)).to_have_count(1)

    late = patient("LATE")
    await api_report(served, crisis(late))
    late_id = (await alerts_of(db, late))["bp-hypertensive-crisis"]
    await expect(row(page, late_id)).to_have_count(0)
    await page.locator("#new-bar").get_by_role("link", name=re.compile(late)).click()
    await expect(page.get_by_label("Clinic", exact=True)).to_have_value("")
    await expect(row(page, late_id)).to_be_focused()
    await expect(groups.filter(has_text=here)).to_have_count(1)
