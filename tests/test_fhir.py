"""Reports as HL7 FHIR R5 AdverseEvents: each validated with fhir.resources, and mapped
to the values docs/clinical-rules.md gives."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from fhir.resources.adverseevent import AdverseEvent
from fhir.resources.bundle import Bundle
from litestar.testing import AsyncTestClient

from tests.helpers.reports import (
    REPORTS,
    amend,
    audit_rows,
    bp_report,
    create_report,
    dissociation_report,
    misuse_report,
)
from tests.helpers.world import World

SERIOUSNESS = "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness"
OUTCOME = "http://terminology.hl7.org/CodeSystem/adverse-event-outcome"
DOSE = "urn:safetyreport:fhir:extension:dose"
ROUTE = "urn:safetyreport:fhir:extension:route"
TIME_AFTER_DOSE = "urn:safetyreport:fhir:extension:time-after-dose"


@pytest.fixture
async def nurse(world: World) -> dict[str, str]:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    return await world.login("nina")


async def fhir_of(
    client: AsyncTestClient[Any], headers: dict[str, str], report_id: str
) -> dict[str, Any]:
    """The report's AdverseEvent, which must be a valid FHIR R5 resource."""
    response = await client.get(f"{REPORTS}/{report_id}/fhir", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    doc: dict[str, Any] = response.json()
    AdverseEvent.model_validate(doc)
    return doc


async def fhir_of_new(
    client: AsyncTestClient[Any], headers: dict[str, str], body: dict[str, Any]
) -> dict[str, Any]:
    created = await create_report(client, headers, body)
    return await fhir_of(client, headers, created["id"])


def utc(value: str) -> datetime:
    """A FHIR time, which must carry an explicit UTC offset."""
    assert value.endswith("+00:00"), value
    return datetime.fromisoformat(value)


def coding(concept: dict[str, Any]) -> tuple[str, str]:
    [only] = concept["coding"]
    return only["system"], only["code"]


def extensions(entity: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["url"]: e for e in entity.get("extension", [])}


# --- one report -------------------------------------------------------------------


async def test_a_185_over_104_reading_is_a_hypertensive_crisis(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    body = bp_report(
        systolic=185,
        diastolic=104,
        pulse=96,
        occurred_at="2026-01-15T10:40:00+01:00",
        outcome="ongoing",
        dose_mg=56,
        minutes_after_dose=40,
    )
    created = await create_report(client, nurse, body)
    doc = await fhir_of(client, nurse, created["id"])

    assert doc["resourceType"] == "AdverseEvent"
    assert doc["id"] == created["id"]
    assert doc["identifier"] == [{"system": "urn:safetyreport:report", "value": created["id"]}]
    assert doc["meta"]["versionId"] == "1"
    assert doc["actuality"] == "actual"
    assert doc["status"] == "in-progress"
    assert doc["code"] == {"text": "Hypertensive crisis"}
    assert "coding" not in doc["code"]  # MedDRA codes are licensed: the name only
    assert coding(doc["seriousness"]) == (SERIOUSNESS, "non-serious")
    assert [coding(o) for o in doc["outcome"]] == [(OUTCOME, "ongoing")]
    assert doc["category"][0]["coding"][0]["code"] == "blood_pressure"
    assert doc["subject"] == {
        "type": "Patient",
        "identifier": {"system": "urn:safetyreport:clinic:C1:patient", "value": "PT-001"},
    }
    assert doc["occurrenceDateTime"] == "2026-01-15T09:40:00+00:00"
    assert utc(doc["recordedDate"]) == datetime.fromisoformat(created["created_at"])
    assert doc["recorder"]["identifier"] == {"system": "urn:safetyreport:user", "value": "nina"}

    [suspect] = doc["suspectEntity"]
    assert suspect["instanceCodeableConcept"] == {"text": "Esketamine"}
    found = extensions(suspect)
    assert found[DOSE]["valueQuantity"] == {
        "value": 56,
        "unit": "mg",
        "system": "http://unitsofmeasure.org",
        "code": "mg",
    }
    assert found[ROUTE]["valueCodeableConcept"] == {"text": "Nasal"}
    assert found[TIME_AFTER_DOSE]["valueDuration"]["value"] == 40
    assert "contributingFactor" not in doc
    [findings] = doc["note"]
    assert "185/104 mmHg" in findings["text"]
    assert "pulse 96/min" in findings["text"]
    assert "grade 3" in findings["text"]


@pytest.mark.parametrize(
    ("systolic", "diastolic", "symptoms", "term"),
    [
        (130, 85, [], "Blood pressure increased"),  # CTCAE G1
        (150, 92, [], "Blood pressure increased"),  # G2
        (165, 95, [], "Hypertension"),  # G3
        (180, 110, [], "Hypertension"),  # G3, not above 180/120
        (181, 100, [], "Hypertensive crisis"),
        (170, 121, [], "Hypertensive crisis"),
        (150, 92, ["neurological_deficit"], "Hypertensive crisis"),  # G4
    ],
)
async def test_blood_pressure_term_follows_the_grade(
    client: AsyncTestClient[Any],
    nurse: dict[str, str],
    systolic: int,
    diastolic: int,
    symptoms: list[str],
    term: str,
) -> None:
    body = bp_report(systolic=systolic, diastolic=diastolic, symptoms=symptoms)
    doc = await fhir_of_new(client, nurse, body)
    assert doc["code"]["text"] == term


@pytest.mark.parametrize(
    ("overrides", "term"),
    [
        ({}, "Dissociation"),
        ({"moaa_s": 3}, "Sedation"),
        ({"moaa_s": 0, "severity": "severe"}, "Sedation"),
        ({"spo2": 90}, "Dissociation"),
        ({"spo2": 89}, "Respiratory depression"),
        ({"respiratory_depression": True, "moaa_s": 2}, "Respiratory depression"),
    ],
)
async def test_dissociation_term_names_the_gravest_finding(
    client: AsyncTestClient[Any], nurse: dict[str, str], overrides: dict[str, Any], term: str
) -> None:
    doc = await fhir_of_new(client, nurse, dissociation_report(cadss_total=12, **overrides))
    assert doc["code"]["text"] == term
    assert doc["category"][0]["coding"][0]["code"] == "dissociation"
    [findings] = doc["note"]
    assert "CADSS 12" in findings["text"]
    assert doc["suspectEntity"][0]["instanceCodeableConcept"] == {"text": "Ketamine"}
    route = extensions(doc["suspectEntity"][0])[ROUTE]
    assert route["valueCodeableConcept"] == {"text": "Intravenous"}


@pytest.mark.parametrize(
    ("concern_type", "term"),
    [
        ("theft", "Drug diversion"),
        ("loss", "Drug diversion"),
        ("inventory_discrepancy", "Drug diversion"),
        ("staff_suspected", "Drug diversion"),
        ("patient_behaviour", "Drug abuse"),
        ("device_tampered", "Intentional product misuse"),
    ],
)
async def test_misuse_concern_term_follows_the_concern(
    client: AsyncTestClient[Any], nurse: dict[str, str], concern_type: str, term: str
) -> None:
    body = misuse_report(concern_type=concern_type)
    if concern_type not in {"theft", "loss", "inventory_discrepancy"}:
        for name in ("expected_quantity", "actual_quantity", "unit"):
            del body[name]  # counts belong to losses only
    doc = await fhir_of_new(client, nurse, body)
    assert doc["code"]["text"] == term
    assert doc["category"][0]["coding"][0]["code"] == "misuse_concern"
    notes = [n["text"] for n in doc["note"]]
    assert notes[1] == "Two vials missing from the locked cabinet."


async def test_misuse_quantities_and_lot_are_in_the_findings(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    doc = await fhir_of_new(client, nurse, misuse_report(lot="LOT-7", narrative="Count at 18:00"))
    findings, description, narrative = (n["text"] for n in doc["note"])
    assert findings == "Concern: theft; expected 10 ml; counted 8 ml; lot LOT-7."
    assert description == "Two vials missing from the locked cabinet."
    assert narrative == "Count at 18:00"
    assert doc["suspectEntity"][0]["instanceCodeableConcept"] == {"text": "Ketamine"}
    assert DOSE not in extensions(doc["suspectEntity"][0])  # none reported


async def test_any_seriousness_criterion_makes_the_event_serious(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    body = bp_report(seriousness=["hospitalization", "life_threatening"])
    doc = await fhir_of_new(client, nurse, body)
    assert coding(doc["seriousness"]) == (SERIOUSNESS, "serious")
    assert doc["seriousness"]["text"] == (
        "Serious: hospitalisation (initial or prolonged), life-threatening"
    )


@pytest.mark.parametrize(
    ("outcome", "code", "status"),
    [
        ("resolved", "resolved", "completed"),
        ("recovering", "recovering", "in-progress"),
        ("ongoing", "ongoing", "in-progress"),
        ("resolved_with_sequelae", "resolvedWithSequelae", "completed"),
        ("fatal", "fatal", "completed"),
        ("unknown", "unknown", "unknown"),
    ],
)
async def test_outcome_and_status(
    client: AsyncTestClient[Any], nurse: dict[str, str], outcome: str, code: str, status: str
) -> None:
    doc = await fhir_of_new(client, nurse, dissociation_report(outcome=outcome))
    assert [coding(o) for o in doc["outcome"]] == [(OUTCOME, code)]
    assert doc["status"] == status


@pytest.mark.parametrize(
    ("drug", "substance", "route"),
    [
        ("esketamine_nasal", "Esketamine", "Nasal"),
        ("ketamine_iv", "Ketamine", "Intravenous"),
        ("ketamine_im", "Ketamine", "Intramuscular"),
        ("ketamine_oral", "Ketamine", "Oral"),
        ("other", "Other drug (not named in the report)", None),
    ],
)
async def test_suspect_drug_and_route(
    client: AsyncTestClient[Any],
    nurse: dict[str, str],
    drug: str,
    substance: str,
    route: str | None,
) -> None:
    doc = await fhir_of_new(client, nurse, bp_report(drug=drug))
    [suspect] = doc["suspectEntity"]
    assert suspect["instanceCodeableConcept"] == {"text": substance}
    routes = [e["valueCodeableConcept"]["text"] for e in suspect.get("extension", [])]
    assert routes == ([route] if route else [])


async def test_age_65_and_over_is_a_contributing_factor_to_a_pressure_rise(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    older = await fhir_of_new(client, nurse, bp_report(age_band="65_and_over"))
    younger = await fhir_of_new(client, nurse, bp_report(age_band="under_65"))
    assert older["contributingFactor"] == [{"itemCodeableConcept": {"text": "Age 65 or over"}}]
    assert "contributingFactor" not in younger


async def test_an_amended_report_shows_its_current_version(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    created = await create_report(
        client, nurse, bp_report(systolic=185, diastolic=85, outcome="ongoing")
    )
    change = {"reason": "re-measured", "systolic": 148, "outcome": "resolved"}
    response = await amend(client, nurse, created["id"], change)
    assert response.status_code == 201, response.text
    amended = response.json()

    doc = await fhir_of(client, nurse, created["id"])
    assert doc["meta"]["versionId"] == "2"
    assert utc(doc["meta"]["lastUpdated"]) == datetime.fromisoformat(amended["updated_at"])
    assert doc["code"]["text"] == "Blood pressure increased"
    assert [coding(o) for o in doc["outcome"]] == [(OUTCOME, "resolved")]
    assert doc["status"] == "completed"
    assert "148/85 mmHg" in doc["note"][0]["text"]
    # Still the report's first recording, by its first author.
    assert utc(doc["recordedDate"]) == datetime.fromisoformat(created["created_at"])
    assert doc["recorder"]["display"] == "nina"


async def test_times_are_utc_with_an_offset(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    doc = await fhir_of_new(client, nurse, bp_report(occurred_at="2026-01-15T23:30:00-05:00"))
    assert doc["occurrenceDateTime"] == "2026-01-16T04:30:00+00:00"
    for value in (doc["recordedDate"], doc["meta"]["lastUpdated"]):
        assert utc(value).utcoffset() == timedelta(0)


async def test_the_fhir_read_is_audited_like_a_read(world: World, nurse: dict[str, str]) -> None:
    created = await create_report(world.client, nurse, bp_report())
    await fhir_of(world.client, nurse, created["id"])
    [read] = await audit_rows(world.db, "report.read", created["id"])
    assert (read["actor"], read["clinic"], read["chain"]) == ("nina", "C1", "clinic:C1")


async def test_every_role_may_read_it(world: World, nurse: dict[str, str]) -> None:
    created = await create_report(world.client, nurse, misuse_report())
    await world.user("sam", "safety_officer", ["C1"])
    await world.user("audrey", "auditor", all_clinics=True)
    await world.user("root", "admin", ["C1"])
    for username in ("sam", "audrey", "root"):
        headers = await world.login(username)
        doc = await fhir_of(world.client, headers, created["id"])
        assert doc["id"] == created["id"]


async def test_an_unknown_id_is_404(client: AsyncTestClient[Any], nurse: dict[str, str]) -> None:
    response = await client.get(f"{REPORTS}/{uuid.uuid4()}/fhir", headers=nurse)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_it_needs_a_token(client: AsyncTestClient[Any], nurse: dict[str, str]) -> None:
    created = await create_report(client, nurse, bp_report())
    response = await client.get(f"{REPORTS}/{created['id']}/fhir")
    assert response.status_code == 401


# --- the FHIR export: a Bundle -----------------------------------------------------


async def fhir_bundle(
    client: AsyncTestClient[Any], headers: dict[str, str], **params: Any
) -> dict[str, Any]:
    response = await client.get(
        f"{REPORTS}/export", params={"format": "fhir", **params}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    doc: dict[str, Any] = response.json()
    Bundle.model_validate(doc)
    return doc


async def test_the_fhir_export_is_a_valid_bundle_of_adverse_events(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    created = [
        await create_report(client, nurse, bp_report(occurred_at="2026-01-15T08:00:00Z")),
        await create_report(client, nurse, dissociation_report(occurred_at="2026-01-15T09:00:00Z")),
        await create_report(client, nurse, misuse_report(occurred_at="2026-01-15T10:00:00Z")),
    ]
    bundle = await fhir_bundle(client, nurse)
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "collection"
    assert utc(bundle["timestamp"])
    entries = bundle["entry"]
    assert [e["resource"]["id"] for e in entries] == [c["id"] for c in created]
    for entry, report in zip(entries, created, strict=True):
        assert entry["fullUrl"] == f"urn:uuid:{report['id']}"
        AdverseEvent.model_validate(entry["resource"])
        assert entry["resource"] == await fhir_of(client, nurse, report["id"])
    terms = [e["resource"]["code"]["text"] for e in entries]
    assert terms == ["Blood pressure increased", "Dissociation", "Drug diversion"]


async def test_an_empty_fhir_export_is_a_valid_bundle_without_entries(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    await create_report(client, nurse, bp_report())
    bundle = await fhir_bundle(client, nurse, kind="dissociation")
    assert "entry" not in bundle  # FHIR forbids empty arrays
    assert bundle["type"] == "collection"


async def test_the_fhir_export_shows_current_versions(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    created = await create_report(client, nurse, bp_report(systolic=185, diastolic=85))
    response = await amend(client, nurse, created["id"], {"reason": "typo", "systolic": 125})
    assert response.status_code == 201, response.text
    [entry] = (await fhir_bundle(client, nurse))["entry"]
    assert entry["resource"]["meta"]["versionId"] == "2"
    assert entry["resource"]["code"]["text"] == "Blood pressure increased"
