"""The alert queue: listing, reading and working alerts.

Alerts are raised the way they are in service: a nurse posts a report and the default
rules open them. Every transition must be audited, recorded in the alert's history and
bump its revision; two people acting at once get one winner and a 409, never an
overwrite; another clinic's alert looks exactly like one that does not exist.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient

from safetyreport.auth.permissions import Role
from safetyreport.db.pool import connect
from tests.helpers.reports import (
    amend,
    audit_rows,
    bp_report,
    create_report,
    dissociation_report,
    errors_of,
    send_concurrently,
    stock_report,
)
from tests.helpers.rules import queue_cadss_alerts
from tests.helpers.world import World

ALERTS = "/api/v1/alerts"
CRISIS = "bp-hypertensive-crisis"
ACTIONS = ("acknowledge", "assign", "resolve", "reopen", "notes")

# name -> (role, clinics, all_clinics)
USERS: dict[str, tuple[Role, list[str], bool]] = {
    "nina": ("nurse", ["C1"], False),
    "nico": ("nurse", ["C2"], False),
    "olga": ("safety_officer", ["C1"], False),
    "omar": ("safety_officer", ["C1"], False),
    "otto": ("safety_officer", ["C2"], False),
    "aude": ("auditor", ["C1"], False),
    "adam": ("admin", [], True),
}
# The nurse who reports in each clinic.
NURSES = {"C1": "nina", "C2": "nico"}


@dataclass
class Queue:
    """Two clinics; users are created and logged in only when a test needs them."""

    world: World
    created: set[str] = field(default_factory=set)
    tokens: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def client(self) -> AsyncTestClient[Any]:
        return self.world.client

    @property
    def db(self) -> asyncpg.Connection[Any]:
        return self.world.db

    async def user(self, name: str) -> str:
        if name not in self.created:
            role, clinics, all_clinics = USERS[name]
            await self.world.user(name, role, clinics, all_clinics=all_clinics)
            self.created.add(name)
        return name

    async def as_(self, name: str) -> dict[str, str]:
        """Authorization headers of ``name`` (one login per test and user)."""
        if name not in self.tokens:
            await self.user(name)
            self.tokens[name] = await self.world.login(name)
        return self.tokens[name]

    async def report(self, body: dict[str, Any]) -> str:
        """Post a report as the clinic's nurse; its id."""
        headers = await self.as_(NURSES[body["clinic"]])
        view = await create_report(self.client, headers, body)
        report_id: str = view["id"]
        return report_id

    async def raise_alert(self, body: dict[str, Any], rule: str = CRISIS) -> str:
        """Post a report and return the id of the alert of ``rule`` it opened or joined."""
        report_id = await self.report(body)
        alert_id = await self.db.fetchval(
            "SELECT a.id FROM alerts a JOIN alert_reports ar ON ar.alert_id = a.id"
            " WHERE ar.report_id = $1::uuid AND a.rule_id = $2",
            report_id,
            rule,
        )
        assert alert_id is not None, f"{rule} did not fire on {body}"
        return str(alert_id)

    async def crisis(self, patient: str = "PT-001", clinic: str = "C1") -> str:
        return await self.raise_alert(
            bp_report(
                clinic, patient_ref=patient, systolic=185, diastolic=100, symptoms=["chest_pain"]
            )
        )

    async def act(
        self, who: str, alert_id: str, action: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        return await self.client.post(
            f"{ALERTS}/{alert_id}/{action}", json=body or {}, headers=await self.as_(who)
        )

    async def ok(
        self, who: str, alert_id: str, action: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        response = await self.act(who, alert_id, action, body)
        expected = 201 if action == "notes" else 200
        assert response.status_code == expected, response.text
        view: dict[str, Any] = response.json()
        return view

    async def read(self, who: str, alert_id: str) -> dict[str, Any]:
        response = await self.client.get(f"{ALERTS}/{alert_id}", headers=await self.as_(who))
        assert response.status_code == 200, response.text
        view: dict[str, Any] = response.json()
        return view

    async def listing(self, who: str, **params: Any) -> dict[str, Any]:
        response = await self.client.get(ALERTS, params=params, headers=await self.as_(who))
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        assert set(page) == {"items", "next_cursor"}
        return page

    async def listed_ids(self, who: str, **params: Any) -> list[str]:
        return [item["id"] for item in (await self.listing(who, **params))["items"]]

    async def row(self, alert_id: str) -> dict[str, Any]:
        row = await self.db.fetchrow("SELECT * FROM alerts WHERE id = $1::uuid", alert_id)
        assert row is not None
        return dict(row)

    async def events(self, alert_id: str) -> list[tuple[str, str]]:
        rows = await self.db.fetch(
            "SELECT actor, action FROM alert_events WHERE alert_id = $1::uuid ORDER BY id",
            alert_id,
        )
        return [(r["actor"], r["action"]) for r in rows]

    async def alert_audits(self, alert_id: str) -> list[tuple[str, str, str]]:
        """(action, actor, chain) of every audit entry about the alert's changes."""
        rows = await self.db.fetch(
            "SELECT action, actor, chain FROM audit_entries WHERE object_id = $1"
            " AND action NOT IN ('alert.read', 'alert.listed') ORDER BY recorded_at, seq",
            alert_id,
        )
        return [(r["action"], r["actor"], r["chain"]) for r in rows]


@pytest.fixture
async def q(world: World) -> Queue:
    await world.clinic("C1")
    await world.clinic("C2")
    return Queue(world)


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() is not None, value
    return parsed


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def five_alerts(q: Queue) -> dict[str, str]:
    """One alert of each severity and a second critical, raised in this order (oldest
    first): info, high, critical, urgent, critical. Distinct patients and no systolic of
    180 or more, so no pattern rule fires: exactly these five alerts exist."""
    await queue_cadss_alerts(q.db)
    return {
        "info": await q.raise_alert(
            dissociation_report(patient_ref="PT-I", cadss_total=10), "dissociation-present"
        ),
        "high": await q.raise_alert(
            bp_report(patient_ref="PT-H", systolic=165, diastolic=95), "bp-ctcae-grade-3"
        ),
        "critical": await q.raise_alert(
            bp_report(patient_ref="PT-C", systolic=150, diastolic=125, symptoms=["chest_pain"])
        ),
        "urgent": await q.raise_alert(
            bp_report(patient_ref="PT-U", systolic=170, diastolic=112), "bp-markedly-abnormal"
        ),
        "critical2": await q.raise_alert(
            bp_report(patient_ref="PT-D", systolic=150, diastolic=125, symptoms=["chest_pain"])
        ),
    }


# --- listing -------------------------------------------------------------------------


async def test_list_is_most_severe_first_then_oldest_first(q: Queue) -> None:
    alerts = await five_alerts(q)
    page = await q.listing("olga")
    assert page["next_cursor"] is None
    assert [item["id"] for item in page["items"]] == [
        alerts["critical"],
        alerts["critical2"],
        alerts["urgent"],
        alerts["high"],
        alerts["info"],
    ]
    assert [item["severity"] for item in page["items"]] == [
        "critical",
        "critical",
        "urgent",
        "high",
        "info",
    ]
    first = page["items"][0]
    assert first["rule_id"] == CRISIS
    # Protected by 0005, a hypertensive emergency by 0007, given its guidance by 0009.
    assert first["rule_version"] == 4
    assert first["rule_name"] == "Hypertensive emergency"
    assert first["clinic"] == "C1"
    assert first["status"] == "open"
    assert (first["group_by"], first["group_key"]) == ("patient", "PT-C")
    assert first["report_count"] == 1
    assert first["revision"] == 1
    assert parse_time(first["ack_deadline"]) > parse_time(first["first_seen_at"])
    # The list shows alerts, not their history.
    assert "history" not in first
    assert "reports" not in first
    # Info alerts never escalate: no deadline.
    assert page["items"][-1]["ack_deadline"] is None


async def test_list_filters(q: Queue) -> None:
    alerts = await five_alerts(q)
    elsewhere = await q.crisis("PT-X", clinic="C2")
    await q.ok("olga", alerts["critical2"], "acknowledge")
    await q.ok("olga", alerts["urgent"], "assign", {"user": await q.user("omar")})
    await q.ok("olga", alerts["high"], "resolve", {"reason": "re-measured: normal"})
    everything = await q.listed_ids("adam")
    assert len(everything) == 6
    assert elsewhere in everything

    async def only(**params: Any) -> set[str]:
        return set(await q.listed_ids("adam", **params))

    assert await only(status="acknowledged") == {alerts["critical2"]}
    assert await only(status="resolved") == {alerts["high"]}
    assert await only(status="open") == {
        alerts["info"],
        alerts["critical"],
        alerts["urgent"],
        elsewhere,
    }
    assert await only(severity="critical") == {alerts["critical"], alerts["critical2"], elsewhere}
    assert await only(severity="info") == {alerts["info"]}
    assert await only(clinic="C2") == {elsewhere}
    assert await only(clinic="C1") == set(everything) - {elsewhere}
    assert await only(rule="bp-markedly-abnormal") == {alerts["urgent"]}
    assert await only(rule=CRISIS, clinic="C1") == {alerts["critical"], alerts["critical2"]}
    assert await only(assigned_to="omar") == {alerts["urgent"]}
    assert await only(assigned_to="olga") == set()
    assert await only(status="open", severity="critical", clinic="C1") == {alerts["critical"]}


@pytest.mark.parametrize(
    ("name", "value"),
    [("status", "closed"), ("severity", "warning"), ("limit", "0"), ("limit", "201")],
)
async def test_bad_filters_are_422(q: Queue, name: str, value: str) -> None:
    response = await q.client.get(ALERTS, params={name: value}, headers=await q.as_("olga"))
    assert [f for f, _ in errors_of(response)] == [name]


async def test_cursor_visits_every_alert_exactly_once(q: Queue) -> None:
    await q.crisis("PT-A")
    # One report that opens two critical alerts in one transaction: the same
    # first_seen_at, so only the id tells them apart (and a page boundary falls
    # between them with limit 2).
    both = await q.report(
        bp_report(
            patient_ref="PT-B",
            systolic=150,
            diastolic=125,
            symptoms=["chest_pain"],
            seriousness=["hospitalization"],
        )
    )
    assert (
        await q.db.fetchval(
            "SELECT count(DISTINCT a.first_seen_at) FROM alerts a"
            " JOIN alert_reports ar ON ar.alert_id = a.id WHERE ar.report_id = $1::uuid",
            both,
        )
        == 1
    )
    await q.raise_alert(
        bp_report(patient_ref="PT-U", systolic=170, diastolic=112), "bp-markedly-abnormal"
    )
    await queue_cadss_alerts(q.db)
    await q.raise_alert(
        dissociation_report(patient_ref="PT-I", cadss_total=10), "dissociation-present"
    )
    assert await q.db.fetchval("SELECT count(*) FROM alerts") == 5
    whole = await q.listed_ids("olga")
    assert len(whole) == 5
    for limit in (1, 2, 3):
        seen: list[str] = []
        pages: list[int] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": limit}
            if cursor is not None:
                params["cursor"] = cursor
            page = await q.listing("olga", **params)
            assert len(page["items"]) <= limit
            pages.append(len(page["items"]))
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert len(pages) <= 5, "the cursor does not advance"
        assert seen == whole, f"limit {limit}"
        assert pages[-1] > 0, f"limit {limit} ends with an empty page"


async def test_cursor_keeps_working_with_filters(q: Queue) -> None:
    for patient in ("PT-1", "PT-2", "PT-3"):
        await q.raise_alert(
            bp_report(patient_ref=patient, systolic=150, diastolic=125, symptoms=["chest_pain"]),
            CRISIS,
        )
    await q.raise_alert(
        bp_report(patient_ref="PT-H", systolic=165, diastolic=95), "bp-ctcae-grade-3"
    )
    whole = await q.listed_ids("olga", severity="critical")
    assert len(whole) == 3
    first = await q.listing("olga", severity="critical", limit=2)
    assert first["next_cursor"] is not None
    second = await q.listing("olga", severity="critical", limit=2, cursor=first["next_cursor"])
    assert second["next_cursor"] is None
    assert [i["id"] for i in first["items"] + second["items"]] == whole


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("not-a-cursor", id="garbage"),
        pytest.param("é", id="non-ascii"),
        pytest.param(b64(b"[1, 2]"), id="short-list"),
        pytest.param(b64(b"{}"), id="object"),
        pytest.param(b64(b'[3, "2026-01-15T10:00:00Z", "not-a-uuid"]'), id="bad-uuid"),
    ],
)
async def test_a_bad_cursor_is_422(q: Queue, cursor: str) -> None:
    response = await q.client.get(ALERTS, params={"cursor": cursor}, headers=await q.as_("olga"))
    assert [f for f, _ in errors_of(response)] == ["cursor"]


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param(
            b64(f'[3, "0001-01-01T00:00:00+01:00", "{uuid.UUID(int=1)}"]'.encode()),
            id="time-before-utc-range",
        ),
        pytest.param(
            b64(f'[99999999999, "2026-01-15T10:00:00Z", "{uuid.UUID(int=1)}"]'.encode()),
            id="rank-beyond-int4",
        ),
    ],
)
async def test_a_cursor_out_of_range_is_422(q: Queue, cursor: str) -> None:
    response = await q.client.get(ALERTS, params={"cursor": cursor}, headers=await q.as_("olga"))
    assert [f for f, _ in errors_of(response)] == ["cursor"]


# --- detail --------------------------------------------------------------------------


async def test_detail_shows_reports_history_and_rule_version(q: Queue) -> None:
    alert_id = await q.crisis("PT-7")
    first = await q.db.fetchval(
        "SELECT report_id FROM alert_reports WHERE alert_id = $1::uuid", alert_id
    )
    # A second crisis of the same patient joins the same alert.
    assert await q.crisis("PT-7") == alert_id
    await q.ok("olga", alert_id, "acknowledge")
    view = await q.read("olga", alert_id)
    assert view["id"] == alert_id
    assert (view["rule_id"], view["rule_version"], view["severity"]) == (CRISIS, 4, "critical")
    assert view["status"] == "acknowledged"
    assert view["report_count"] == 2
    assert [r["kind"] for r in view["reports"]] == ["blood_pressure", "blood_pressure"]
    assert [r["patient_ref"] for r in view["reports"]] == ["PT-7", "PT-7"]
    assert [r["version"] for r in view["reports"]] == [1, 1]
    assert view["reports"][0]["id"] == str(first)
    assert len({r["id"] for r in view["reports"]}) == 2
    # The second crisis renewed the critical alert (open again, a new deadline).
    assert [(e["actor"], e["action"]) for e in view["history"]] == [
        ("nina", "opened"),
        ("nina", "renewed"),
        ("olga", "acknowledged"),
    ]
    opened = view["history"][0]["details"]
    assert (opened["rule_id"], opened["rule_version"]) == (CRISIS, 4)
    assert opened["report_id"] == str(first)
    for name in (
        "dea_notice_due",
        "dea_form106_due",
        "dea_clock_zone",
        "dea_clock_warning",
        "dea_notified_on",
        "dea_form106_number",
        "dea_not_reportable_reason",
    ):
        assert view[name] is None, name


@pytest.mark.parametrize(
    ("occurred_at", "notice_due", "form106_due"),
    [
        # A Thursday: notice by the end of Friday; Form 106 by the end of the 45th day
        # (in UTC: the clinic has no time zone).
        ("2026-01-15T12:00:00+00:00", "2026-01-16T23:59:59+00:00", "2026-03-01T23:59:59+00:00"),
        # A Friday before a holiday: Monday 19 January is Martin Luther King Jr. Day.
        ("2026-01-16T09:30:00+00:00", "2026-01-20T23:59:59+00:00", "2026-03-02T23:59:59+00:00"),
    ],
)
async def test_theft_alert_shows_dea_due_dates(
    q: Queue, occurred_at: str, notice_due: str, form106_due: str
) -> None:
    alert_id = await q.raise_alert(
        stock_report(discovered_at=occurred_at), "controlled-substance-theft-or-loss"
    )
    view = await q.read("olga", alert_id)
    assert view["severity"] == "critical"
    assert (view["group_by"], view["group_key"]) == ("report", view["reports"][0]["id"])
    assert parse_time(view["dea_notice_due"]) == datetime.fromisoformat(notice_due)
    assert parse_time(view["dea_form106_due"]) == datetime.fromisoformat(form106_due)
    # Counted in UTC, and it says so.
    assert view["dea_clock_zone"] is None
    assert "no time zone" in view["dea_clock_warning"]
    listed = (await q.listing("olga"))["items"]
    assert [(a["id"], a["dea_notice_due"]) for a in listed] == [(alert_id, view["dea_notice_due"])]


async def test_a_loss_also_carries_dea_due_dates(q: Queue) -> None:
    alert_id = await q.raise_alert(
        stock_report(incident_type="loss"), "controlled-substance-theft-or-loss"
    )
    view = await q.read("olga", alert_id)
    assert view["dea_notice_due"] is not None
    assert view["dea_form106_due"] is not None


async def test_reading_an_unknown_alert_is_404(q: Queue) -> None:
    response = await q.client.get(f"{ALERTS}/{uuid.uuid4()}", headers=await q.as_("olga"))
    assert response.status_code == 404, response.text


# --- lifecycle -----------------------------------------------------------------------


async def test_acknowledge(q: Queue) -> None:
    alert_id = await q.crisis()
    before = await q.row(alert_id)
    assert before["ack_deadline"] is not None
    view = await q.ok("olga", alert_id, "acknowledge")
    assert view["status"] == "acknowledged"
    assert view["acknowledged_by"] == "olga"
    assert view["acknowledged_at"] is not None
    assert view["ack_deadline"] is None
    assert view["revision"] == before["revision"] + 1
    assert [e["action"] for e in view["history"]] == ["opened", "acknowledged"]
    row = await q.row(alert_id)
    assert row["status"] == "acknowledged"
    assert row["ack_deadline"] is None
    assert row["acknowledged_by"] == await q.db.fetchval(
        "SELECT id FROM users WHERE username = 'olga'"
    )
    [entry] = await audit_rows(q.db, "alert.acknowledged", alert_id)
    assert (entry["actor"], entry["actor_role"], entry["chain"]) == (
        "olga",
        "safety_officer",
        "clinic:C1",
    )
    assert entry["object_type"] == "alert"
    assert entry["clinic"] == "C1"


async def test_assign(q: Queue) -> None:
    alert_id = await q.crisis()
    view = await q.ok("olga", alert_id, "assign", {"user": await q.user("omar")})
    assert view["assigned_to"] == "omar"
    assert view["status"] == "open"
    assert view["revision"] == 2
    assert view["history"][-1]["action"] == "assigned"
    assert view["history"][-1]["details"]["user"] == "omar"
    # An admin of every clinic may take it too; assigning works on acknowledged alerts.
    await q.ok("olga", alert_id, "acknowledge")
    view = await q.ok("olga", alert_id, "assign", {"user": await q.user("adam")})
    assert view["assigned_to"] == "adam"
    assert view["status"] == "acknowledged"
    entries = await audit_rows(q.db, "alert.assigned", alert_id)
    assert [(e["actor"], e["chain"], e["details"]["user"]) for e in entries] == [
        ("olga", "clinic:C1", "omar"),
        ("olga", "clinic:C1", "adam"),
    ]


@pytest.mark.parametrize(
    "assignee",
    [
        pytest.param("nina", id="a-nurse-of-the-clinic"),
        pytest.param("otto", id="an-officer-of-another-clinic"),
        pytest.param("aude", id="an-auditor"),
        pytest.param("nobody", id="no-such-user"),
        pytest.param("", id="empty"),
    ],
)
async def test_assigning_someone_who_cannot_work_the_alert_is_422(q: Queue, assignee: str) -> None:
    alert_id = await q.crisis()
    if assignee in USERS:
        await q.user(assignee)
    before = await q.row(alert_id)
    response = await q.act("olga", alert_id, "assign", {"user": assignee})
    assert [f for f, _ in errors_of(response)] == ["user"]
    assert await q.row(alert_id) == before
    assert await audit_rows(q.db, "alert.assigned") == []


async def test_notes_appear_in_history(q: Queue) -> None:
    alert_id = await q.crisis()
    view = await q.ok("olga", alert_id, "notes", {"text": "Called the patient's GP."})
    assert view["history"][-1]["action"] == "noted"
    assert view["history"][-1]["actor"] == "olga"
    assert view["history"][-1]["details"] == {"text": "Called the patient's GP."}
    await q.ok("omar", alert_id, "resolve", {"reason": "BP normal on recheck"})
    # Notes may be added to resolved alerts: the record goes on.
    await q.ok("omar", alert_id, "notes", {"text": "GP confirmed."})
    history = (await q.read("olga", alert_id))["history"]
    assert [(e["actor"], e["action"]) for e in history] == [
        ("nina", "opened"),
        ("olga", "noted"),
        ("omar", "resolved"),
        ("omar", "noted"),
    ]
    entries = await audit_rows(q.db, "alert.noted", alert_id)
    assert [(e["actor"], e["chain"], e["details"]["text"]) for e in entries] == [
        ("olga", "clinic:C1", "Called the patient's GP."),
        ("omar", "clinic:C1", "GP confirmed."),
    ]


@pytest.mark.parametrize("body", [{}, {"text": ""}, {"text": "x", "colour": "red"}])
async def test_a_note_needs_text(q: Queue, body: dict[str, Any]) -> None:
    alert_id = await q.crisis()
    response = await q.act("olga", alert_id, "notes", body)
    assert errors_of(response)
    assert await q.events(alert_id) == [("nina", "opened")]


async def test_resolve_needs_a_reason(q: Queue) -> None:
    alert_id = await q.crisis()
    for body in ({}, {"reason": ""}, {"revision": 1}):
        response = await q.act("olga", alert_id, "resolve", body)
        assert [f for f, _ in errors_of(response)] == ["reason"], body
    assert (await q.row(alert_id))["status"] == "open"
    view = await q.ok("olga", alert_id, "resolve", {"reason": "Re-measured: 128/80"})
    assert view["status"] == "resolved"
    assert view["resolved_by"] == "olga"
    assert view["resolved_at"] is not None
    assert view["resolution_reason"] == "Re-measured: 128/80"
    assert view["ack_deadline"] is None
    assert view["history"][-1]["details"] == {"reason": "Re-measured: 128/80"}
    [entry] = await audit_rows(q.db, "alert.resolved", alert_id)
    assert (entry["actor"], entry["chain"]) == ("olga", "clinic:C1")
    assert entry["details"]["reason"] == "Re-measured: 128/80"


async def test_reopen_starts_the_clock_again(q: Queue) -> None:
    alert_id = await q.crisis()
    await q.ok("olga", alert_id, "acknowledge")
    await q.ok("olga", alert_id, "resolve", {"reason": "looked fine"})
    response = await q.act("omar", alert_id, "reopen", {})
    assert [f for f, _ in errors_of(response)] == ["reason"]
    view = await q.ok("omar", alert_id, "reopen", {"reason": "headache since"})
    assert view["status"] == "open"
    assert view["ack_deadline"] is not None
    for name in (
        "acknowledged_by",
        "acknowledged_at",
        "resolved_by",
        "resolved_at",
        "resolution_reason",
    ):
        assert view[name] is None, name
    assert view["history"][-1]["action"] == "reopened"
    assert view["history"][-1]["details"] == {"reason": "headache since"}
    # The deadline is the rule's (5 minutes for a hypertensive emergency), counted from
    # the reopening.
    row = await q.row(alert_id)
    assert row["ack_deadline"] - row["updated_at"] == timedelta(minutes=5)
    assert row["ack_deadline"] > row["first_seen_at"] + timedelta(minutes=5)
    [entry] = await audit_rows(q.db, "alert.reopened", alert_id)
    assert (entry["actor"], entry["chain"]) == ("omar", "clinic:C1")
    assert entry["details"]["reason"] == "headache since"
    # Reopened, it can be worked again.
    assert (await q.ok("olga", alert_id, "acknowledge"))["acknowledged_by"] == "olga"


async def test_invalid_transitions_are_409_and_change_nothing(q: Queue) -> None:
    alert_id = await q.crisis()
    response = await q.act("olga", alert_id, "reopen", {"reason": "it is open"})
    assert response.status_code == 409, response.text
    await q.ok("olga", alert_id, "acknowledge")
    acknowledged = await q.row(alert_id)
    response = await q.act("omar", alert_id, "acknowledge")
    assert response.status_code == 409, response.text
    assert await q.row(alert_id) == acknowledged
    await q.ok("olga", alert_id, "resolve", {"reason": "first"})
    resolved = await q.row(alert_id)
    for action, body in (
        ("resolve", {"reason": "second"}),
        ("acknowledge", {}),
        ("assign", {"user": await q.user("omar")}),
    ):
        response = await q.act("omar", alert_id, action, body)
        assert response.status_code == 409, (action, response.text)
    assert await q.row(alert_id) == resolved
    assert [a for _, a in await q.events(alert_id)] == ["opened", "acknowledged", "resolved"]
    actions = [a for a, _, _ in await q.alert_audits(alert_id)]
    assert actions == ["alert.opened", "alert.acknowledged", "alert.resolved"]


async def test_reopen_is_409_while_another_alert_of_the_group_is_unresolved(q: Queue) -> None:
    first = await q.crisis("PT-5")
    await q.ok("olga", first, "resolve", {"reason": "ok on recheck"})
    second = await q.crisis("PT-5")
    assert second != first
    response = await q.act("olga", first, "reopen", {"reason": "it was not ok"})
    assert response.status_code == 409, response.text
    assert (await q.row(first))["status"] == "resolved"
    assert [a for _, a in await q.events(first)] == ["opened", "resolved"]
    assert await audit_rows(q.db, "alert.reopened") == []
    # Another patient's alert is another group and does not stand in the way.
    await q.crisis("PT-6")
    await q.ok("olga", second, "resolve", {"reason": "ok"})
    assert (await q.ok("olga", first, "reopen", {"reason": "it was not ok"}))["status"] == "open"


async def test_every_transition_is_audited_recorded_and_bumps_the_revision(q: Queue) -> None:
    alert_id = await q.crisis()
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("olga", "acknowledge", {}),
        ("olga", "assign", {"user": await q.user("omar")}),
        ("omar", "resolve", {"reason": "handled"}),
        ("adam", "reopen", {"reason": "not handled"}),
        ("omar", "acknowledge", {}),
    ]
    revisions = [(await q.row(alert_id))["revision"]]
    for who, action, body in steps:
        view = await q.ok(who, alert_id, action, body)
        revisions.append(view["revision"])
        assert (await q.row(alert_id))["revision"] == view["revision"]
    assert revisions == sorted(set(revisions)), revisions
    expected = [
        ("nina", "opened"),
        ("olga", "acknowledged"),
        ("olga", "assigned"),
        ("omar", "resolved"),
        ("adam", "reopened"),
        ("omar", "acknowledged"),
    ]
    assert await q.events(alert_id) == expected
    assert await q.alert_audits(alert_id) == [
        (f"alert.{action}", actor, "clinic:C1") for actor, action in expected
    ]


async def test_a_note_bumps_the_revision(q: Queue) -> None:
    alert_id = await q.crisis()
    before = await q.row(alert_id)
    view = await q.ok("olga", alert_id, "notes", {"text": "called"})
    assert view["revision"] == before["revision"] + 1


async def test_a_stale_revision_is_409_and_changes_nothing(q: Queue) -> None:
    alert_id = await q.crisis()
    view = await q.ok("olga", alert_id, "acknowledge", {"revision": 1})
    assert view["revision"] == 2
    before = await q.row(alert_id)
    events = await q.events(alert_id)
    audits = await q.alert_audits(alert_id)
    for action, body in (
        ("assign", {"user": await q.user("omar"), "revision": 1}),
        ("resolve", {"reason": "stale", "revision": 1}),
        ("resolve", {"reason": "from the future", "revision": 3}),
    ):
        response = await q.act("omar", alert_id, action, body)
        assert response.status_code == 409, (action, response.text)
    assert await q.row(alert_id) == before
    assert await q.events(alert_id) == events
    assert await q.alert_audits(alert_id) == audits
    # The current revision is accepted.
    view = await q.ok("omar", alert_id, "resolve", {"reason": "current", "revision": 2})
    assert view["revision"] == 3
    response = await q.act("olga", alert_id, "reopen", {"reason": "stale", "revision": 2})
    assert response.status_code == 409, response.text
    assert (await q.row(alert_id))["status"] == "resolved"


async def test_a_new_matching_report_makes_a_seen_revision_stale(q: Queue) -> None:
    alert_id = await q.crisis("PT-9")
    seen = (await q.read("olga", alert_id))["revision"]
    await q.crisis("PT-9")
    response = await q.act("olga", alert_id, "resolve", {"reason": "fine", "revision": seen})
    assert response.status_code == 409, response.text
    assert (await q.row(alert_id))["status"] == "open"


# --- concurrency ---------------------------------------------------------------------


def _request(q: Queue, who: str, alert_id: str, action: str, body: dict[str, Any]) -> httpx.Request:
    return q.client.build_request(
        "POST", f"{ALERTS}/{alert_id}/{action}", json=body, headers=q.tokens[who]
    )


async def test_two_officers_acknowledging_at_once_get_one_winner(q: Queue) -> None:
    await q.as_("olga")
    await q.as_("omar")
    for attempt in range(4):
        alert_id = await q.crisis(f"PT-ACK-{attempt}")
        responses = await send_concurrently(
            q.client,
            [
                _request(q, "olga", alert_id, "acknowledge", {}),
                _request(q, "omar", alert_id, "acknowledge", {}),
            ],
        )
        statuses = [r.status_code for r in responses]
        assert sorted(statuses) == [200, 409], [r.text for r in responses]
        winner = ("olga", "omar")[statuses.index(200)]
        row = await q.row(alert_id)
        assert row["status"] == "acknowledged"
        assert (await q.read(winner, alert_id))["acknowledged_by"] == winner
        assert [e for e in await q.events(alert_id) if e[1] == "acknowledged"] == [
            (winner, "acknowledged")
        ]
        assert [(e["actor"]) for e in await audit_rows(q.db, "alert.acknowledged", alert_id)] == [
            winner
        ]
        assert row["revision"] == 2


async def test_two_resolves_at_once_never_overwrite_the_reason(q: Queue) -> None:
    await q.as_("olga")
    await q.as_("omar")
    reasons = {"olga": "false reading, re-measured", "omar": "patient sent to ER"}
    for attempt in range(4):
        alert_id = await q.crisis(f"PT-RES-{attempt}")
        responses = await send_concurrently(
            q.client,
            [
                _request(q, who, alert_id, "resolve", {"reason": reasons[who]})
                for who in ("olga", "omar")
            ],
        )
        statuses = [r.status_code for r in responses]
        assert sorted(statuses) == [200, 409], [r.text for r in responses]
        winner = ("olga", "omar")[statuses.index(200)]
        assert responses[statuses.index(200)].json()["resolution_reason"] == reasons[winner]
        row = await q.row(alert_id)
        assert row["resolution_reason"] == reasons[winner]
        assert (await q.read(winner, alert_id))["resolved_by"] == winner
        assert [e for e in await q.events(alert_id) if e[1] == "resolved"] == [(winner, "resolved")]
        [entry] = await audit_rows(q.db, "alert.resolved", alert_id)
        assert (entry["actor"], entry["details"]["reason"]) == (winner, reasons[winner])


@pytest.fixture
async def other_conn(database_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A second owner connection, to hold locks while the app works."""
    conn = await connect(database_url)
    yield conn
    await conn.close()


async def test_an_alert_being_changed_is_409_for_its_clinic(
    q: Queue, other_conn: asyncpg.Connection[Any]
) -> None:
    alert_id = await q.crisis()
    await q.as_("olga")
    async with other_conn.transaction():
        await other_conn.execute("SELECT 1 FROM alerts WHERE id = $1::uuid FOR UPDATE", alert_id)
        response = await q.act("olga", alert_id, "acknowledge")
        assert response.status_code == 409, response.text
    assert (await q.ok("olga", alert_id, "acknowledge"))["status"] == "acknowledged"


# --- visibility ----------------------------------------------------------------------


def normalised(response: httpx.Response, alert_id: str) -> tuple[int, str, Any]:
    body = response.json()
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        body["detail"] = body["detail"].replace(alert_id, "<id>")
    return response.status_code, response.headers["content-type"], body


def action_body(action: str) -> dict[str, Any]:
    return {
        "acknowledge": {},
        "assign": {"user": "otto"},
        "resolve": {"reason": "not yours"},
        "reopen": {"reason": "not yours"},
        "notes": {"text": "not yours"},
    }[action]


async def test_another_clinics_alert_looks_like_a_missing_one(q: Queue) -> None:
    alert_id = await q.crisis()
    # Resolved too, so that every action would otherwise be allowed or a 409.
    other = await q.crisis("PT-R")
    await q.ok("olga", other, "resolve", {"reason": "ok"})
    missing = str(uuid.uuid4())
    otto = await q.as_("otto")
    before = {a: await q.row(a) for a in (alert_id, other)}
    events = {a: await q.events(a) for a in (alert_id, other)}
    for target in (alert_id, other):
        hidden = await q.client.get(f"{ALERTS}/{target}", headers=otto)
        absent = await q.client.get(f"{ALERTS}/{missing}", headers=otto)
        assert hidden.status_code == 404
        assert normalised(hidden, target) == normalised(absent, missing)
        for action in ACTIONS:
            hidden = await q.act("otto", target, action, action_body(action))
            absent = await q.act("otto", missing, action, action_body(action))
            assert hidden.status_code == 404, (action, hidden.text)
            assert normalised(hidden, target) == normalised(absent, missing), action
    assert {a: await q.row(a) for a in (alert_id, other)} == before
    assert {a: await q.events(a) for a in (alert_id, other)} == events
    touched = await q.db.fetch(
        "SELECT action FROM audit_entries WHERE actor = 'otto' AND action LIKE 'alert.%'"
    )
    assert touched == []


async def test_another_clinics_alerts_are_never_listed(q: Queue) -> None:
    await five_alerts(q)
    mine = await q.crisis("PT-X", clinic="C2")
    assert await q.listed_ids("otto") == [mine]
    for params in ({"status": "open"}, {"severity": "info"}, {"rule": "dissociation-present"}):
        assert set(await q.listed_ids("otto", **params)) <= {mine}
    page = await q.listing("otto", limit=1)
    assert page["next_cursor"] is None
    response = await q.client.get(ALERTS, params={"clinic": "C1"}, headers=await q.as_("otto"))
    assert response.status_code == 404, response.text
    unknown = await q.client.get(ALERTS, params={"clinic": "C9"}, headers=await q.as_("otto"))
    assert normalised(response, "C1") == normalised(unknown, "C9")
    assert len(await q.listed_ids("olga")) == 5


async def test_another_clinics_alert_being_changed_is_still_404(
    q: Queue, other_conn: asyncpg.Connection[Any]
) -> None:
    # While C1 holds its alert, C2 must not learn from a 409 that the alert exists.
    alert_id = await q.crisis()
    otto = await q.as_("otto")
    async with other_conn.transaction():
        await other_conn.execute("SELECT 1 FROM alerts WHERE id = $1::uuid FOR UPDATE", alert_id)
        statuses = {
            a: (await q.act("otto", alert_id, a, action_body(a))).status_code for a in ACTIONS
        }
    assert statuses == dict.fromkeys(ACTIONS, 404)
    assert (await q.client.get(f"{ALERTS}/{alert_id}", headers=otto)).status_code == 404


async def test_nurses_may_not_use_the_queue(q: Queue) -> None:
    alert_id = await q.crisis()
    nina = await q.as_("nina")
    assert (await q.client.get(ALERTS, headers=nina)).status_code == 403
    assert (await q.client.get(f"{ALERTS}/{alert_id}", headers=nina)).status_code == 403
    for action in ACTIONS:
        response = await q.act("nina", alert_id, action, action_body(action))
        assert response.status_code == 403, (action, response.text)
    assert await q.events(alert_id) == [("nina", "opened")]


async def test_auditors_read_but_do_not_act(q: Queue) -> None:
    alert_id = await q.crisis()
    assert await q.listed_ids("aude") == [alert_id]
    assert (await q.read("aude", alert_id))["id"] == alert_id
    before = await q.row(alert_id)
    for action in ACTIONS:
        body = action_body(action) | ({"user": "olga"} if action == "assign" else {})
        response = await q.act("aude", alert_id, action, body)
        assert response.status_code == 403, (action, response.text)
    assert await q.row(alert_id) == before
    assert await q.events(alert_id) == [("nina", "opened")]


async def test_admins_of_all_clinics_see_and_work_every_clinics_alerts(q: Queue) -> None:
    c1 = await q.crisis("PT-1", clinic="C1")
    c2 = await q.crisis("PT-2", clinic="C2")
    assert set(await q.listed_ids("adam")) == {c1, c2}
    assert (await q.read("adam", c2))["clinic"] == "C2"
    view = await q.ok("adam", c2, "assign", {"user": await q.user("otto")})
    assert view["assigned_to"] == "otto"
    assert (await q.ok("adam", c1, "acknowledge"))["acknowledged_by"] == "adam"
    [entry] = await audit_rows(q.db, "alert.acknowledged", c1)
    assert (entry["actor"], entry["chain"]) == ("adam", "clinic:C1")
    [entry] = await audit_rows(q.db, "alert.assigned", c2)
    assert (entry["actor"], entry["chain"]) == ("adam", "clinic:C2")


async def test_no_token_is_401(q: Queue) -> None:
    alert_id = await q.crisis()
    assert (await q.client.get(ALERTS)).status_code == 401
    assert (await q.client.get(f"{ALERTS}/{alert_id}")).status_code == 401
    for action in ACTIONS:
        response = await q.client.post(f"{ALERTS}/{alert_id}/{action}", json=action_body(action))
        assert response.status_code == 401, action
    bad = {"Authorization": "Bearer not-a-token"}
    assert (await q.client.get(ALERTS, headers=bad)).status_code == 401
    assert await q.events(alert_id) == [("nina", "opened")]


# --- audit of reads ------------------------------------------------------------------


async def test_reading_and_listing_are_audited(q: Queue) -> None:
    alert_id = await q.crisis()
    await q.read("olga", alert_id)
    await q.read("aude", alert_id)
    reads = await audit_rows(q.db, "alert.read", alert_id)
    assert [(r["actor"], r["chain"], r["object_type"]) for r in reads] == [
        ("olga", "clinic:C1", "alert"),
        ("aude", "clinic:C1", "alert"),
    ]
    await q.listing("olga", severity="critical")
    await q.listing("aude", clinic="C1", limit=5)
    listed = await q.db.fetch(
        "SELECT actor, chain, details FROM audit_entries WHERE action = 'alert.listed'"
        " ORDER BY recorded_at"
    )
    assert [r["actor"] for r in listed] == ["olga", "aude"]
    assert listed[0]["details"]["filters"] == {"severity": "critical"}
    assert listed[0]["details"]["count"] == 1
    assert listed[1]["chain"] == "clinic:C1"
    assert listed[1]["details"]["filters"] == {"clinic": "C1", "limit": 5}
    # A refused read is not a read.
    await q.client.get(f"{ALERTS}/{alert_id}", headers=await q.as_("otto"))
    assert len(await audit_rows(q.db, "alert.read", alert_id)) == 2


# --- what triggered an alert, what an amendment changed, who may take it ----------------


async def test_an_alert_shows_the_values_that_triggered_it(q: Queue) -> None:
    alert_id = await q.raise_alert(
        bp_report(patient_ref="PT-T", systolic=210, diastolic=125, pulse=88),
        "bp-severe-hypertension",
    )
    view = await q.read("olga", alert_id)
    # The facts the rule's condition names (systolic, diastolic, symptoms): the pulse,
    # which it does not name, is not among them; nor are the absent symptoms.
    assert view["trigger_values"] == {"systolic": 210, "diastolic": 125}
    assert view["triggered_by"] == "BP 210/125 mmHg"
    [report] = view["reports"]
    assert report["trigger_values"] == {"systolic": 210, "diastolic": 125}
    assert report["triggered_by"] == "BP 210/125 mmHg"
    assert report["changes"] == []
    [listed] = [a for a in (await q.listing("olga"))["items"] if a["id"] == alert_id]
    assert (listed["trigger_values"], listed["triggered_by"]) == (
        {"systolic": 210, "diastolic": 125},
        "BP 210/125 mmHg",
    )
    stored = await q.db.fetchval(
        "SELECT trigger_values FROM alert_reports WHERE alert_id = $1::uuid", alert_id
    )
    assert stored == {"systolic": 210, "diastolic": 125}


async def test_the_alert_shows_its_most_recent_reports_values_and_each_reports_own(
    q: Queue,
) -> None:
    first = await q.raise_alert(
        bp_report(patient_ref="PT-M", systolic=190, diastolic=95, symptoms=["chest_pain"])
    )
    assert await q.crisis("PT-M") == first
    view = await q.read("olga", first)
    # (Linked at once, the three are in no particular order.)
    assert sorted(r["triggered_by"] for r in view["reports"]) == sorted(
        ["BP 190/95 mmHg, symptoms chest pain", "BP 185/100 mmHg, symptoms chest pain"]
    )
    assert view["triggered_by"] == "BP 185/100 mmHg, symptoms chest pain"


async def test_an_amendment_shows_what_it_changed(q: Queue) -> None:
    alert_id = await q.raise_alert(
        bp_report(patient_ref="PT-A", systolic=185, diastolic=100, symptoms=["chest_pain"])
    )
    report_id = str(
        await q.db.fetchval(
            "SELECT report_id FROM alert_reports WHERE alert_id = $1::uuid", alert_id
        )
    )
    response = await amend(
        q.client,
        await q.as_("nina"),
        report_id,
        {"reason": "misread the cuff", "systolic": 210, "diastolic": 125},
    )
    assert response.status_code == 201, response.text
    view = await q.read("olga", alert_id)
    first, amended = view["reports"]
    assert (first["version"], amended["version"]) == (1, 2)
    assert first["changes"] == []
    assert amended["changes"] == [
        {"field": "diastolic", "before": 100, "after": 125},
        {"field": "systolic", "before": 185, "after": 210},
    ]
    assert amended["triggered_by"] == "BP 210/125 mmHg, symptoms chest pain"
    assert view["triggered_by"] == "BP 210/125 mmHg, symptoms chest pain"


async def test_links_made_before_trigger_values_were_kept_show_none(q: Queue) -> None:
    alert_id = await q.crisis("PT-O")
    # As migration 0011 leaves the links made before it.
    await q.db.execute(
        "UPDATE alert_reports SET trigger_values = '{}' WHERE alert_id = $1::uuid", alert_id
    )
    view = await q.read("olga", alert_id)
    assert (view["trigger_values"], view["triggered_by"]) == ({}, "")
    assert [(r["trigger_values"], r["triggered_by"]) for r in view["reports"]] == [({}, "")]


async def test_assignees_are_the_clinics_enabled_officers_and_admins(q: Queue) -> None:
    alert_id = await q.crisis()
    for name in ("omar", "otto", "aude", "adam", "nina"):
        await q.user(name)
    await q.world.user("gone", "safety_officer", ["C1"])
    await q.db.execute("UPDATE users SET disabled_at = now() WHERE username = 'gone'")
    response = await q.client.get(f"{ALERTS}/{alert_id}/assignees", headers=await q.as_("olga"))
    assert response.status_code == 200, response.text
    # Not the nurse, the auditor, C2's officer, nor a disabled officer.
    assert response.json() == {
        "items": [
            {"username": "adam", "role": "admin"},
            {"username": "olga", "role": "safety_officer"},
            {"username": "omar", "role": "safety_officer"},
        ]
    }
    # Each of them can be assigned; the list and the assignment agree.
    for person in response.json()["items"]:
        view = await q.ok("olga", alert_id, "assign", {"user": person["username"]})
        assert view["assigned_to"] == person["username"]


async def test_assignees_of_another_clinics_alert_are_404_and_nurses_are_refused(
    q: Queue,
) -> None:
    alert_id = await q.crisis()
    otto = await q.as_("otto")
    hidden = await q.client.get(f"{ALERTS}/{alert_id}/assignees", headers=otto)
    absent = await q.client.get(f"{ALERTS}/{uuid.uuid4()}/assignees", headers=otto)
    assert (hidden.status_code, absent.status_code) == (404, 404)
    nina = await q.as_("nina")
    refused = await q.client.get(f"{ALERTS}/{alert_id}/assignees", headers=nina)
    assert refused.status_code == 403
    aude = await q.as_("aude")
    assert (await q.client.get(f"{ALERTS}/{alert_id}/assignees", headers=aude)).status_code == 403


async def test_a_pattern_alert_shows_what_each_counted_report_contributed(q: Queue) -> None:
    for n, systolic in enumerate((181, 182, 183)):
        await q.report(bp_report(patient_ref=f"PT-CL{n}", systolic=systolic, diastolic=100))
    alert_id = await q.db.fetchval(
        "SELECT id FROM alerts WHERE rule_id = 'pattern-blood-pressure-cluster'"
    )
    assert alert_id is not None
    view = await q.read("olga", str(alert_id))
    # The cluster's condition names the phase and the systolic pressure.
    # (Linked at once, the three are in no particular order.)
    assert sorted(r["triggered_by"] for r in view["reports"]) == [
        f"BP {systolic}/100 mmHg, phase post dose" for systolic in (181, 182, 183)
    ]
    assert min(view["reports"], key=lambda r: r["triggered_by"])["trigger_values"] == {
        "phase": "post_dose",
        "systolic": 181,
        "diastolic": 100,
    }
