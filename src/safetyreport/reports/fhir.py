"""A report's current version as an HL7 FHIR R5 AdverseEvent (see docs/clinical-rules.md).

The event is named by its MedDRA preferred term, as ``code.text`` only: MedDRA codes
are licensed, so a licensed site adds them. Seriousness and outcome use the HL7
terminology code systems. Patients are the clinic's pseudonymous references, never
names. R5 has no place for the dose and route of a suspect drug, so they travel as
extensions on ``suspectEntity``; what the nurse measured (readings, scores,
quantities) is summed up in the first ``note``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from safetyreport.reports.service import ReportView
from safetyreport.reports.types import BloodPressure, Dissociation, MisuseConcern, ReportBody

FHIR_JSON = "application/fhir+json"
SERIOUSNESS_SYSTEM = "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness"
# R5 binds outcome to an example value set of SNOMED CT codes (licensed); this HL7 code
# system holds the six outcomes of docs/clinical-rules.md and an example binding allows it.
OUTCOME_SYSTEM = "http://terminology.hl7.org/CodeSystem/adverse-event-outcome"
UCUM = "http://unitsofmeasure.org"
REPORT_SYSTEM = "urn:safetyreport:report"
REPORT_KIND_SYSTEM = "urn:safetyreport:report-kind"
USER_SYSTEM = "urn:safetyreport:user"
DOSE_EXTENSION = "urn:safetyreport:fhir:extension:dose"
ROUTE_EXTENSION = "urn:safetyreport:fhir:extension:route"
TIME_AFTER_DOSE_EXTENSION = "urn:safetyreport:fhir:extension:time-after-dose"

_encoder = msgspec.json.Encoder()

KIND_NAMES = {
    "blood_pressure": "Blood pressure",
    "dissociation": "Dissociation or sedation",
    "misuse_concern": "Misuse or diversion concern",
}
# drug -> (substance, route of administration)
DRUGS: dict[str, tuple[str, str | None]] = {
    "esketamine_nasal": ("Esketamine", "Nasal"),
    "ketamine_iv": ("Ketamine", "Intravenous"),
    "ketamine_im": ("Ketamine", "Intramuscular"),
    "ketamine_oral": ("Ketamine", "Oral"),
    "other": ("Other drug (not named in the report)", None),
}
# outcome -> (code, display, AdverseEvent.status)
OUTCOMES: dict[str, tuple[str, str, str]] = {
    "resolved": ("resolved", "Resolved", "completed"),
    "recovering": ("recovering", "Recovering", "in-progress"),
    "ongoing": ("ongoing", "Ongoing", "in-progress"),
    "resolved_with_sequelae": ("resolvedWithSequelae", "Resolved with Sequelae", "completed"),
    "fatal": ("fatal", "Fatal", "completed"),
    "unknown": ("unknown", "Unknown", "unknown"),
}
SERIOUSNESS_CRITERIA = {
    "death": "results in death",
    "life_threatening": "life-threatening",
    "hospitalization": "hospitalisation (initial or prolonged)",
    "disability": "disability",
    "congenital_anomaly": "congenital anomaly",
    "other_medically_important": "other medically important event",
}
# Misuse concerns by what they suggest: drugs gone missing or taken by staff are
# diversion; a patient's behaviour is abuse; a tampered device is misuse of the product.
CONCERN_TERMS = {
    "inventory_discrepancy": "Drug diversion",
    "theft": "Drug diversion",
    "loss": "Drug diversion",
    "staff_suspected": "Drug diversion",
    "patient_behaviour": "Drug abuse",
    "device_tampered": "Intentional product misuse",
}
# Thresholds from docs/clinical-rules.md: ACC/AHA 2017 crisis above 180/120; respiratory depression
# below 90 % SpO2 (a convention); MOAA/S 3 or less is sedation beyond lethargy.
CRISIS_SYSTOLIC = 180
CRISIS_DIASTOLIC = 120
RESPIRATORY_DEPRESSION_SPO2 = 90
SEDATION_MOAA_S = 3


def fhir_time(value: datetime) -> str:
    """A FHIR dateTime/instant in UTC with an explicit ``+00:00`` offset."""
    return value.astimezone(UTC).isoformat()


def patient_system(clinic: str) -> str:
    """Identifier system of a clinic's pseudonymous patient references."""
    return f"urn:safetyreport:clinic:{clinic}:patient"


def blood_pressure_term(body: BloodPressure, ctcae_grade: int | None) -> str:
    """Hypertensive crisis above 180/120 or at CTCAE G4, Hypertension at G3, else
    Blood pressure increased (the label's term for the usual transient rise)."""
    crisis = body.systolic > CRISIS_SYSTOLIC or body.diastolic > CRISIS_DIASTOLIC
    if crisis or ctcae_grade == 4:
        return "Hypertensive crisis"
    if ctcae_grade == 3:
        return "Hypertension"
    return "Blood pressure increased"


def dissociation_term(body: Dissociation) -> str:
    """The gravest finding names the event: breathing, then consciousness, then dissociation."""
    low_spo2 = body.spo2 is not None and body.spo2 < RESPIRATORY_DEPRESSION_SPO2
    if body.respiratory_depression or low_spo2:
        return "Respiratory depression"
    if body.moaa_s <= SEDATION_MOAA_S:
        return "Sedation"
    return "Dissociation"


def event_term(body: ReportBody, ctcae_grade: int | None) -> str:
    """The MedDRA preferred term (name only) that fits the report."""
    if isinstance(body, BloodPressure):
        return blood_pressure_term(body, ctcae_grade)
    if isinstance(body, Dissociation):
        return dissociation_term(body)
    return CONCERN_TERMS[body.concern_type]


_PHASES = {"pre_dose": "pre-dose", "post_dose": "post-dose", "discharge": "at discharge"}


def _words(value: str) -> str:
    return value.replace("_", " ")


def _number(value: float) -> str:
    return f"{value:g}"


def blood_pressure_findings(body: BloodPressure, ctcae_grade: int | None) -> list[str]:
    findings = [f"Blood pressure {body.systolic}/{body.diastolic} mmHg ({_PHASES[body.phase]})"]
    if body.pulse is not None:
        findings.append(f"pulse {body.pulse}/min")
    if ctcae_grade is not None:
        findings.append(f"CTCAE v5.0 hypertension grade {ctcae_grade}")
    if body.symptoms:
        findings.append("symptoms: " + ", ".join(_words(s) for s in body.symptoms))
    return findings


def dissociation_findings(body: Dissociation) -> list[str]:
    findings = [f"MOAA/S {body.moaa_s}", f"severity {body.severity}"]
    if body.cadss_total is not None:
        findings.append(f"CADSS {body.cadss_total}")
    if body.spo2 is not None:
        findings.append(f"SpO2 {body.spo2} %")
    if body.respiratory_depression:
        findings.append("respiratory depression")
    findings.append("resolved" if body.resolved else "not resolved")
    return findings


def misuse_findings(body: MisuseConcern) -> list[str]:
    findings = [f"Concern: {_words(body.concern_type)}"]
    unit = f" {body.unit}" if body.unit else ""
    if body.expected_quantity is not None:
        findings.append(f"expected {_number(body.expected_quantity)}{unit}")
    if body.actual_quantity is not None:
        findings.append(f"counted {_number(body.actual_quantity)}{unit}")
    if body.lot is not None:
        findings.append(f"lot {body.lot}")
    return findings


def findings(body: ReportBody, ctcae_grade: int | None) -> str:
    """One line summing up what was observed, for the first note."""
    if isinstance(body, BloodPressure):
        parts = blood_pressure_findings(body, ctcae_grade)
    elif isinstance(body, Dissociation):
        parts = dissociation_findings(body)
    else:
        parts = misuse_findings(body)
    if body.minutes_after_dose is not None:
        parts.append(f"{body.minutes_after_dose} minutes after the dose")
    return "; ".join(parts) + "."


def _concept(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [{"system": system, "code": code, "display": display}]}
    if text is not None:
        concept["text"] = text
    return concept


def seriousness(body: ReportBody) -> dict[str, Any]:
    """Serious when any ICH E2B criterion was ticked; the criteria are named in ``text``."""
    if not body.seriousness:
        return _concept(SERIOUSNESS_SYSTEM, "non-serious", "Non-serious")
    criteria = ", ".join(SERIOUSNESS_CRITERIA[c] for c in body.seriousness)
    return _concept(SERIOUSNESS_SYSTEM, "serious", "Serious", f"Serious: {criteria}")


def suspect_entity(body: ReportBody) -> dict[str, Any]:
    substance, route = DRUGS[body.drug]
    extensions: list[dict[str, Any]] = []
    if body.dose_mg is not None:
        dose = {"value": body.dose_mg, "unit": "mg", "system": UCUM, "code": "mg"}
        extensions.append({"url": DOSE_EXTENSION, "valueQuantity": dose})
    if route is not None:
        extensions.append({"url": ROUTE_EXTENSION, "valueCodeableConcept": {"text": route}})
    if body.minutes_after_dose is not None:
        after = {"value": body.minutes_after_dose, "unit": "min", "system": UCUM, "code": "min"}
        extensions.append({"url": TIME_AFTER_DOSE_EXTENSION, "valueDuration": after})
    entity: dict[str, Any] = {"instanceCodeableConcept": {"text": substance}}
    if extensions:
        entity["extension"] = extensions
    return entity


def notes(body: ReportBody, ctcae_grade: int | None) -> list[dict[str, Any]]:
    """The findings, then the report's own free text."""
    texts = [findings(body, ctcae_grade)]
    if isinstance(body, MisuseConcern):
        texts.append(body.description)
    if body.narrative is not None:
        texts.append(body.narrative)
    return [{"text": text} for text in texts]


def adverse_event(report: ReportView) -> dict[str, Any]:
    """The report's current version as a FHIR R5 AdverseEvent (plain JSON values)."""
    body = msgspec.convert(report.body, ReportBody)
    outcome_code, outcome_display, status = OUTCOMES[body.outcome]
    resource: dict[str, Any] = {
        "resourceType": "AdverseEvent",
        "id": str(report.id),
        "meta": {"versionId": str(report.version), "lastUpdated": fhir_time(report.updated_at)},
        "identifier": [{"system": REPORT_SYSTEM, "value": str(report.id)}],
        "status": status,
        "actuality": "actual",
        "category": [
            _concept(REPORT_KIND_SYSTEM, report.kind, KIND_NAMES[report.kind]),
        ],
        "code": {"text": event_term(body, report.ctcae_grade)},
        "subject": {
            "type": "Patient",
            "identifier": {"system": patient_system(report.clinic), "value": report.patient_ref},
        },
        "occurrenceDateTime": fhir_time(report.occurred_at),
        "recordedDate": fhir_time(report.created_at),
        "recorder": {
            "type": "Practitioner",
            "identifier": {"system": USER_SYSTEM, "value": report.created_by},
            "display": report.created_by,
        },
        "seriousness": seriousness(body),
        "outcome": [_concept(OUTCOME_SYSTEM, outcome_code, outcome_display)],
        "suspectEntity": [suspect_entity(body)],
        "note": notes(body, report.ctcae_grade),
    }
    if isinstance(body, BloodPressure) and body.age_band == "65_and_over":
        # Markedly raised pressure: 11 % of elderly patients against 2-5 % (docs/clinical-rules.md).
        factor = {"itemCodeableConcept": {"text": "Age 65 or over"}}
        resource["contributingFactor"] = [factor]
    return resource


def encode(resource: dict[str, Any]) -> bytes:
    return _encoder.encode(resource)
