"""Treatment sessions as HL7 FHIR R5 (issue 15): the session an Encounter, the dose a
MedicationAdministration, the readings Observations with the LOINC codes of
docs/clinical-rules.md, in a Bundle whose references resolve; a linked report's
AdverseEvent refers to them. Every resource validated with fhir.resources."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from fhir.resources.adverseevent import AdverseEvent
from fhir.resources.bundle import Bundle
from fhir.resources.encounter import Encounter
from fhir.resources.medicationadministration import MedicationAdministration
from fhir.resources.observation import Observation
from litestar.testing import AsyncTestClient

from tests.helpers.reports import REPORTS, audit_rows, bp_report, create_report
from tests.helpers.sessions import SESSIONS, Headers, post, session_body
from tests.helpers.world import World

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SESSION_SYSTEM = "urn:safetyreport:treatment-session"
SCORE_SYSTEM = "urn:safetyreport:score"
MODELS: dict[str, Any] = {
    "Encounter": Encounter,
    "MedicationAdministration": MedicationAdministration,
    "Observation": Observation,
}


@pytest.fixture
async def users(world: World) -> dict[str, Headers]:
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("nina", "nurse", ["C1"])
    await world.user("nora", "nurse", ["C2"])
    await world.user("aude", "auditor", ["C1"])
    return {name: await world.login(name) for name in ("nina", "nora", "aude")}


async def step(
    client: AsyncTestClient[Any], path: str, headers: Headers, body: Any
) -> dict[str, Any]:
    response = await post(client, path, headers, body)
    assert response.status_code in (200, 201), response.text
    answer: dict[str, Any] = response.json()
    return answer


async def whole_session(
    client: AsyncTestClient[Any], nina: Headers, dosed_at: datetime, patient: str = "PT-1"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A session with checklist, dose, one observation at 40 minutes and discharge: the
    closed session and the observation."""
    opened = await step(client, SESSIONS, nina, session_body(patient, weight_kg=70))
    path = f"{SESSIONS}/{opened['id']}"
    await step(
        client,
        f"{path}/dose",
        nina,
        {"dose_mg": 56, "dosed_at": dosed_at.isoformat(), "lot": "LOT-7"},
    )
    observation = await step(
        client,
        f"{path}/observations",
        nina,
        {
            "observed_at": (dosed_at + timedelta(minutes=40)).isoformat(),
            "systolic": 152,
            "diastolic": 92,
            "pulse": 88,
            "respiratory_rate": 14,
            "spo2": 97,
            "moaa_s": 4,
            "cadss_total": 6,
        },
    )
    closed = await step(
        client,
        f"{path}/discharge",
        nina,
        {
            "discharged_at": (dosed_at + timedelta(minutes=130)).isoformat(),
            "moaa_s": 5,
            "systolic": 128,
            "diastolic": 82,
            "escort": True,
        },
    )
    return closed, observation


async def bundle_of(
    client: AsyncTestClient[Any], headers: Headers, session_id: str
) -> dict[str, Any]:
    """The session's Bundle: valid FHIR R5, each resource valid on its own, each
    ``fullUrl`` the ``urn:uuid`` of its resource's id, every reference resolving to an
    entry."""
    response = await client.get(f"{SESSIONS}/{session_id}/fhir", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    doc: dict[str, Any] = response.json()
    Bundle.model_validate(doc)
    assert doc["type"] == "collection"
    full_urls = set()
    for entry in doc["entry"]:
        resource = entry["resource"]
        MODELS[resource["resourceType"]].model_validate(resource)
        assert entry["fullUrl"] == f"urn:uuid:{uuid.UUID(resource['id'])}"
        full_urls.add(entry["fullUrl"])
    for entry in doc["entry"]:
        for field in ("encounter",):
            if field in entry["resource"]:
                assert entry["resource"][field]["reference"] in full_urls
    return doc


def of_type(doc: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == resource_type]


def utc(value: str) -> datetime:
    assert value.endswith("+00:00"), value
    return datetime.fromisoformat(value)


def quantity(value: dict[str, Any]) -> tuple[Any, str]:
    assert value["system"] == UCUM
    return value["value"], value["code"]


def readings_at(observations: list[dict[str, Any]], at: datetime) -> dict[str, Any]:
    """The values of the Observations taken at ``at``, by LOINC code (or score code)."""
    found: dict[str, Any] = {}
    for observation in observations:
        if utc(observation["effectiveDateTime"]) != at:
            continue
        codes = [c["code"] for c in observation["code"]["coding"]]
        if "85354-9" in codes:
            assert observation["meta"]["profile"] == ["http://hl7.org/fhir/StructureDefinition/bp"]
            for component in observation["component"]:
                [code] = [c["code"] for c in component["code"]["coding"]]
                found[code] = quantity(component["valueQuantity"])
            found["phase"] = observation["note"][0]["text"]
        elif observation["code"]["coding"][0]["system"] == SCORE_SYSTEM:
            assert observation["category"][0]["coding"][0]["code"] == "survey"
            found[codes[0]] = observation["valueInteger"]
        else:
            assert observation["category"][0]["coding"][0]["code"] == "vital-signs"
            found[codes[0]] = quantity(observation["valueQuantity"])
            if codes[0] == "2708-6":
                assert codes == ["2708-6", "59408-5"]
    return found


async def test_a_session_is_an_encounter_a_medication_administration_and_observations(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    dosed_at = (datetime.now(UTC) - timedelta(minutes=150)).replace(microsecond=0)
    closed, observation = await whole_session(client, users["nina"], dosed_at)
    session_id = closed["id"]
    doc = await bundle_of(client, users["aude"], session_id)
    here = f"urn:uuid:{session_id}"
    subject = {
        "type": "Patient",
        "identifier": {"system": "urn:safetyreport:clinic:C1:patient", "value": "PT-1"},
    }

    [encounter] = of_type(doc, "Encounter")
    assert doc["entry"][0]["resource"] == encounter
    assert encounter["id"] == session_id
    assert encounter["identifier"] == [{"system": SESSION_SYSTEM, "value": session_id}]
    assert encounter["status"] == "completed"
    [klass] = encounter["class"]
    assert klass["coding"][0]["code"] == "AMB"
    assert klass["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    assert encounter["subject"] == subject
    period = encounter["actualPeriod"]
    assert utc(period["start"]) == datetime.fromisoformat(closed["created_at"])
    assert utc(period["end"]) == dosed_at + timedelta(minutes=130)

    [given] = of_type(doc, "MedicationAdministration")
    assert given["status"] == "completed"
    assert given["medication"] == {"concept": {"text": "Esketamine"}}
    assert given["subject"] == subject
    assert given["encounter"]["reference"] == here
    assert utc(given["occurenceDateTime"]) == dosed_at
    assert quantity(given["dosage"]["dose"]) == (56, "mg")
    assert given["dosage"]["route"] == {"text": "Nasal"}
    assert "0.8 mg/kg" in given["dosage"]["text"]
    assert {"text": "Lot LOT-7"} in given["note"]

    observations = of_type(doc, "Observation")
    for resource in observations:
        assert resource["status"] == "final"
        assert resource["subject"] == subject
        assert resource["encounter"]["reference"] == here
    at_40 = readings_at(observations, datetime.fromisoformat(observation["observed_at"]))
    assert at_40 == {
        "8480-6": (152, "mm[Hg]"),
        "8462-4": (92, "mm[Hg]"),
        "phase": "Measured post-dose",
        "8867-4": (88, "/min"),
        "9279-1": (14, "/min"),
        "2708-6": (97, "%"),
        "moaa-s": 4,
        "cadss": 6,
    }
    # The checklist's pressure (pre-dose, at opening) and the discharge reading too.
    assert readings_at(observations, datetime.fromisoformat(closed["created_at"])) == {
        "8480-6": (122, "mm[Hg]"),
        "8462-4": (78, "mm[Hg]"),
        "phase": "Measured pre-dose",
    }
    assert readings_at(observations, dosed_at + timedelta(minutes=130)) == {
        "8480-6": (128, "mm[Hg]"),
        "8462-4": (82, "mm[Hg]"),
        "phase": "Measured at discharge",
        "moaa-s": 5,
    }
    assert len(observations) == 1 + 6 + 2

    # Ids are derived: a second read gives the same resources.
    again = await bundle_of(client, users["aude"], session_id)
    assert again["entry"] == doc["entry"]
    # Audited as a read of the session, in the clinic's chain.
    rows = await audit_rows(db, "session.read", session_id)
    assert [(r["chain"], r["actor"]) for r in rows] == [("clinic:C1", "aude")] * 2


async def test_an_open_session_before_and_after_its_dose(
    client: AsyncTestClient[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    opened = await step(client, SESSIONS, nina, session_body(drug="ketamine_iv", weight_kg=70))
    doc = await bundle_of(client, nina, opened["id"])
    [encounter] = of_type(doc, "Encounter")
    assert encounter["status"] == "in-progress"
    assert "end" not in encounter["actualPeriod"]
    assert of_type(doc, "MedicationAdministration") == []
    assert len(of_type(doc, "Observation")) == 1  # the checklist's pressure

    dosed_at = (datetime.now(UTC) - timedelta(minutes=30)).replace(microsecond=0)
    await step(
        client,
        f"{SESSIONS}/{opened['id']}/dose",
        nina,
        {"dose_mg": 35, "dosed_at": dosed_at.isoformat(), "infusion_minutes": 40},
    )
    doc = await bundle_of(client, nina, opened["id"])
    [given] = of_type(doc, "MedicationAdministration")
    assert given["medication"] == {"concept": {"text": "Ketamine"}}
    assert given["dosage"]["route"] == {"text": "Intravenous"}
    assert quantity(given["dosage"]["dose"]) == (35, "mg")
    assert {"text": "Infused over 40 minutes"} in given["note"]
    assert of_type(doc, "Encounter")[0]["status"] == "in-progress"


async def adverse_event_of(
    client: AsyncTestClient[Any], headers: Headers, report_id: str
) -> dict[str, Any]:
    response = await client.get(f"{REPORTS}/{report_id}/fhir", headers=headers)
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    AdverseEvent.model_validate(doc)
    for contained in doc.get("contained", []):
        Observation.model_validate(contained)
    return doc


async def test_a_linked_reports_adverse_event_refers_to_the_sessions_resources(
    client: AsyncTestClient[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    dosed_at = (datetime.now(UTC) - timedelta(minutes=150)).replace(microsecond=0)
    closed, _ = await whole_session(client, nina, dosed_at, patient="PT-L")
    session_id = closed["id"]
    report = await create_report(
        client,
        nina,
        bp_report(
            patient_ref="PT-L",
            session_id=session_id,
            occurred_at=(dosed_at + timedelta(minutes=40)).isoformat(),
            pulse=88,
        ),
    )
    event = await adverse_event_of(client, users["aude"], report["id"])
    doc = await bundle_of(client, users["aude"], session_id)
    by_type = {kind: {f"urn:uuid:{r['id']}" for r in of_type(doc, kind)} for kind in MODELS}

    assert event["encounter"] == {
        "reference": f"urn:uuid:{session_id}",
        "type": "Encounter",
        "identifier": {"system": SESSION_SYSTEM, "value": session_id},
    }
    assert {event["encounter"]["reference"]} == by_type["Encounter"]
    [suspect] = event["suspectEntity"]
    instance = suspect["instanceReference"]
    assert instance["type"] == "MedicationAdministration"
    assert instance["display"] == "Esketamine"
    assert {instance["reference"]} == by_type["MedicationAdministration"]
    # Dose and route stay as extensions, as for any report.
    assert "instanceCodeableConcept" not in suspect
    references = [info["itemReference"]["reference"] for info in event["supportingInfo"]]
    # The report's own readings stay contained; the session's are referred to.
    contained = {f"#{c['id']}" for c in event["contained"]}
    assert contained == {"#bp", "#heart-rate"}
    assert set(references) == contained | by_type["Observation"]
    assert len(references) == len(set(references))
    for reference in event["supportingInfo"][len(contained) :]:
        assert reference["itemReference"]["type"] == "Observation"
    # The report export's FHIR Bundle gives the same AdverseEvent, references included.
    exported = await client.get(
        f"{REPORTS}/export", params={"format": "fhir"}, headers=users["aude"]
    )
    assert exported.status_code == 200, exported.text
    Bundle.model_validate(exported.json())
    [entry] = exported.json()["entry"]
    assert entry["resource"] == event


async def test_a_report_linked_to_a_session_not_yet_dosed_names_the_drug(
    client: AsyncTestClient[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    opened = await step(client, SESSIONS, nina, session_body("PT-P", weight_kg=70))
    report = await create_report(
        client,
        nina,
        bp_report(patient_ref="PT-P", session_id=opened["id"], phase="pre_dose"),
    )
    event = await adverse_event_of(client, nina, report["id"])
    assert event["encounter"]["reference"] == f"urn:uuid:{opened['id']}"
    [suspect] = event["suspectEntity"]
    assert suspect["instanceCodeableConcept"] == {"text": "Esketamine"}
    checklist = of_type(await bundle_of(client, nina, opened["id"]), "Observation")
    references = {info["itemReference"]["reference"] for info in event["supportingInfo"]}
    assert references == {"#bp"} | {f"urn:uuid:{o['id']}" for o in checklist}
    # A report without a session has neither encounter nor session references.
    plain = await create_report(client, nina, bp_report(patient_ref="PT-P"))
    unlinked = await adverse_event_of(client, nina, plain["id"])
    assert "encounter" not in unlinked
    assert [i["itemReference"]["reference"] for i in unlinked["supportingInfo"]] == ["#bp"]


async def test_another_clinics_session_has_no_fhir_view(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    opened = await step(client, SESSIONS, users["nina"], session_body(weight_kg=70))
    response = await client.get(f"{SESSIONS}/{opened['id']}/fhir", headers=users["nora"])
    assert response.status_code == 404, response.text
    unknown = await client.get(f"{SESSIONS}/{uuid.uuid4()}/fhir", headers=users["nina"])
    assert unknown.status_code == 404
    assert await audit_rows(db, "session.read", opened["id"]) == []
