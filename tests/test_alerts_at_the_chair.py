"""At the chair: the answer to a report carries its alerts with what to do now; a new
report that joins a critical or urgent alert renews it (open again, a new deadline, on
the stream, notified); rules carry their guidance and their own acknowledgement minutes;
a pre-dose hold is overridden with a reason."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from safetyreport.alerts.escalation import escalate_due
from safetyreport.settings import Settings
from tests.helpers.reports import amend, audit_rows, bp_report, create_report, post_report
from tests.helpers.world import World

Headers = dict[str, str]
ALERTS = "/api/v1/alerts"
RULES = "/api/v1/rules"
HOLD = "bp-pre-dose-hold"
CRISIS = "bp-hypertensive-crisis"
GRADE_3 = "bp-ctcae-grade-3"
WEBHOOK = "http://127.0.0.1:9/hook"
RAISED_FIELDS = {"id", "rule", "severity", "title", "status", "guidance", "hold", "override_reason"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A webhook to notify (its outbox rows are what is checked; nothing listens) and the
    app's own escalation loop asleep, so deadlines change only when a test says so."""
    alerts = replace(
        settings.alerts,
        escalation_interval=timedelta(hours=1),
        webhook_urls=(WEBHOOK,),
        webhook_secret="at-the-chair-secret-of-32-bytes-or-more",
    )
    return replace(settings, alerts=alerts)


@pytest.fixture
async def users(world: World) -> dict[str, Headers]:
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("nina", "nurse", ["C1"])
    await world.user("nora", "nurse", ["C2"])
    await world.user("olga", "safety_officer", ["C1"])
    await world.user("aude", "auditor", ["C1"])
    await world.user("adam", "admin", [], all_clinics=True)
    return {name: await world.login(name) for name in ("nina", "nora", "olga", "aude", "adam")}


def crisis(patient: str = "PT-1", phase: str = "post_dose") -> dict[str, Any]:
    """A hypertensive emergency: 185/100 with chest pain."""
    return bp_report(
        patient_ref=patient, phase=phase, systolic=185, diastolic=100, symptoms=["chest_pain"]
    )


def hold(patient: str = "PT-1") -> dict[str, Any]:
    """A pre-dose reading above the hold criteria, and nothing else."""
    return bp_report(patient_ref=patient, phase="pre_dose", systolic=150, diastolic=95)


async def alert_row(db: asyncpg.Connection[Any], alert_id: str) -> asyncpg.Record:
    row: asyncpg.Record | None = await db.fetchrow(
        "SELECT * FROM alerts WHERE id = $1::uuid", alert_id
    )
    assert row is not None
    return row


async def events(db: asyncpg.Connection[Any], alert_id: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT action, actor, details FROM alert_events WHERE alert_id = $1::uuid ORDER BY id",
        alert_id,
    )


async def notified(db: asyncpg.Connection[Any], alert_id: str) -> list[str]:
    rows = await db.fetch(
        "SELECT event FROM notifications WHERE alert_id = $1::uuid ORDER BY created_at, event",
        alert_id,
    )
    return [r["event"] for r in rows]


def by_rule(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["rule"]: a for a in answer["alerts"]}


# --- the answer to a report ----------------------------------------------------------


async def test_the_answer_and_its_replay_carry_the_alerts(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    body = crisis(phase="pre_dose")
    first = await post_report(client, users["nina"], body, key="chair-key-1")
    assert first.status_code == 201, first.text
    answer = first.json()
    alerts = answer["alerts"]
    assert {a["rule"] for a in alerts} == {CRISIS, HOLD}
    # Most severe first.
    assert [a["rule"] for a in alerts] == [CRISIS, HOLD]
    linked = await db.fetch(
        "SELECT a.id, a.rule_id, a.severity, a.status, r.name, r.guidance"
        " FROM alerts a JOIN alert_rules r ON r.id = a.rule_id"
        " JOIN alert_reports ar ON ar.alert_id = a.id WHERE ar.report_id = $1::uuid",
        answer["id"],
    )
    assert {
        (str(r["id"]), r["rule_id"], r["severity"], r["name"], r["status"], r["guidance"])
        for r in linked
    } == {
        (a["id"], a["rule"], a["severity"], a["title"], a["status"], a["guidance"]) for a in alerts
    }
    for alert in alerts:
        assert set(alert) == RAISED_FIELDS
    assert by_rule(answer)[HOLD]["guidance"].startswith("Do not dose.")
    assert by_rule(answer)[CRISIS]["severity"] == "critical"
    # The hold says so, for the tablet's "do not dose"; nothing is overridden yet.
    assert {a["rule"]: (a["hold"], a["override_reason"]) for a in alerts} == {
        HOLD: (True, None),
        CRISIS: (False, None),
    }

    replayed = await post_report(client, users["nina"], body, key="chair-key-1")
    assert replayed.status_code == 201, replayed.text
    assert replayed.headers.get("Idempotency-Replayed") == "true"
    assert replayed.json()["alerts"] == alerts
    assert replayed.json() == answer

    # The report read back does not carry them: they belong to the submission.
    read = await client.get(f"/api/v1/reports/{answer['id']}", headers=users["nina"])
    assert "alerts" not in read.json()


async def test_a_report_that_raises_nothing_answers_an_empty_list(
    client: AsyncTestClient[Any], users: dict[str, Headers]
) -> None:
    answer = await create_report(client, users["nina"], bp_report(systolic=120, diastolic=80))
    assert answer["alerts"] == []


async def test_the_amendment_answer_carries_the_alerts(
    client: AsyncTestClient[Any], users: dict[str, Headers]
) -> None:
    report = await create_report(client, users["nina"], bp_report(systolic=120, diastolic=80))
    response = await amend(
        client,
        users["nina"],
        report["id"],
        {"reason": "misread", "systolic": 185, "diastolic": 100, "symptoms": ["chest_pain"]},
    )
    assert response.status_code == 201, response.text
    [alert] = response.json()["alerts"]
    assert (alert["rule"], alert["status"]) == (CRISIS, "open")


# --- alerts that change --------------------------------------------------------------


async def test_a_second_critical_report_renews_an_open_alert_and_notifies(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    first = await create_report(client, users["nina"], crisis())
    alert_id = by_rule(first)[CRISIS]["id"]
    # Its deadline, moved back as if the alert had been waiting for 4 of its 5 minutes.
    await db.execute(
        "UPDATE alerts SET ack_deadline = now() + interval '1 minute' WHERE id = $1::uuid",
        alert_id,
    )
    before = await alert_row(db, alert_id)

    second = await create_report(client, users["nina"], crisis())
    assert by_rule(second)[CRISIS] == {**by_rule(first)[CRISIS], "status": "open"}
    after = await alert_row(db, alert_id)
    assert after["report_count"] == 2
    # Started again from now, for the rule's 5 minutes.
    assert after["ack_deadline"] - after["updated_at"] == timedelta(minutes=5)
    assert after["ack_deadline"] > before["ack_deadline"]
    renewed = (await events(db, alert_id))[-1]
    assert renewed["action"] == "renewed"
    assert renewed["details"]["report_id"] == second["id"]
    assert renewed["details"]["status_was"] == "open"
    assert renewed["details"]["next_deadline"] == after["ack_deadline"].isoformat(
        timespec="microseconds"
    )
    assert await notified(db, alert_id) == ["opened", "renewed"]
    [entry] = await audit_rows(db, "alert.renewed", alert_id)
    assert entry["actor"] == "nina"


async def test_a_report_joining_an_acknowledged_critical_alert_returns_it_to_open(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    first = await create_report(client, users["nina"], crisis())
    alert_id = by_rule(first)[CRISIS]["id"]
    response = await client.post(f"{ALERTS}/{alert_id}/acknowledge", json={}, headers=users["olga"])
    assert response.status_code == 200, response.text
    acknowledged = await alert_row(db, alert_id)
    assert (acknowledged["status"], acknowledged["ack_deadline"]) == ("acknowledged", None)

    second = await create_report(client, users["nina"], crisis())
    assert by_rule(second)[CRISIS]["status"] == "open"
    after = await alert_row(db, alert_id)
    assert after["status"] == "open"
    assert (after["acknowledged_at"], after["acknowledged_by"]) == (None, None)
    assert after["ack_deadline"] - after["updated_at"] == timedelta(minutes=5)
    actions = [e["action"] for e in await events(db, alert_id)]
    assert actions == ["opened", "acknowledged", "renewed"]
    assert (await events(db, alert_id))[-1]["details"]["status_was"] == "acknowledged"
    assert await notified(db, alert_id) == ["opened", "renewed"]


async def test_a_report_joining_a_high_alert_only_matches(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    grade_3 = bp_report(systolic=165, diastolic=95)
    first = await create_report(client, users["nina"], grade_3)
    alert_id = by_rule(first)[GRADE_3]["id"]
    response = await client.post(f"{ALERTS}/{alert_id}/acknowledge", json={}, headers=users["olga"])
    assert response.status_code == 200, response.text

    second = await create_report(client, users["nina"], grade_3)
    assert by_rule(second)[GRADE_3]["status"] == "acknowledged"
    assert [e["action"] for e in await events(db, alert_id)] == [
        "opened",
        "acknowledged",
        "matched",
    ]
    assert await notified(db, alert_id) == ["opened"]


async def test_an_amendment_of_a_linked_report_does_not_renew(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    """The same report, corrected, is no new event: no new deadline, no new page."""
    first = await create_report(client, users["nina"], crisis())
    alert_id = by_rule(first)[CRISIS]["id"]
    response = await amend(client, users["nina"], first["id"], {"reason": "typo", "pulse": 88})
    assert response.status_code == 201, response.text
    assert [e["action"] for e in await events(db, alert_id)] == ["opened", "matched"]
    assert await notified(db, alert_id) == ["opened"]


# --- acknowledgement minutes per rule --------------------------------------------------


def urgent_rule(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "tachy-urgent",
        "name": "Pulse above 140",
        "severity": "urgent",
        "description": "Pulse above 140 per minute. Source: convention.",
        "guidance": "Recheck the pulse now and call the prescriber.",
        "ack_minutes": 7,
        "definition": {"when": {"field": "pulse", "op": ">", "value": 140}},
    }
    body.update(changes)
    return body


async def test_a_rules_minutes_set_the_deadline_and_the_next_after_escalation(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    users: dict[str, Headers],
    settings: Settings,
) -> None:
    created = await client.post(RULES, json=urgent_rule(), headers=users["adam"])
    assert created.status_code == 201, created.text
    assert created.json()["ack_minutes"] == 7
    # The urgent setting is an hour: the rule's 7 minutes win.
    assert settings.alerts.ack_deadlines["urgent"] == timedelta(minutes=60)
    report = await create_report(client, users["nina"], bp_report(pulse=150))
    alert_id = by_rule(report)["tachy-urgent"]["id"]
    row = await alert_row(db, alert_id)
    assert row["ack_deadline"] - row["created_at"] == timedelta(minutes=7)

    await db.execute(
        "UPDATE alerts SET ack_deadline = now() - interval '1 minute' WHERE id = $1::uuid",
        alert_id,
    )
    async with db.transaction():
        assert await escalate_due(db, settings.alerts) == 1
        escalated = await alert_row(db, alert_id)
        now = await db.fetchval("SELECT now()")
    assert escalated["escalation_level"] == 1
    assert escalated["ack_deadline"] - now == timedelta(minutes=7)

    # Without minutes of its own, the rule takes its severity's again.
    body = {k: v for k, v in urgent_rule().items() if k not in ("id", "ack_minutes")}
    updated = await client.put(f"{RULES}/tachy-urgent", json=body, headers=users["adam"])
    assert updated.status_code == 200, updated.text
    assert (updated.json()["ack_minutes"], updated.json()["version"]) == (None, 2)
    versions = await db.fetch(
        "SELECT version, ack_minutes, guidance FROM alert_rule_versions"
        " WHERE rule_id = 'tachy-urgent' ORDER BY version"
    )
    assert [(v["version"], v["ack_minutes"]) for v in versions] == [(1, 7), (2, None)]
    assert {v["guidance"] for v in versions} == {urgent_rule()["guidance"]}


async def test_the_hold_and_every_critical_rule_set_minutes(db: asyncpg.Connection[Any]) -> None:
    rows = await db.fetch("SELECT id, severity, ack_minutes, guidance FROM alert_rules")
    assert len(rows) == 42
    for row in rows:
        assert 1 <= len(row["guidance"]) <= 1000, row["id"]
        if row["severity"] == "critical" or row["id"] == HOLD:
            assert row["ack_minutes"] is not None, row["id"]
            assert row["ack_minutes"] <= 10, row["id"]


# --- guidance is required --------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        pytest.param({"guidance": None}, "required", id="missing"),
        pytest.param({"guidance": ""}, "length", id="empty"),
        pytest.param({"guidance": "x" * 1001}, "length", id="too-long"),
    ],
)
async def test_guidance_is_required_on_create_and_update(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    users: dict[str, Headers],
    change: dict[str, Any],
    rule: str,
) -> None:
    body = {k: v for k, v in {**urgent_rule(), **change}.items() if v is not None}
    response = await client.post(RULES, json=body, headers=users["adam"])
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["guidance"]
    assert response.json()["errors"][0]["rule"] == rule

    update = {k: v for k, v in body.items() if k != "id"}
    response = await client.put(f"{RULES}/{GRADE_3}", json=update, headers=users["adam"])
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["guidance"]
    assert await db.fetchval("SELECT count(*) FROM alert_rules WHERE id = 'tachy-urgent'") == 0


@pytest.mark.parametrize("minutes", [0, 1441, "5"])
async def test_ack_minutes_out_of_range_is_422(
    client: AsyncTestClient[Any], users: dict[str, Headers], minutes: Any
) -> None:
    response = await client.post(
        RULES, json=urgent_rule(ack_minutes=minutes), headers=users["adam"]
    )
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["ack_minutes"]


async def test_ack_minutes_written_as_a_whole_float_are_minutes(
    client: AsyncTestClient[Any], users: dict[str, Headers]
) -> None:
    response = await client.post(RULES, json=urgent_rule(ack_minutes=7.0), headers=users["adam"])
    assert response.status_code == 201, response.text
    assert response.json()["ack_minutes"] == 7


async def test_guidance_is_shown_and_versioned(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    view = (await client.get(f"{RULES}/{HOLD}", headers=users["olga"])).json()
    assert view["guidance"].startswith("Do not dose.")
    assert (view["ack_minutes"], view["definition"]["hold"]) == (5, True)
    body = {k: view[k] for k in ("name", "severity", "description", "definition", "ack_minutes")}
    body["guidance"] = "Do not dose. Call the prescriber."
    response = await client.put(f"{RULES}/{HOLD}", json=body, headers=users["adam"])
    assert response.status_code == 200, response.text
    assert response.json()["guidance"] == "Do not dose. Call the prescriber."
    rows = await db.fetch(
        "SELECT version, guidance FROM alert_rule_versions WHERE rule_id = $1 ORDER BY version",
        HOLD,
    )
    assert rows[-1]["guidance"] == "Do not dose. Call the prescriber."
    assert rows[-2]["guidance"] == view["guidance"]
    # Versions from before guidance existed had none.
    assert rows[0]["guidance"] is None
    [entry] = [e for e in await audit_rows(db, "rule.updated", HOLD) if e["chain"] == "global"]
    assert entry["details"]["rule"]["guidance"] == "Do not dose. Call the prescriber."


# --- the override of a hold ------------------------------------------------------------


async def test_a_nurse_overrides_a_hold_with_a_reason(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    report = await create_report(client, users["nina"], hold())
    [raised] = report["alerts"]
    assert (raised["rule"], raised["severity"]) == (HOLD, "high")
    row = await alert_row(db, raised["id"])
    assert row["ack_deadline"] - row["created_at"] == timedelta(minutes=5)

    reason = "Recheck 138/88 after 5 minutes; Dr Reyes agreed to dose."
    response = await client.post(
        f"{ALERTS}/{raised['id']}/override", json={"reason": reason}, headers=users["nina"]
    )
    assert response.status_code == 200, response.text
    view = response.json()
    assert (view["override_reason"], view["overridden_by"]) == (reason, "nina")
    assert view["overridden_at"] is not None
    assert view["status"] == "open"  # still the safety officer's to acknowledge
    assert view["history"][-1]["action"] == "overridden"
    assert view["history"][-1]["details"] == {"reason": reason}
    [entry] = await audit_rows(db, "alert.overridden", raised["id"])
    assert (entry["actor"], entry["chain"]) == ("nina", "clinic:C1")
    assert entry["details"]["reason"] == reason
    # The officer's view shows it too.
    read = (await client.get(f"{ALERTS}/{raised['id']}", headers=users["olga"])).json()
    assert (read["override_reason"], read["overridden_by"]) == (reason, "nina")

    # Once: a second override is refused.
    again = await client.post(
        f"{ALERTS}/{raised['id']}/override", json={"reason": "again"}, headers=users["olga"]
    )
    assert again.status_code == 409, again.text

    # An amendment of the same report is no new reading: its answer shows the override.
    response = await amend(client, users["nina"], report["id"], {"reason": "typo", "pulse": 70})
    assert response.status_code == 201, response.text
    [amended] = response.json()["alerts"]
    assert (amended["hold"], amended["override_reason"]) == (True, reason)

    # A new reading above the criteria holds again: the override no longer stands.
    again_held = await create_report(client, users["nina"], hold())
    assert again_held["alerts"][0]["override_reason"] is None
    renewed = await alert_row(db, raised["id"])
    assert (renewed["override_reason"], renewed["overridden_at"]) == (None, None)
    assert (await events(db, raised["id"]))[-1]["action"] == "renewed"


async def test_the_override_of_another_clinics_alert_is_404(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    report = await create_report(client, users["nina"], hold())
    alert_id = report["alerts"][0]["id"]
    response = await client.post(
        f"{ALERTS}/{alert_id}/override", json={"reason": "not mine"}, headers=users["nora"]
    )
    assert response.status_code == 404, response.text
    assert (await alert_row(db, alert_id))["override_reason"] is None
    assert await audit_rows(db, "alert.overridden") == []


async def test_only_a_hold_is_overridden(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    report = await create_report(client, users["nina"], crisis())
    alert_id = by_rule(report)[CRISIS]["id"]
    response = await client.post(
        f"{ALERTS}/{alert_id}/override", json={"reason": "dose anyway"}, headers=users["nina"]
    )
    assert response.status_code == 409, response.text
    assert "not a hold" in response.json()["detail"]
    assert (await alert_row(db, alert_id))["override_reason"] is None


async def test_auditors_may_not_override(
    client: AsyncTestClient[Any], users: dict[str, Headers]
) -> None:
    report = await create_report(client, users["nina"], hold())
    alert_id = report["alerts"][0]["id"]
    response = await client.post(
        f"{ALERTS}/{alert_id}/override", json={"reason": "x"}, headers=users["aude"]
    )
    assert response.status_code == 403, response.text
