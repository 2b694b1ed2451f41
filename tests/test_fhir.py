"""Reports as HL7 FHIR R5 AdverseEvents: each validated with fhir.resources, and mapped
to the values docs/clinical-rules.md gives."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from fhir.resources.adverseevent import AdverseEvent
from fhir.resources.bundle import Bundle
from fhir.resources.observation import Observation
from litestar.testing import AsyncTestClient

from tests.helpers.reports import (
    REPORTS,
    adverse_report,
    amend,
    audit_rows,
    bp_report,
    create_report,
    dissociation_report,
    misuse_report,
    stock_report,
)
from tests.helpers.world import World

SERIOUSNESS = "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness"
OUTCOME = "http://terminology.hl7.org/CodeSystem/adverse-event-outcome"
DOSE = "urn:safetyreport:fhir:extension:dose"
ROUTE = "urn:safetyreport:fhir:extension:route"
TIME_AFTER_DOSE = "urn:safetyreport:fhir:extension:time-after-dose"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
VITAL_SIGNS = ("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs")
READING_GRADE = "Hypertension reading grade (CTCAE v5.0, one reading): "
SUGGESTED = "Suggested MedDRA preferred term: "


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
    for contained in doc.get("contained", []):
        Observation.model_validate(contained)
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


def note_texts(doc: dict[str, Any]) -> list[str]:
    return [n["text"] for n in doc["note"]]


def supporting(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Observations ``supportingInfo`` points to, by LOINC code; every reference
    must resolve to a contained resource, and every contained resource be referenced."""
    contained = {resource["id"]: resource for resource in doc.get("contained", [])}
    references = [info["itemReference"]["reference"] for info in doc.get("supportingInfo", [])]
    assert all(ref.startswith("#") for ref in references), references
    assert sorted(ref[1:] for ref in references) == sorted(contained)
    found: dict[str, dict[str, Any]] = {}
    for resource in contained.values():
        assert resource["resourceType"] == "Observation"
        codes = [c["code"] for c in resource["code"]["coding"] if c["system"] == LOINC]
        found[codes[-1]] = resource
    return found


def quantity(value: dict[str, Any]) -> tuple[Any, str, str]:
    assert value["system"] == UCUM
    return value["value"], value["code"], value["unit"]


async def store_legacy_concern(
    db: asyncpg.Connection[Any], report_id: str, changes: dict[str, Any]
) -> None:
    """Give a stored misuse concern a version as filed before stock incidents existed
    (theft and the like), which the API no longer accepts but stored reports keep."""
    await db.execute(
        """
        INSERT INTO report_versions (report_id, version, body, hypertension_reading_grade,
                                     reason, created_by)
        SELECT report_id, 2, body || $2::jsonb, hypertension_reading_grade, 'legacy', created_by
        FROM report_versions WHERE report_id = $1::uuid AND version = 1
        """,
        report_id,
        changes,
    )
    await db.execute("UPDATE reports SET current_version = 2 WHERE id = $1::uuid", report_id)


# --- one report -------------------------------------------------------------------


async def test_a_185_over_104_reading_is_a_hypertensive_urgency(
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
    # 180/120 or above without a target-organ symptom: no emergency (docs/clinical-rules.md).
    assert doc["code"] == {"text": "Hypertensive urgency"}
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
    findings, grade = note_texts(doc)
    assert "185/104 mmHg (post-dose)" in findings
    assert "pulse 96/min" in findings
    assert "CTCAE" not in findings
    # The grade of this one reading, named for what it is.
    assert grade == f"{READING_GRADE}{created['hypertension_reading_grade']}"
    assert created["hypertension_reading_grade"] == 3
    assert sorted(supporting(doc)) == ["85354-9", "8867-4"]


@pytest.mark.parametrize(
    ("overrides", "term"),
    [
        ({"systolic": 130, "diastolic": 85}, "Blood pressure increased"),  # grade 1
        ({"systolic": 150, "diastolic": 92}, "Blood pressure increased"),  # grade 2
        ({"systolic": 159, "diastolic": 99}, "Blood pressure increased"),
        ({"systolic": 160, "diastolic": 95}, "Hypertension"),  # grade 3
        ({"systolic": 150, "diastolic": 100}, "Hypertension"),
        ({"systolic": 179, "diastolic": 119}, "Hypertension"),
        ({"systolic": 180, "diastolic": 110}, "Hypertensive urgency"),
        ({"systolic": 170, "diastolic": 120}, "Hypertensive urgency"),
        # A target-organ symptom makes 180/120 an emergency (grade 4), and only 180/120.
        ({"systolic": 180, "diastolic": 110, "symptoms": ["chest_pain"]}, "Hypertensive emergency"),
        ({"systolic": 170, "diastolic": 120, "symptoms": ["seizure"]}, "Hypertensive emergency"),
        ({"systolic": 179, "diastolic": 119, "symptoms": ["chest_pain"]}, "Hypertension"),
        (
            {"systolic": 150, "diastolic": 92, "symptoms": ["neurological_deficit"]},
            "Blood pressure increased",
        ),
        ({"systolic": 89, "diastolic": 70}, "Hypotension"),
        ({"systolic": 110, "diastolic": 59}, "Hypotension"),
        ({"systolic": 90, "diastolic": 60}, "Blood pressure measurement"),
        ({"systolic": 110, "diastolic": 70, "syncope": True}, "Syncope"),
        ({"systolic": 110, "diastolic": 70, "syncope": False}, "Blood pressure measurement"),
        ({"systolic": 110, "diastolic": 70, "pulse": 49}, "Bradycardia"),
        ({"systolic": 110, "diastolic": 70, "pulse": 50}, "Blood pressure measurement"),
        ({"systolic": 110, "diastolic": 70, "pulse": 131}, "Tachycardia"),
        ({"systolic": 110, "diastolic": 70, "pulse": 130}, "Blood pressure measurement"),
    ],
)
async def test_blood_pressure_term_follows_the_reading(
    client: AsyncTestClient[Any], nurse: dict[str, str], overrides: dict[str, Any], term: str
) -> None:
    doc = await fhir_of_new(client, nurse, bp_report(**overrides))
    assert doc["code"]["text"] == term


@pytest.mark.parametrize(
    ("overrides", "term"),
    [
        ({}, "Dissociation"),
        ({"moaa_s": 3}, "Sedation"),
        ({"moaa_s": 0, "severity": "severe"}, "Sedation"),
        ({"spo2": 90}, "Dissociation"),
        ({"spo2": 89}, "Respiratory depression"),
        ({"respiratory_rate": 8}, "Dissociation"),
        ({"respiratory_rate": 7}, "Respiratory depression"),
        ({"respiratory_depression": True, "moaa_s": 2}, "Respiratory depression"),
    ],
)
async def test_dissociation_term_names_the_gravest_finding(
    client: AsyncTestClient[Any], nurse: dict[str, str], overrides: dict[str, Any], term: str
) -> None:
    doc = await fhir_of_new(client, nurse, dissociation_report(cadss_total=12, **overrides))
    assert doc["code"]["text"] == term
    assert doc["category"][0]["coding"][0]["code"] == "dissociation"
    [findings] = note_texts(doc)
    assert "CADSS 12" in findings
    assert doc["suspectEntity"][0]["instanceCodeableConcept"] == {"text": "Ketamine"}
    route = extensions(doc["suspectEntity"][0])[ROUTE]
    assert route["valueCodeableConcept"] == {"text": "Intravenous"}


@pytest.mark.parametrize(
    ("concern_type", "term"),
    [
        ("patient_behaviour", "Drug abuse"),
        ("drug_seeking", "Drug seeking behaviour"),
        ("extra_dose_request", "Drug seeking behaviour"),
        ("patient_tampering", "Intentional product misuse"),
        ("positive_drug_screen", "Drug screen positive"),
    ],
)
async def test_misuse_concern_term_follows_the_concern(
    client: AsyncTestClient[Any], nurse: dict[str, str], concern_type: str, term: str
) -> None:
    doc = await fhir_of_new(client, nurse, misuse_report(concern_type=concern_type))
    assert doc["code"]["text"] == term
    assert doc["category"][0]["coding"][0]["code"] == "misuse_concern"
    findings, description = note_texts(doc)
    assert findings == f"Concern: {concern_type.replace('_', ' ')}."
    assert description == "Asked for an extra dose before the session."


async def test_a_dast10_score_is_in_the_findings(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    doc = await fhir_of_new(client, nurse, misuse_report(dast10_score=4))
    assert note_texts(doc)[0] == "Concern: drug seeking; DAST-10 4."


@pytest.mark.parametrize(
    ("concern_type", "term"),
    [
        ("theft", "Drug diversion"),
        ("loss", "Drug diversion"),
        ("inventory_discrepancy", "Drug diversion"),
        ("staff_suspected", "Drug diversion"),
        ("device_tampered", "Intentional product misuse"),
    ],
)
async def test_a_stored_stock_concern_keeps_its_fhir_view(
    world: World, nurse: dict[str, str], concern_type: str, term: str
) -> None:
    """Misuse concerns filed for stock before stock incidents existed stay readable."""
    created = await create_report(world.client, nurse, misuse_report())
    await store_legacy_concern(world.db, created["id"], {"concern_type": concern_type})
    doc = await fhir_of(world.client, nurse, created["id"])
    assert doc["code"]["text"] == term
    assert doc["subject"]["identifier"]["value"] == "PT-003"


async def test_stored_stock_quantities_and_lot_are_in_the_findings(
    world: World, nurse: dict[str, str]
) -> None:
    created = await create_report(world.client, nurse, misuse_report(narrative="Count at 18:00"))
    legacy = {
        "concern_type": "theft",
        "expected_quantity": 10,
        "actual_quantity": 8,
        "unit": "ml",
        "lot": "LOT-7",
        "description": "Two vials missing from the locked cabinet.",
    }
    await store_legacy_concern(world.db, created["id"], legacy)
    doc = await fhir_of(world.client, nurse, created["id"])
    findings, description, narrative = note_texts(doc)
    assert findings == "Concern: theft; expected 10 ml; counted 8 ml; lot LOT-7."
    assert description == "Two vials missing from the locked cabinet."
    assert narrative == "Count at 18:00"
    assert doc["suspectEntity"][0]["instanceCodeableConcept"] == {"text": "Ketamine"}
    assert DOSE not in extensions(doc["suspectEntity"][0])  # none reported


# --- adverse events: the nurse's words, and a suggested term beside them ----------------


@pytest.mark.parametrize(
    ("fields", "suggested"),
    [
        (
            {
                "category": "suicidality",
                "cssrs": {
                    "q1": True,
                    "q2": True,
                    "q3": False,
                    "q4": False,
                    "q5": False,
                    "q6": False,
                },
            },
            "Suicidal ideation",
        ),
        (
            {
                "category": "suicidality",
                "cssrs": {"q1": True, "q2": True, "q3": True, "q4": True, "q5": True, "q6": False},
            },
            "Suicidal ideation",
        ),
        (
            {
                "category": "suicidality",
                "cssrs": {
                    "q1": False,
                    "q2": False,
                    "q3": False,
                    "q4": False,
                    "q5": False,
                    "q6": True,
                },
            },
            "Suicidal behaviour",
        ),
        ({"category": "suicidality", "phq9_item9": 2}, "Suicidal ideation"),
        (
            {"category": "emergence_reaction", "rescue_medication": True, "ed_transfer": False},
            "Agitation",
        ),
        ({"category": "vomiting", "moaa_s": 3}, "Vomiting"),
        ({"category": "fall"}, "Fall"),
        (
            {"category": "urological", "urological_symptoms": ["dysuria", "haematuria"]},
            "Haematuria",
        ),
        ({"category": "urological", "urological_symptoms": ["pelvic_pain", "dysuria"]}, "Dysuria"),
        ({"category": "urological", "urological_symptoms": ["frequency"]}, "Pollakiuria"),
        ({"category": "urological", "urological_symptoms": ["pelvic_pain"]}, "Pelvic pain"),
        ({"category": "pregnancy_exposure"}, "Exposure during pregnancy"),
    ],
)
async def test_an_adverse_event_is_named_in_the_nurses_words(
    client: AsyncTestClient[Any], nurse: dict[str, str], fields: dict[str, Any], suggested: str
) -> None:
    verbatim = "Patient said: =everything feels far away"
    doc = await fhir_of_new(client, nurse, adverse_report(verbatim_term=verbatim, **fields))
    assert doc["code"] == {"text": verbatim}
    assert doc["category"][0]["coding"][0]["code"] == "adverse_event"
    assert f"{SUGGESTED}{suggested}" in note_texts(doc)
    assert note_texts(doc)[0].startswith(f"Category: {fields['category'].replace('_', ' ')}")


async def test_an_adverse_event_of_another_category_gets_no_suggestion(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    doc = await fhir_of_new(
        client, nurse, adverse_report(category="other", verbatim_term="Metallic taste")
    )
    assert doc["code"] == {"text": "Metallic taste"}
    assert not [text for text in note_texts(doc) if text.startswith(SUGGESTED)]


async def test_the_category_fields_are_in_the_findings(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    cssrs = {"q1": True, "q2": False, "q3": False, "q4": True, "q5": False, "q6": True}
    body = adverse_report(category="suicidality", cssrs=cssrs, phq9_item9=1)
    doc = await fhir_of_new(client, nurse, body)
    assert note_texts(doc)[0] == "Category: suicidality; C-SSRS yes: q1, q4, q6; PHQ-9 item 9: 1."

    body = adverse_report(category="emergence_reaction", rescue_medication=True, ed_transfer=True)
    doc = await fhir_of_new(client, nurse, body)
    assert note_texts(doc)[0] == (
        "Category: emergence reaction; rescue medication; transferred to an emergency department."
    )


# --- the readings: contained vital-signs Observations ---------------------------------


async def test_the_readings_are_contained_vital_sign_observations(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    body = bp_report(
        systolic=142, diastolic=91, pulse=88, respiratory_rate=14, spo2=97, phase="pre_dose"
    )
    doc = await fhir_of_new(client, nurse, body)
    found = supporting(doc)
    assert sorted(found) == ["59408-5", "85354-9", "8867-4", "9279-1"]
    for observation in found.values():
        assert observation["status"] == "final"
        assert [coding(c) for c in observation["category"]] == [VITAL_SIGNS]
        # The same patient as the event, at the time of the event.
        assert observation["subject"] == doc["subject"]
        assert observation["effectiveDateTime"] == doc["occurrenceDateTime"]

    bp = found["85354-9"]
    assert "valueQuantity" not in bp
    components = {
        c["code"]["coding"][0]["code"]: quantity(c["valueQuantity"]) for c in bp["component"]
    }
    assert components == {"8480-6": (142, "mm[Hg]", "mmHg"), "8462-4": (91, "mm[Hg]", "mmHg")}
    assert bp["note"] == [{"text": "Measured pre-dose"}]
    assert quantity(found["8867-4"]["valueQuantity"]) == (88, "/min", "beats/minute")
    assert quantity(found["9279-1"]["valueQuantity"]) == (14, "/min", "breaths/minute")
    assert quantity(found["59408-5"]["valueQuantity"]) == (97, "%", "%")
    # The oxygen saturation profile's own code, and how it was measured.
    spo2_codes = [c["code"] for c in found["59408-5"]["code"]["coding"]]
    assert spo2_codes == ["2708-6", "59408-5"]


@pytest.mark.parametrize(
    ("body", "codes"),
    [
        (dissociation_report(spo2=93, respiratory_rate=9), ["59408-5", "9279-1"]),
        (dissociation_report(), []),
        (adverse_report(systolic=100, diastolic=58, pulse=45), ["85354-9", "8867-4"]),
        (misuse_report(pulse=110), ["8867-4"]),
        (adverse_report(), []),
    ],
)
async def test_every_patient_kind_carries_its_readings(
    client: AsyncTestClient[Any], nurse: dict[str, str], body: dict[str, Any], codes: list[str]
) -> None:
    doc = await fhir_of_new(client, nurse, body)
    assert sorted(supporting(doc)) == codes
    if not codes:
        # FHIR forbids empty arrays.
        assert "contained" not in doc
        assert "supportingInfo" not in doc


async def test_a_reading_on_another_kind_has_its_grade_and_findings(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    body = adverse_report(systolic=150, diastolic=85, syncope=True, respiratory_rate=12)
    created = await create_report(client, nurse, body)
    assert created["hypertension_reading_grade"] == 2
    doc = await fhir_of(client, nurse, created["id"])
    findings, grade, suggested = note_texts(doc)
    assert findings == (
        "Category: fall; Blood pressure 150/85 mmHg; respiratory rate 12/min; syncope."
    )
    assert grade == f"{READING_GRADE}2"
    assert suggested == f"{SUGGESTED}Fall"


async def test_a_report_without_a_pressure_has_no_grade(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    doc = await fhir_of_new(client, nurse, dissociation_report(pulse=70))
    assert not [text for text in note_texts(doc) if text.startswith(READING_GRADE)]


async def test_a_weight_based_dose_is_shown_per_kilogram(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    body = dissociation_report(dose_mg=35, weight_kg=70, infusion_minutes=40)
    doc = await fhir_of_new(client, nurse, body)
    assert note_texts(doc)[0].endswith("; dose 0.5 mg/kg (weight 70 kg); infused over 40 minutes.")
    dose = extensions(doc["suspectEntity"][0])[DOSE]["valueQuantity"]
    assert (dose["value"], dose["code"]) == (35, "mg")


# --- stock incidents: no patient, no AdverseEvent ------------------------------------


async def test_a_stock_incident_has_no_adverse_event(world: World, nurse: dict[str, str]) -> None:
    created = await create_report(world.client, nurse, stock_report())
    response = await world.client.get(f"{REPORTS}/{created['id']}/fhir", headers=nurse)
    assert response.status_code == 409, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert (problem["status"], problem["title"]) == (409, "Conflict")
    assert "stock incident" in problem["detail"]
    assert "no patient" in problem["detail"]
    assert created["id"] in problem["detail"]
    assert "resourceType" not in problem
    # Recorded like any read of the report: the answer says it exists and what it is.
    [read] = await audit_rows(world.db, "report.read", created["id"])
    assert (read["actor"], read["clinic"], read["chain"]) == ("nina", "C1", "clinic:C1")


async def test_the_fhir_view_documents_its_409(client: AsyncTestClient[Any]) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    responses = schema["paths"]["/api/v1/reports/{report_id}/fhir"]["get"]["responses"]
    assert "409" in responses
    assert "stock incident" in responses["409"]["description"]


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
    body = dissociation_report(
        outcome=outcome,
        resolved=outcome != "ongoing",
        seriousness=["death"] if outcome == "fatal" else [],
    )
    doc = await fhir_of_new(client, nurse, body)
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
    assert (await fhir_of(client, nurse, created["id"]))["code"]["text"] == "Hypertensive urgency"
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
    systolic = supporting(doc)["85354-9"]["component"][0]["valueQuantity"]["value"]
    assert systolic == 148
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
        await create_report(
            client, nurse, adverse_report(occurred_at="2026-01-15T11:00:00Z", spo2=95)
        ),
    ]
    stock = await create_report(client, nurse, stock_report(discovered_at="2026-01-15T09:30:00Z"))
    bundle = await fhir_bundle(client, nurse)
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "collection"
    assert utc(bundle["timestamp"])
    entries = bundle["entry"]
    # The stock incident, between them in time, is left out: it has no AdverseEvent.
    assert [e["resource"]["id"] for e in entries] == [c["id"] for c in created]
    assert stock["id"] not in str(bundle)
    for entry, report in zip(entries, created, strict=True):
        assert entry["fullUrl"] == f"urn:uuid:{report['id']}"
        AdverseEvent.model_validate(entry["resource"])
        assert entry["resource"] == await fhir_of(client, nurse, report["id"])
    terms = [e["resource"]["code"]["text"] for e in entries]
    assert terms == [
        "Blood pressure increased",
        "Dissociation",
        "Drug seeking behaviour",
        "Slipped getting up from the chair, bruised knee",
    ]
    assert sorted(supporting(entries[3]["resource"])) == ["59408-5"]


async def test_a_fhir_export_of_stock_incidents_only_is_empty(
    world: World, nurse: dict[str, str]
) -> None:
    await create_report(world.client, nurse, stock_report())
    for params in ({}, {"kind": "stock_incident"}):
        bundle = await fhir_bundle(world.client, nurse, **params)
        assert "entry" not in bundle
    # Recorded as sent nothing.
    ended = await audit_rows(world.db, "report.exported")
    assert [entry["details"]["count"] for entry in ended] == [0, 0]


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
