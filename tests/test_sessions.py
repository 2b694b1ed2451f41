"""Treatment sessions (issue 15, the core): a session opened with its pre-dose checklist,
dosed, observed and discharged; the checklist's pressure through the same rules as a
pre-dose report (the hold, and the dose waiting for it or overridden); an observation
raising what the equivalent report raises; each fitness-to-leave criterion refusing the
discharge, and the override; clinic isolation and the audit entries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from tests.helpers.reports import (
    audit_rows,
    bp_report,
    create_report,
    dissociation_report,
    errors_of,
)
from tests.helpers.sessions import (
    FIT,
    SESSIONS,
    Headers,
    dosed_session,
    iso,
    open_session,
    post,
    session_body,
)
from tests.helpers.world import World

HOLD = "bp-pre-dose-hold"
DISCHARGE_OVERRIDE = "discharge-override"


@pytest.fixture
async def users(world: World) -> dict[str, Headers]:
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("nina", "nurse", ["C1"])
    await world.user("nora", "nurse", ["C2"])
    await world.user("olga", "safety_officer", ["C1"])
    await world.user("aude", "auditor", ["C1"])
    return {name: await world.login(name) for name in ("nina", "nora", "olga", "aude")}


def rules_of(answer: dict[str, Any]) -> set[str]:
    return {a["rule"] for a in answer["alerts"]}


# --- a whole session ---------------------------------------------------------------------


async def test_a_session_with_checklist_dose_observations_and_discharge(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    client_id = str(uuid.uuid4())
    body = session_body(id=client_id, weight_kg=70)
    first = await post(client, SESSIONS, nina, body, key="session-key-1")
    assert first.status_code == 201, first.text
    opened = first.json()
    assert opened["id"] == client_id
    assert opened["alerts"] == []
    assert opened["checklist"]["transport_arranged"] is True
    assert opened["created_by"] == "nina"
    # A retry with the same key replays the answer; the tablet's id is accepted once.
    again = await post(client, SESSIONS, nina, body, key="session-key-1")
    assert again.status_code == 201
    assert again.headers["Idempotency-Replayed"] == "true"
    assert again.json() == opened
    reused = await post(client, SESSIONS, nina, body)
    assert reused.status_code == 409, reused.text
    assert await db.fetchval("SELECT count(*) FROM treatment_sessions") == 1

    dosed_at = datetime.now(UTC) - timedelta(minutes=150)
    dosed = await post(
        client,
        f"{SESSIONS}/{client_id}/dose",
        nina,
        {"dose_mg": 56, "dosed_at": iso(dosed_at), "lot": "LOT-7"},
    )
    assert dosed.status_code == 201, dosed.text
    assert dosed.json()["dose_mg"] == 56
    assert dosed.json()["dose_mg_per_kg"] == 0.8
    assert dosed.json()["alerts"] == []
    assert (
        await post(
            client, f"{SESSIONS}/{client_id}/dose", nina, {"dose_mg": 56, "dosed_at": iso(dosed_at)}
        )
    ).status_code == 409

    # The expected rise around 40 minutes, below every threshold, raises nothing.
    observed = await post(
        client,
        f"{SESSIONS}/{client_id}/observations",
        nina,
        {
            "observed_at": iso(dosed_at + timedelta(minutes=40)),
            "systolic": 152,
            "diastolic": 92,
            "pulse": 88,
            "moaa_s": 4,
        },
    )
    assert observed.status_code == 201, observed.text
    observation = observed.json()
    assert observation["minutes_after_dose"] == 40
    assert observation["alerts"] == []

    discharged = await post(
        client,
        f"{SESSIONS}/{client_id}/discharge",
        nina,
        {
            "discharged_at": iso(dosed_at + timedelta(minutes=130)),
            "moaa_s": 5,
            "systolic": 128,
            "diastolic": 82,
            "escort": True,
        },
    )
    assert discharged.status_code == 200, discharged.text
    closed = discharged.json()
    assert closed["discharge"]["unmet"] == []
    assert closed["discharged_at"] is not None
    assert [o["id"] for o in closed["observations"]] == [observation["id"]]

    read = await client.get(f"{SESSIONS}/{client_id}", headers=users["aude"])
    assert read.status_code == 200, read.text
    assert read.json()["observations"][0]["systolic"] == 152
    listed = await client.get(SESSIONS, params={"patient_ref": "PT-1"}, headers=users["olga"])
    assert listed.status_code == 200, listed.text
    assert [s["id"] for s in listed.json()["items"]] == [client_id]

    # Every write and read is in clinic C1's chain.
    for action in ("session.opened", "session.dosed", "session.observed", "session.discharged"):
        rows = await audit_rows(db, action, client_id)
        assert [(r["chain"], r["actor"]) for r in rows] == [("clinic:C1", "nina")], action
    assert [r["actor"] for r in await audit_rows(db, "session.read", client_id)] == ["aude"]
    listed_rows = await audit_rows(db, "session.listed")
    assert [(r["chain"], r["actor"]) for r in listed_rows] == [("clinic:C1", "olga")]


async def test_the_session_list_pages_with_a_cursor(
    client: AsyncTestClient[Any], users: dict[str, Headers]
) -> None:
    ids = [
        (await open_session(client, users["nina"], session_body(f"PT-{n}")))["id"] for n in range(3)
    ]
    first = (await client.get(SESSIONS, params={"limit": 2}, headers=users["nina"])).json()
    assert first["next_cursor"]
    second = await client.get(
        SESSIONS, params={"limit": 2, "cursor": first["next_cursor"]}, headers=users["nina"]
    )
    seen = [s["id"] for s in first["items"]] + [s["id"] for s in second.json()["items"]]
    assert sorted(seen) == sorted(ids)
    assert second.json()["next_cursor"] is None


async def test_a_session_body_names_every_broken_field(
    client: AsyncTestClient[Any], users: dict[str, Headers]
) -> None:
    body = session_body(drug="nitrous")
    body["checklist"] = {**body["checklist"], "systolic": 70, "diastolic": 80}
    del body["checklist"]["fasting"]
    response = await post(client, SESSIONS, users["nina"], body)
    assert set(errors_of(response)) == {
        ("drug", "enum"),
        ("checklist.fasting", "required"),
        ("checklist.systolic", "above_diastolic"),
    }


# --- the pre-dose hold -------------------------------------------------------------------


async def test_the_checklist_raises_the_pre_dose_hold_and_the_dose_waits_for_an_override(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    high = {**session_body()["checklist"], "systolic": 150, "diastolic": 95}
    session = await open_session(client, nina, session_body("PT-H", checklist=high))
    # The same rules as a pre-dose report of the same pressure (another patient).
    report = await create_report(
        client, nina, bp_report(patient_ref="PT-R", phase="pre_dose", systolic=150, diastolic=95)
    )
    assert rules_of(session) == rules_of(report) == {HOLD}
    (hold,) = session["alerts"]
    assert hold["hold"] is True
    assert hold["override_reason"] is None
    linked = await db.fetchval(
        "SELECT count(*) FROM alert_session_readings WHERE alert_id = $1::uuid"
        " AND session_id = $2::uuid AND reading = 'checklist'",
        hold["id"],
        session["id"],
    )
    assert linked == 1

    dose = {"dose_mg": 56, "dosed_at": iso(datetime.now(UTC) - timedelta(minutes=1))}
    refused = await post(client, f"{SESSIONS}/{session['id']}/dose", nina, dose)
    assert errors_of(refused) == [("override_reason", HOLD)]
    assert (
        await db.fetchval(
            "SELECT dosed_at FROM treatment_sessions WHERE id = $1::uuid", session["id"]
        )
        is None
    )

    reason = "Prescriber assessed: anxious, repeat reading 142/88"
    dosed = await post(
        client, f"{SESSIONS}/{session['id']}/dose", nina, {**dose, "override_reason": reason}
    )
    assert dosed.status_code == 201, dosed.text
    assert dosed.json()["dose_override_reason"] == reason
    alert = await db.fetchrow("SELECT * FROM alerts WHERE id = $1::uuid", hold["id"])
    assert alert is not None
    assert alert["override_reason"] == reason
    assert alert["overridden_at"] is not None
    overridden = await audit_rows(db, "alert.overridden", hold["id"])
    assert [(r["chain"], r["actor"]) for r in overridden] == [("clinic:C1", "nina")]
    dosed_audit = await audit_rows(db, "session.dosed", session["id"])
    assert dosed_audit[0]["details"]["overridden_alerts"] == [hold["id"]]


# --- observations and reports: one engine ------------------------------------------------


@pytest.mark.parametrize(
    ("vitals", "report_kind", "expected"),
    [
        ({"systolic": 186, "diastolic": 104}, "blood_pressure", "bp-severe-hypertension"),
        ({"systolic": 165, "diastolic": 95}, "blood_pressure", "bp-ctcae-grade-3"),
        ({"spo2": 88, "moaa_s": 4}, "dissociation", "respiratory-depression"),
        ({"moaa_s": 2}, "dissociation", "sedation-moaa-s-3"),
    ],
)
async def test_an_observation_raises_what_the_equivalent_report_raises(
    client: AsyncTestClient[Any],
    users: dict[str, Headers],
    vitals: dict[str, int],
    report_kind: str,
    expected: str,
) -> None:
    nina = users["nina"]
    dosed_at = datetime.now(UTC) - timedelta(minutes=60)
    session_id = await dosed_session(client, nina, dosed_at, patient="PT-OBS")
    observed = await post(
        client,
        f"{SESSIONS}/{session_id}/observations",
        nina,
        {"observed_at": iso(dosed_at + timedelta(minutes=40)), **vitals},
    )
    assert observed.status_code == 201, observed.text
    common: dict[str, Any] = {
        "patient_ref": "PT-REP",
        "drug": "esketamine_nasal",
        "age_band": "under_65",
        "minutes_after_dose": 40,
        **vitals,
    }
    if report_kind == "blood_pressure":
        body = bp_report("C1", **common, phase="post_dose")
    else:
        body = dissociation_report("C1", **common, respiratory_depression=False)
    report = await create_report(client, nina, body)
    assert expected in rules_of(observed.json())
    assert rules_of(observed.json()) == rules_of(report)


# --- fitness to leave --------------------------------------------------------------------


async def observed_at_40(
    client: AsyncTestClient[Any], nina: Headers, session_id: str, dosed_at: datetime
) -> None:
    response = await post(
        client,
        f"{SESSIONS}/{session_id}/observations",
        nina,
        {"observed_at": iso(dosed_at + timedelta(minutes=40)), "systolic": 140, "diastolic": 88},
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"minutes": 100}, ("discharged_at", "monitored_120_minutes")),
        ({"no_check_at_40": True}, ("observations", "blood_pressure_35_to_50_minutes")),
        ({"moaa_s": 4}, ("moaa_s", "moaa_s_5")),
        ({"systolic": None, "diastolic": None}, ("systolic", "required_at_discharge")),
        ({"systolic": 146, "diastolic": 84}, ("systolic", "above_hold_level")),
        ({"systolic": 134, "diastolic": 92}, ("systolic", "above_hold_level")),
        ({"escort": False}, ("escort", "escort")),
    ],
)
async def test_each_fitness_to_leave_criterion_refuses_the_discharge(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    users: dict[str, Headers],
    change: dict[str, Any],
    error: tuple[str, str],
) -> None:
    nina = users["nina"]
    dosed_at = datetime.now(UTC) - timedelta(minutes=180)
    session_id = await dosed_session(client, nina, dosed_at)
    if not change.get("no_check_at_40"):
        await observed_at_40(client, nina, session_id, dosed_at)
    minutes = change.get("minutes", 125)
    body = {
        **FIT,
        **{k: v for k, v in change.items() if k in FIT},
        "discharged_at": iso(dosed_at + timedelta(minutes=minutes)),
    }
    body = {k: v for k, v in body.items() if v is not None}
    refused = await post(client, f"{SESSIONS}/{session_id}/discharge", nina, body)
    assert errors_of(refused) == [error]
    assert (
        await db.fetchval(
            "SELECT discharged_at FROM treatment_sessions WHERE id = $1::uuid", session_id
        )
        is None
    )


async def test_the_blood_pressure_window_is_35_to_50_minutes(
    client: AsyncTestClient[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    dosed_at = datetime.now(UTC) - timedelta(minutes=180)
    session_id = await dosed_session(client, nina, dosed_at)
    for minutes in (34, 51):
        response = await post(
            client,
            f"{SESSIONS}/{session_id}/observations",
            nina,
            {
                "observed_at": iso(dosed_at + timedelta(minutes=minutes)),
                "systolic": 130,
                "diastolic": 80,
            },
        )
        assert response.status_code == 201, response.text
    body = {**FIT, "discharged_at": iso(dosed_at + timedelta(minutes=125))}
    refused = await post(client, f"{SESSIONS}/{session_id}/discharge", nina, body)
    assert errors_of(refused) == [("observations", "blood_pressure_35_to_50_minutes")]
    await post(
        client,
        f"{SESSIONS}/{session_id}/observations",
        nina,
        {"observed_at": iso(dosed_at + timedelta(minutes=50)), "systolic": 130, "diastolic": 80},
    )
    accepted = await post(client, f"{SESSIONS}/{session_id}/discharge", nina, body)
    assert accepted.status_code == 200, accepted.text


async def test_every_unmet_criterion_is_named_and_an_override_discharges_with_a_high_alert(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    dosed_at = datetime.now(UTC) - timedelta(minutes=70)
    session_id = await dosed_session(client, nina, dosed_at)
    body = {"discharged_at": iso(dosed_at + timedelta(minutes=65)), "moaa_s": 4, "escort": False}
    refused = await post(client, f"{SESSIONS}/{session_id}/discharge", nina, body)
    assert errors_of(refused) == [
        ("discharged_at", "monitored_120_minutes"),
        ("observations", "blood_pressure_35_to_50_minutes"),
        ("systolic", "required_at_discharge"),
        ("moaa_s", "moaa_s_5"),
        ("escort", "escort"),
    ]

    reason = "Family emergency; patient left against advice with a taxi booked"
    discharged = await post(
        client, f"{SESSIONS}/{session_id}/discharge", nina, {**body, "override_reason": reason}
    )
    assert discharged.status_code == 200, discharged.text
    closed = discharged.json()
    assert closed["discharge"]["override_reason"] == reason
    assert len(closed["discharge"]["unmet"]) == 5
    (alert,) = [a for a in closed["alerts"] if a["rule"] == DISCHARGE_OVERRIDE]
    assert alert["severity"] == "high"
    assert alert["status"] == "open"
    rows = await audit_rows(db, "session.discharged", session_id)
    assert [(r["chain"], r["actor"]) for r in rows] == [("clinic:C1", "nina")]
    assert rows[0]["details"]["override_reason"] == reason
    assert await audit_rows(db, "alert.opened", alert["id"])
    # A closed session takes no more observations nor a second discharge.
    again = await post(
        client, f"{SESSIONS}/{session_id}/discharge", nina, {**body, "override_reason": reason}
    )
    assert again.status_code == 409


async def test_ketamine_sessions_have_no_esketamine_criteria(
    client: AsyncTestClient[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    session = await open_session(client, nina, session_body(drug="ketamine_iv", weight_kg=80))
    dosed = await post(
        client,
        f"{SESSIONS}/{session['id']}/dose",
        nina,
        {
            "dose_mg": 100,
            "dosed_at": iso(datetime.now(UTC) - timedelta(minutes=30)),
            "infusion_minutes": 20,
        },
    )
    assert dosed.status_code == 201, dosed.text
    # 1.25 mg/kg over 20 minutes: the dose rule of reports fires on the session's dose.
    assert "dose-off-protocol" in rules_of(dosed.json())
    discharged = await post(
        client,
        f"{SESSIONS}/{session['id']}/discharge",
        nina,
        {"discharged_at": iso(datetime.now(UTC)), "moaa_s": 5, "escort": False},
    )
    assert discharged.status_code == 200, discharged.text


# --- isolation ---------------------------------------------------------------------------


async def test_another_clinics_session_is_not_found(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    dosed_at = datetime.now(UTC) - timedelta(minutes=180)
    session_id = await dosed_session(client, users["nina"], dosed_at)
    before = await db.fetchrow("SELECT * FROM treatment_sessions WHERE id = $1::uuid", session_id)
    nora = users["nora"]
    assert (await client.get(f"{SESSIONS}/{session_id}", headers=nora)).status_code == 404
    for path, body in (
        ("dose", {"dose_mg": 56, "dosed_at": iso(dosed_at)}),
        ("observations", {"observed_at": iso(dosed_at), "spo2": 97}),
        ("discharge", {**FIT, "discharged_at": iso(datetime.now(UTC))}),
    ):
        response = await post(client, f"{SESSIONS}/{session_id}/{path}", nora, body)
        assert response.status_code == 404, (path, response.text)
    listed = await client.get(SESSIONS, headers=nora)
    assert listed.json()["items"] == []
    assert (await client.get(SESSIONS, params={"clinic": "C1"}, headers=nora)).status_code in (
        403,
        404,
    )
    foreign = await post(client, SESSIONS, nora, session_body())
    assert errors_of(foreign) == [("clinic", "member")]
    after = await db.fetchrow("SELECT * FROM treatment_sessions WHERE id = $1::uuid", session_id)
    assert after == before
    assert await db.fetchval("SELECT count(*) FROM session_observations") == 0
    # The auditor may read but not write.
    refused = await post(client, SESSIONS, users["aude"], session_body())
    assert refused.status_code == 403


# --- reports linked to a session ---------------------------------------------------------


async def test_a_report_links_to_a_session_of_its_clinic_and_patient(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    own = await open_session(client, nina, session_body("PT-L"))
    foreign = await open_session(client, users["nora"], session_body("PT-L", clinic="C2"))
    linked = await create_report(client, nina, bp_report(patient_ref="PT-L", session_id=own["id"]))
    assert linked["body"]["session_id"] == own["id"]
    other_patient = await post(
        client, "/api/v1/reports", nina, bp_report(patient_ref="PT-X", session_id=own["id"])
    )
    assert errors_of(other_patient) == [("session_id", "same_patient")]
    other_clinic = await post(
        client, "/api/v1/reports", nina, bp_report(patient_ref="PT-L", session_id=foreign["id"])
    )
    assert errors_of(other_clinic) == [("session_id", "session")]
    unknown = await post(
        client, "/api/v1/reports", nina, bp_report(patient_ref="PT-L", session_id=str(uuid.uuid4()))
    )
    assert errors_of(unknown) == [("session_id", "session")]
    # An amendment is held to the same.
    amended = await client.post(
        f"/api/v1/reports/{linked['id']}/amendments",
        json={"reason": "wrong session", "session_id": foreign["id"]},
        headers=nina,
    )
    assert errors_of(amended) == [("session_id", "session")]
    assert await db.fetchval("SELECT count(*) FROM reports") == 1


async def test_an_alert_raised_by_a_reading_shows_the_reading_and_what_it_contributed(
    client: AsyncTestClient[Any], users: dict[str, Headers]
) -> None:
    nina, olga = users["nina"], users["olga"]
    dosed_at = datetime.now(UTC) - timedelta(minutes=45)
    session_id = await dosed_session(client, nina, dosed_at)
    observed = await post(
        client,
        f"{SESSIONS}/{session_id}/observations",
        nina,
        {"observed_at": iso(dosed_at + timedelta(minutes=40)), "moaa_s": 1},
    )
    assert observed.status_code == 201, observed.text
    [alert] = observed.json()["alerts"]
    listed = await client.get("/api/v1/alerts", headers=olga)
    [item] = [a for a in listed.json()["items"] if a["id"] == alert["id"]]
    assert item["trigger_values"] == {"moaa_s": 1}
    detail = (await client.get(f"/api/v1/alerts/{alert['id']}", headers=olga)).json()
    assert detail["reports"] == []
    [reading] = detail["session_readings"]
    assert reading["session_id"] == session_id
    assert reading["reading"] == "observation"
    assert reading["reading_id"] == observed.json()["id"]
    assert reading["patient_ref"] == "PT-1"
    assert datetime.fromisoformat(reading["occurred_at"]) == dosed_at + timedelta(minutes=40)
    assert reading["trigger_values"] == {"moaa_s": 1}
    assert "MOAA/S" in reading["triggered_by"] or "moaa" in reading["triggered_by"].lower()
    page = await client.get(f"/alerts/{alert['id']}", headers=olga)
    assert page.status_code == 200, page.text
    assert "Treatment-session readings (1)" in page.text
    assert session_id in page.text
