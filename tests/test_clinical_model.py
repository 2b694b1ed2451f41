"""The clinical model of reports (docs/clinical-rules.md): vital signs on every patient
report, adverse events by category, stock incidents that name no patient, dose checks,
and the defects a clinical-safety review found, each shown fixed.

The thresholds of each default rule, on both sides, are in test_alert_rules.py.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from tests.helpers.reports import (
    REPORTS,
    adverse_report,
    amend,
    bp_report,
    create_report,
    dissociation_report,
    errors_of,
    misuse_report,
    post_report,
    stock_report,
    stored,
)
from tests.helpers.world import World

CSSRS_NO = {f"q{i}": False for i in range(1, 7)}


@pytest.fixture
async def nurse(world: World) -> dict[str, str]:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    return await world.login("nina")


async def fired(db: asyncpg.Connection[Any], report_id: str) -> dict[str, str]:
    """rule id -> severity of every alert the report is linked to."""
    rows = await db.fetch(
        "SELECT a.rule_id, a.severity FROM alerts a JOIN alert_reports ar ON ar.alert_id = a.id"
        " WHERE ar.report_id = $1::uuid",
        report_id,
    )
    return {r["rule_id"]: r["severity"] for r in rows}


async def rejected(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    body: dict[str, Any],
) -> list[tuple[str, str]]:
    """The (field, rule) errors of a refused report; nothing was stored."""
    before = await stored(db)
    errors = errors_of(await post_report(client, nurse, body))
    assert await stored(db) == before
    return errors


# --- the five defects of the review ------------------------------------------------------


async def test_low_pressure_and_slow_pulse_raise_alerts(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    """70/40 with a pulse of 38 was grade 0 and raised nothing."""
    view = await create_report(client, nurse, bp_report(systolic=70, diastolic=40, pulse=38))
    assert view["hypertension_reading_grade"] == 0
    assert await fired(db, view["id"]) == {
        "hypotension-severe": "urgent",
        "heart-rate-severe": "urgent",
    }


@pytest.mark.parametrize(
    "body",
    [
        bp_report(respiratory_rate=7),
        dissociation_report(respiratory_rate=7),
        adverse_report(respiratory_rate=7),
        misuse_report(respiratory_rate=7),
    ],
    ids=["blood_pressure", "dissociation", "adverse_event", "misuse_concern"],
)
async def test_every_patient_kind_carries_breathing(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    body: dict[str, Any],
) -> None:
    """There was no respiratory rate, and SpO2 only on dissociation reports."""
    view = await create_report(client, nurse, body)
    assert view["body"]["respiratory_rate"] == 7
    assert (await fired(db, view["id"]))["respiratory-depression"] == "critical"
    lower = {k: v for k, v in body.items() if k != "respiratory_rate"}
    low_spo2 = await create_report(client, nurse, {**lower, "patient_ref": "PT-S", "spo2": 92})
    assert (await fired(db, low_spo2["id"]))["breathing-impaired"] == "high"


async def test_spo2_alone_on_a_blood_pressure_report_is_impaired_breathing(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    view = await create_report(client, nurse, bp_report(spo2=92, systolic=128, diastolic=82))
    assert await fired(db, view["id"]) == {"breathing-impaired": "high"}


@pytest.mark.parametrize(
    ("incident", "rule", "severity"),
    [
        ("suspected_staff_diversion", "suspected-staff-diversion", "urgent"),
        ("device_tampered", "device-tampered", "high"),
    ],
)
async def test_diversion_and_tampering_raise_alerts(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    incident: str,
    rule: str,
    severity: str,
) -> None:
    body = stock_report(incident_type=incident)
    for name in ("expected_quantity", "actual_quantity", "unit"):
        del body[name]
    view = await create_report(client, nurse, body)
    assert await fired(db, view["id"]) == {rule: severity}


async def test_repeated_drug_seeking_raises_an_alert(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    first = await create_report(client, nurse, misuse_report())
    assert await fired(db, first["id"]) == {}
    second = await create_report(
        client,
        nurse,
        misuse_report(concern_type="extra_dose_request", occurred_at="2026-03-01T09:00:00Z"),
    )
    assert await fired(db, second["id"]) == {"pattern-patient-misuse": "high"}


async def test_a_missing_vial_names_no_patient(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    """A missing vial had to be filed under an invented patient, which then fed the
    per-patient rules and the FHIR export."""
    view = await create_report(client, nurse, stock_report())
    assert view["patient_ref"] is None
    assert "patient_ref" not in view["body"]
    row = await db.fetchrow(
        "SELECT patient_ref, occurred_at FROM reports WHERE id = $1::uuid", view["id"]
    )
    assert row is not None
    assert row["patient_ref"] is None
    assert row["occurred_at"].isoformat() == "2026-01-15T12:00:00+00:00"  # discovered_at
    # A second theft is urgent-or-critical twice in 30 days, but for no patient: the
    # patient pattern never sees stock incidents.
    again = await create_report(client, nurse, stock_report(discovered_at="2026-01-16T08:00:00Z"))
    assert await fired(db, again["id"]) == {"controlled-substance-theft-or-loss": "critical"}
    groups = await db.fetch("SELECT DISTINCT group_by FROM alerts")
    assert [g["group_by"] for g in groups] == ["report"]
    fhir = await client.get(f"{REPORTS}/{view['id']}/fhir", headers=nurse)
    assert fhir.status_code == 409, fhir.text
    assert "stock" in fhir.json()["detail"].lower()


async def test_rechecks_of_one_patient_are_not_a_cluster(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    """The cluster rule counted re-checks of one patient, pre-dose readings included."""
    times = ["2026-01-15T10:00:00Z", "2026-01-15T10:40:00Z", "2026-01-15T11:20:00Z"]
    for at in times:
        view = await create_report(
            client, nurse, bp_report(systolic=182, diastolic=100, occurred_at=at)
        )
    assert "pattern-blood-pressure-cluster" not in await fired(db, view["id"])
    pre = await create_report(
        client,
        nurse,
        bp_report(patient_ref="PT-PRE", phase="pre_dose", systolic=185, diastolic=100),
    )
    assert "pattern-blood-pressure-cluster" not in await fired(db, pre["id"])
    third = await create_report(
        client, nurse, bp_report(patient_ref="PT-OTHER", systolic=181, diastolic=100)
    )
    assert "pattern-blood-pressure-cluster" not in await fired(db, third["id"])
    fourth = await create_report(
        client, nurse, bp_report(patient_ref="PT-THIRD", systolic=180, diastolic=100)
    )
    assert "pattern-blood-pressure-cluster" in await fired(db, fourth["id"])


async def test_a_tenfold_esketamine_dose_is_refused(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    """560 mg of nasal esketamine (a typo for 56) was accepted."""
    assert await rejected(client, db, nurse, bp_report(dose_mg=560)) == [
        ("dose_mg", "esketamine_dose")
    ]
    for dose in (28, 56, 84):
        await create_report(client, nurse, bp_report(dose_mg=dose))


# --- vital signs ---------------------------------------------------------------------


async def test_a_pressure_is_given_whole(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    assert await rejected(client, db, nurse, adverse_report(systolic=150)) == [
        ("diastolic", "required")
    ]
    assert await rejected(client, db, nurse, adverse_report(systolic=80, diastolic=90)) == [
        ("systolic", "above_diastolic")
    ]
    view = await create_report(client, nurse, adverse_report(systolic=165, diastolic=95))
    # The reading grade of the pressure, whatever kind of report carries it.
    assert view["hypertension_reading_grade"] == 3


@pytest.mark.parametrize(("field", "low", "high"), [("respiratory_rate", 4, 60), ("spo2", 50, 100)])
async def test_breathing_ranges(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    field: str,
    low: int,
    high: int,
) -> None:
    for value in (low, high):
        await create_report(client, nurse, {**adverse_report(), field: value})
    for value in (low - 1, high + 1):
        assert await rejected(client, db, nurse, {**adverse_report(), field: value}) == [
            (field, "range")
        ]


async def test_syncope_is_a_yes_or_no(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    view = await create_report(client, nurse, dissociation_report(syncope=True))
    assert await fired(db, view["id"]) == {"hypotension-severe": "urgent"}
    errors = await rejected(client, db, nurse, dissociation_report(syncope="yes"))
    assert errors == [("syncope", "type")]


# --- dose and protocol -------------------------------------------------------------------


async def test_weight_based_doses_need_the_weight_and_show_mg_per_kg(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    for drug in ("ketamine_iv", "ketamine_im"):
        body = dissociation_report(drug=drug, dose_mg=35)
        assert await rejected(client, db, nurse, body) == [("weight_kg", "required")]
    view = await create_report(
        client, nurse, dissociation_report(dose_mg=35, weight_kg=70, infusion_minutes=40)
    )
    assert view["dose_mg_per_kg"] == 0.5
    assert await fired(db, view["id"]) == {}
    read = await client.get(f"{REPORTS}/{view['id']}", headers=nurse)
    assert read.json()["dose_mg_per_kg"] == 0.5
    without_dose = await create_report(client, nurse, bp_report())
    assert without_dose["dose_mg_per_kg"] is None


@pytest.mark.parametrize("weight", [19, 301])
async def test_weight_range(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str], weight: int
) -> None:
    body = dissociation_report(dose_mg=35, weight_kg=weight)
    assert await rejected(client, db, nurse, body) == [("weight_kg", "range")]


async def test_an_infusion_time_is_for_iv_ketamine_only(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    body = bp_report(infusion_minutes=40)
    assert await rejected(client, db, nurse, body) == [("infusion_minutes", "not_applicable")]


# --- cross-field checks ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"seriousness": ["death"], "outcome": "resolved"}, [("outcome", "fatal_with_death")]),
        ({"outcome": "fatal"}, [("seriousness", "death_with_fatal")]),
        (
            {"outcome": "fatal", "seriousness": ["hospitalization"]},
            [("seriousness", "death_with_fatal")],
        ),
        ({"resolved": True, "outcome": "ongoing"}, [("outcome", "not_ongoing_if_resolved")]),
    ],
)
async def test_outcome_agrees_with_the_event(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    overrides: dict[str, Any],
    expected: list[tuple[str, str]],
) -> None:
    assert await rejected(client, db, nurse, dissociation_report(**overrides)) == expected


async def test_consistent_outcomes_are_accepted(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    await create_report(
        client, nurse, dissociation_report(seriousness=["death"], outcome="fatal", resolved=False)
    )
    await create_report(client, nurse, dissociation_report(resolved=False, outcome="ongoing"))


# --- adverse events ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"category": "suicidality"}, [("cssrs", "required")]),
        (
            {"category": "emergence_reaction"},
            [("rescue_medication", "required"), ("ed_transfer", "required")],
        ),
        ({"category": "vomiting"}, [("moaa_s", "required")]),
        ({"category": "urological"}, [("urological_symptoms", "required")]),
        (
            {"category": "urological", "urological_symptoms": []},
            [("urological_symptoms", "required")],
        ),
        ({"category": "fall", "phq9_item9": 1}, [("phq9_item9", "not_applicable")]),
        ({"category": "other", "moaa_s": 3}, [("moaa_s", "not_applicable")]),
        ({"category": "fever"}, [("category", "enum")]),
        ({"verbatim_term": ""}, [("verbatim_term", "length")]),
        ({"cssrs": {"q1": True}, "category": "suicidality"}, [("cssrs", "required")]),
    ],
)
async def test_each_category_has_its_own_fields(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    overrides: dict[str, Any],
    expected: list[tuple[str, str]],
) -> None:
    assert await rejected(client, db, nurse, adverse_report(**overrides)) == expected


async def test_an_adverse_event_needs_the_nurses_words(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    body = adverse_report()
    del body["verbatim_term"]
    assert await rejected(client, db, nurse, body) == [("verbatim_term", "required")]


async def test_a_suicidality_report_keeps_its_answers(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    answers = {**CSSRS_NO, "q2": True}
    view = await create_report(
        client,
        nurse,
        adverse_report(
            category="suicidality", cssrs=answers, verbatim_term="Says life is pointless"
        ),
    )
    assert view["body"]["cssrs"] == answers
    assert await fired(db, view["id"]) == {"suicidal-ideation": "high"}


# --- stock incidents and misuse concerns -------------------------------------------------


@pytest.mark.parametrize(
    "concern", ["theft", "loss", "inventory_discrepancy", "staff_suspected", "device_tampered"]
)
async def test_a_stock_concern_filed_as_misuse_names_stock_incident(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    concern: str,
) -> None:
    response = await post_report(client, nurse, misuse_report(concern_type=concern))
    assert ("concern_type", "use_stock_incident") in errors_of(response)
    message = next(e["message"] for e in response.json()["errors"] if e["field"] == "concern_type")
    assert "stock_incident" in message


@pytest.mark.parametrize("field", ["patient_ref", "seriousness", "outcome", "occurred_at"])
async def test_a_stock_incident_has_no_patient_fields(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str], field: str
) -> None:
    values: dict[str, Any] = {"patient_ref": "PT-1", "seriousness": [], "outcome": "unknown"}
    body = {**stock_report(), field: values.get(field, "2026-01-15T12:00:00Z")}
    errors = await rejected(client, db, nurse, body)
    assert errors == [(field, "unknown_field")]


async def test_a_stock_incident_discovered_in_the_future_is_refused(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    errors = await rejected(client, db, nurse, stock_report(discovered_at="2099-01-01T00:00:00Z"))
    assert errors == [("discovered_at", "not_in_future")]


async def test_a_dast10_score_is_0_to_10(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    assert await rejected(client, db, nurse, misuse_report(dast10_score=11)) == [
        ("dast10_score", "range")
    ]
    view = await create_report(client, nurse, misuse_report(dast10_score=0))
    assert view["body"]["dast10_score"] == 0


async def test_stock_incidents_are_listed_by_kind_and_never_by_patient(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    incident = await create_report(client, nurse, stock_report())
    await create_report(client, nurse, misuse_report(patient_ref="PT-003"))
    listed = await client.get(REPORTS, params={"kind": "stock_incident"}, headers=nurse)
    assert [r["id"] for r in listed.json()["items"]] == [incident["id"]]
    by_patient = await client.get(REPORTS, params={"patient_ref": "PT-003"}, headers=nurse)
    assert incident["id"] not in {r["id"] for r in by_patient.json()["items"]}


_STORE_LEGACY_THEFT = """
WITH template AS (
    SELECT clinic_id, created_by FROM reports WHERE id = $1::uuid
), report AS (
    INSERT INTO reports (id, clinic_id, kind, patient_ref, occurred_at, current_version,
                         created_by)
    SELECT $2::uuid, clinic_id, 'misuse_concern', 'PT-OLD', '2026-01-10T09:00:00Z', 1,
           created_by
    FROM template
)
INSERT INTO report_versions (report_id, version, body, created_by)
SELECT $2::uuid, 1, $3::jsonb, created_by FROM template
"""


async def legacy_theft(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> str:
    """A misuse concern of theft as stored before stock incidents existed (written
    directly: the API no longer accepts one)."""
    template = await create_report(client, nurse, misuse_report())
    report_id = str(uuid.uuid4())
    body = misuse_report(
        patient_ref="PT-OLD",
        occurred_at="2026-01-10T09:00:00Z",
        concern_type="theft",
        expected_quantity=10,
        actual_quantity=8,
        unit="ml",
    )
    await db.execute(_STORE_LEGACY_THEFT, template["id"], report_id, body)
    return report_id


async def test_a_stored_misuse_theft_stays_readable_and_amendable(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    report_id = await legacy_theft(client, db, nurse)
    read = await client.get(f"{REPORTS}/{report_id}", headers=nurse)
    assert read.status_code == 200, read.text
    assert (read.json()["kind"], read.json()["body"]["concern_type"]) == ("misuse_concern", "theft")
    response = await amend(client, nurse, report_id, {"reason": "recount", "actual_quantity": 7})
    assert response.status_code == 201, response.text
    amended = response.json()
    # Not converted: still a misuse concern of theft, under the theft rule as before.
    assert (amended["kind"], amended["body"]["concern_type"]) == ("misuse_concern", "theft")
    assert amended["body"]["actual_quantity"] == 7
    assert await fired(db, report_id) == {"controlled-substance-theft-or-loss": "critical"}


async def test_a_new_misuse_concern_cannot_become_a_theft_by_amendment(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    view = await create_report(client, nurse, misuse_report())
    response = await amend(
        client, nurse, view["id"], {"reason": "was a theft", "concern_type": "theft"}
    )
    assert ("concern_type", "use_stock_incident") in errors_of(response)


async def test_an_alert_on_a_stock_incident_names_no_patient(
    client: AsyncTestClient[Any], world: World, nurse: dict[str, str]
) -> None:
    view = await create_report(client, nurse, stock_report())
    await world.user("olga", "safety_officer", ["C1"])
    officer = await world.login("olga")
    listed = await client.get("/api/v1/alerts", headers=officer)
    (alert,) = listed.json()["items"]
    detail = await client.get(f"/api/v1/alerts/{alert['id']}", headers=officer)
    assert detail.status_code == 200, detail.text
    assert [(r["id"], r["patient_ref"]) for r in detail.json()["reports"]] == [(view["id"], None)]
