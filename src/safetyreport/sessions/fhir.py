"""A treatment session as HL7 FHIR R5 resources (see docs/api.md and
docs/clinical-rules.md): the session an Encounter, its dose a MedicationAdministration,
each reading an Observation, gathered in a Bundle of type ``collection``.

Every resource's id is a UUID and its ``fullUrl`` in the Bundle ``urn:uuid:<id>``; the
resources refer to one another by that ``urn:uuid`` (what a Bundle resolves against its
entries' ``fullUrl``). The ids are derived, so that they stay the same from one read to
the next and a report's AdverseEvent can refer to them (reports/fhir.py, SessionLinks):
the Encounter's id is the session's, the MedicationAdministration's
``uuid5(session, "dose")``, an Observation's ``uuid5(reading, name)`` where the reading is
a timed observation's id, ``uuid5(session, "checklist")`` or ``uuid5(session,
"discharge")`` (the ids the rules know these readings by) and the name that of the
Observation (``bp``, ``heart-rate``, ``respiratory-rate``, ``spo2``, ``moaa-s``,
``cadss``).

The vital signs are the Observations reports contain (reports/fhir.py,
vital_sign_observations: the same profiles, LOINC codes and UCUM units). MOAA/S and the
CADSS total have no code in docs/clinical-rules.md: they are ``survey`` Observations
named by text with a code of the service's own (``urn:safetyreport:score``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from safetyreport.auth.users import Principal
from safetyreport.db.pool import Conn
from safetyreport.reports.fhir import (
    DRUGS,
    OBSERVATION_CATEGORY_SYSTEM,
    UCUM,
    Readings,
    SessionLinks,
    fhir_time,
    patient_system,
    vital_sign_observations,
)
from safetyreport.reports.types import Phase
from safetyreport.sessions import service
from safetyreport.sessions.service import SessionView

SESSION_SYSTEM = "urn:safetyreport:treatment-session"
SCORE_SYSTEM = "urn:safetyreport:score"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_AMBULATORY = {
    "coding": [{"system": ACT_CODE_SYSTEM, "code": "AMB", "display": "ambulatory"}],
    "text": "Ambulatory",
}
_SURVEY = {
    "coding": [{"system": OBSERVATION_CATEGORY_SYSTEM, "code": "survey", "display": "Survey"}],
    "text": "Survey",
}
# score -> (code, text)
_SCORES = {
    "moaa_s": ("moaa-s", "MOAA/S (Modified Observer's Assessment of Alertness/Sedation)"),
    "cadss_total": ("cadss", "CADSS total (Clinician-Administered Dissociative States Scale)"),
}


def urn(resource_id: uuid.UUID) -> str:
    return f"urn:uuid:{resource_id}"


def administration_id(session_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(session_id, "dose")


def encounter_reference(session_id: uuid.UUID) -> dict[str, Any]:
    """A reference to the session's Encounter: resolvable in the session's Bundle, and
    by identifier anywhere."""
    return {
        "reference": urn(session_id),
        "type": "Encounter",
        "identifier": {"system": SESSION_SYSTEM, "value": str(session_id)},
    }


def _subject(view: SessionView) -> dict[str, Any]:
    return {
        "type": "Patient",
        "identifier": {"system": patient_system(view.clinic), "value": view.patient_ref},
    }


def encounter(view: SessionView) -> dict[str, Any]:
    """The session: in progress until discharged, ambulatory, from opening to discharge."""
    period = {"start": fhir_time(view.created_at)}
    if view.discharged_at is not None:
        period["end"] = fhir_time(view.discharged_at)
    return {
        "resourceType": "Encounter",
        "id": str(view.id),
        "meta": {"lastUpdated": fhir_time(view.updated_at)},
        "identifier": [{"system": SESSION_SYSTEM, "value": str(view.id)}],
        "status": "in-progress" if view.discharged_at is None else "completed",
        "class": [_AMBULATORY],
        "subject": _subject(view),
        "actualPeriod": period,
    }


def medication_administration(view: SessionView) -> dict[str, Any] | None:
    """The dose, none before it: the drug by name (no RxNorm code in the project's
    sources), its route, the dose in mg, when it was given."""
    if view.dose_mg is None or view.dosed_at is None:
        return None
    substance, route = DRUGS[view.drug]
    dosage: dict[str, Any] = {
        "dose": {"value": view.dose_mg, "unit": "mg", "system": UCUM, "code": "mg"},
    }
    if route is not None:
        dosage["route"] = {"text": route}
    if view.dose_mg_per_kg is not None and view.weight_kg is not None:
        dosage["text"] = (
            f"{view.dose_mg:g} mg ({view.dose_mg_per_kg:g} mg/kg, weight {view.weight_kg:g} kg)"
        )
    notes = []
    if view.infusion_minutes is not None:
        notes.append(f"Infused over {view.infusion_minutes} minutes")
    if view.lot is not None:
        notes.append(f"Lot {view.lot}")
    if view.dose_override_reason is not None:
        notes.append(f"Given despite an open hold: {view.dose_override_reason}")
    resource: dict[str, Any] = {
        "resourceType": "MedicationAdministration",
        "id": str(administration_id(view.id)),
        "status": "completed",
        "medication": {"concept": {"text": substance}},
        "subject": _subject(view),
        "encounter": {"reference": urn(view.id), "type": "Encounter"},
        # R5 spells it so.
        "occurenceDateTime": fhir_time(view.dosed_at),
        "dosage": dosage,
    }
    if notes:
        resource["note"] = [{"text": text} for text in notes]
    return resource


def _phase(view: SessionView, at: datetime) -> Phase:
    return "post_dose" if view.dosed_at is not None and at >= view.dosed_at else "pre_dose"


def _reading_observations(
    view: SessionView, reading_id: uuid.UUID, at: datetime, values: dict[str, Any], phase: Phase
) -> list[dict[str, Any]]:
    """One reading's values as Observations of the session's Encounter, each with its
    derived id."""
    context = {
        "subject": _subject(view),
        "encounter": {"reference": urn(view.id), "type": "Encounter"},
        "effectiveDateTime": fhir_time(at),
    }
    readings = Readings(
        systolic=values.get("systolic"),
        diastolic=values.get("diastolic"),
        pulse=values.get("pulse"),
        respiratory_rate=values.get("respiratory_rate"),
        spo2=values.get("spo2"),
        phase=phase,
    )
    found = vital_sign_observations(readings, context)
    for name, (code, text) in _SCORES.items():
        score = values.get(name)
        if score is None:
            continue
        found.append(
            {
                "resourceType": "Observation",
                "id": code,
                "status": "final",
                "category": [_SURVEY],
                "code": {"coding": [{"system": SCORE_SYSTEM, "code": code}], "text": text},
                **context,
                "valueInteger": score,
            }
        )
    for resource in found:
        resource["id"] = str(uuid.uuid5(reading_id, resource["id"]))
    return found


def observations(view: SessionView) -> list[dict[str, Any]]:
    """The checklist's blood pressure (pre-dose, at opening), each timed observation and
    the discharge reading, in time order."""
    found = _reading_observations(
        view, uuid.uuid5(view.id, "checklist"), view.created_at, view.checklist, "pre_dose"
    )
    for observation in view.observations or []:
        values = {
            "systolic": observation.systolic,
            "diastolic": observation.diastolic,
            "pulse": observation.pulse,
            "respiratory_rate": observation.respiratory_rate,
            "spo2": observation.spo2,
            "moaa_s": observation.moaa_s,
            "cadss_total": observation.cadss_total,
        }
        found += _reading_observations(
            view,
            observation.id,
            observation.observed_at,
            values,
            _phase(view, observation.observed_at),
        )
    if view.discharge is not None and view.discharged_at is not None:
        found += _reading_observations(
            view,
            uuid.uuid5(view.id, "discharge"),
            view.discharged_at,
            view.discharge,
            "discharge",
        )
    return found


def resources(view: SessionView) -> list[dict[str, Any]]:
    """The Encounter, the MedicationAdministration (after a dose), the Observations."""
    administration = medication_administration(view)
    return [
        encounter(view),
        *([administration] if administration is not None else []),
        *observations(view),
    ]


def bundle(view: SessionView) -> dict[str, Any]:
    """The session as a FHIR R5 Bundle of type ``collection`` (a set of resources, not a
    transaction or a signed document), as of the session's last change."""
    return {
        "resourceType": "Bundle",
        "identifier": {"system": SESSION_SYSTEM, "value": str(view.id)},
        "type": "collection",
        "timestamp": fhir_time(view.updated_at),
        "entry": [
            {"fullUrl": urn(uuid.UUID(resource["id"])), "resource": resource}
            for resource in resources(view)
        ],
    }


def links(view: SessionView) -> SessionLinks:
    """What a report's AdverseEvent refers to: the resources ``bundle`` holds."""
    administration = medication_administration(view)
    return SessionLinks(
        drug=view.drug,
        encounter=encounter_reference(view.id),
        administration=None
        if administration is None
        else {"reference": urn(administration_id(view.id)), "type": "MedicationAdministration"},
        observations=[
            {"reference": urn(uuid.UUID(o["id"])), "type": "Observation"}
            for o in observations(view)
        ],
    )


async def report_links(
    conn: Conn, principal: Principal, session_id: str | None
) -> SessionLinks | None:
    """The links to a report's session, if its body names one (a session of the report's
    clinic, so one the principal who read the report may see)."""
    if session_id is None:
        return None
    return links(await service.session_view(conn, principal, uuid.UUID(session_id)))


async def links_of_sessions(
    conn: Conn, principal: Principal, session_ids: set[str]
) -> dict[str, SessionLinks]:
    """The links to each of these sessions (the reports' of an export), by id."""
    return {
        session_id: links(await service.session_view(conn, principal, uuid.UUID(session_id)))
        for session_id in sorted(session_ids)
    }
