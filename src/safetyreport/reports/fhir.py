"""A report's current version as an HL7 FHIR R5 AdverseEvent (see docs/clinical-rules.md).

The event is named by a MedDRA preferred term, as ``code.text`` only: MedDRA codes are
licensed, so a licensed site adds them. An ``adverse_event`` report is named by the
nurse's own words instead, and the term the service suggests stays beside them in a
note. Seriousness and outcome use the HL7 terminology code systems. Patients are the
clinic's pseudonymous references, never names. The readings a report carries become
contained vital-signs Observations (LOINC codes, UCUM units) that ``supportingInfo``
points to. R5 has no place for the dose and route of a suspect drug, so they travel as
extensions on ``suspectEntity``; everything else the nurse noted (readings, scores,
quantities) is summed up in the first ``note``. A report of a treatment session also
refers to the session's Encounter, MedicationAdministration and Observations
(SessionLinks, made by sessions/fhir.py, which builds its Observations of vital signs
with ``vital_sign_observations`` here).

A stock incident concerns no patient and is no adverse event: it has no FHIR view.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from safetyreport.errors import Conflict
from safetyreport.reports.grading import hypertension_reading_grade, is_severe_pressure
from safetyreport.reports.service import ReportView
from safetyreport.reports.types import (
    AdverseEvent,
    BloodPressure,
    Dissociation,
    MisuseConcern,
    PatientReport,
    Phase,
    ReportBody,
    StockIncident,
    dose_mg_per_kg,
)

FHIR_JSON = "application/fhir+json"
SERIOUSNESS_SYSTEM = "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness"
# R5 binds outcome to an example value set of SNOMED CT codes (licensed); this HL7 code
# system holds the six outcomes of docs/clinical-rules.md and an example binding allows it.
OUTCOME_SYSTEM = "http://terminology.hl7.org/CodeSystem/adverse-event-outcome"
OBSERVATION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
PROFILE_BASE = "http://hl7.org/fhir/StructureDefinition/"
REPORT_SYSTEM = "urn:safetyreport:report"
REPORT_KIND_SYSTEM = "urn:safetyreport:report-kind"
USER_SYSTEM = "urn:safetyreport:user"
DOSE_EXTENSION = "urn:safetyreport:fhir:extension:dose"
ROUTE_EXTENSION = "urn:safetyreport:fhir:extension:route"
TIME_AFTER_DOSE_EXTENSION = "urn:safetyreport:fhir:extension:time-after-dose"
SUGGESTED_TERM_NOTE = "Suggested MedDRA preferred term: "
READING_GRADE_NOTE = "Hypertension reading grade (CTCAE v5.0, one reading): "

_encoder = msgspec.json.Encoder()

KIND_NAMES = {
    "blood_pressure": "Blood pressure",
    "dissociation": "Dissociation or sedation",
    "adverse_event": "Other adverse event",
    "misuse_concern": "Misuse concern",
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
# Misuse concerns by what they suggest: a patient's behaviour is abuse or drug seeking;
# tampering with a device is misuse of the product. The stock types of old (stored
# misuse concerns only; new ones are stock incidents, which have no FHIR view) keep the
# terms they were exported with.
CONCERN_TERMS = {
    "patient_behaviour": "Drug abuse",
    "drug_seeking": "Drug seeking behaviour",
    "extra_dose_request": "Drug seeking behaviour",
    "patient_tampering": "Intentional product misuse",
    "positive_drug_screen": "Drug screen positive",
    "inventory_discrepancy": "Drug diversion",
    "theft": "Drug diversion",
    "loss": "Drug diversion",
    "staff_suspected": "Drug diversion",
    "device_tampered": "Intentional product misuse",
}
# The adverse-event categories whose term does not depend on the report's fields.
CATEGORY_TERMS = {
    # Ketamine's emergence reaction has no preferred term of its own: agitation is the
    # sign that brings rescue medication; the verbatim term keeps what was seen.
    "emergence_reaction": "Agitation",
    "vomiting": "Vomiting",
    "fall": "Fall",
    "pregnancy_exposure": "Exposure during pregnancy",
}
# One urological symptom names the event, the gravest first: haematuria is the sign of
# ketamine-associated cystitis (a diagnosis the service leaves to the clinician).
UROLOGICAL_TERMS = {
    "haematuria": "Haematuria",
    "dysuria": "Dysuria",
    "pelvic_pain": "Pelvic pain",
    "frequency": "Pollakiuria",
}
# Thresholds from docs/clinical-rules.md (severe elevation, 180/120, is grading's):
# hypotension below 90/60; heart rate below 50 or above 130; respiratory depression at a
# rate below 8/min or SpO2 below 90 % (the critical breathing rule); MOAA/S 3 or less is
# sedation beyond lethargy.
HYPOTENSION_SYSTOLIC = 90
HYPOTENSION_DIASTOLIC = 60
BRADYCARDIA_PULSE = 50
TACHYCARDIA_PULSE = 130
RESPIRATORY_DEPRESSION_RATE = 8
RESPIRATORY_DEPRESSION_SPO2 = 90
SEDATION_MOAA_S = 3


class NoAdverseEvent(Conflict):
    """The report is not about a patient, so it has no AdverseEvent."""


class SessionLinks(msgspec.Struct, frozen=True, kw_only=True):
    """References from a report's AdverseEvent to the FHIR view of its treatment session
    (``GET /api/v1/sessions/{id}/fhir``, built by sessions/fhir.py): its Encounter, the
    dose's MedicationAdministration (none before a dose) and its Observations."""

    drug: str
    encounter: dict[str, Any]
    administration: dict[str, Any] | None = None
    observations: list[dict[str, Any]] = msgspec.field(default_factory=list)


def fhir_time(value: datetime) -> str:
    """A FHIR dateTime/instant in UTC with an explicit ``+00:00`` offset."""
    return value.astimezone(UTC).isoformat()


def patient_system(clinic: str) -> str:
    """Identifier system of a clinic's pseudonymous patient references."""
    return f"urn:safetyreport:clinic:{clinic}:patient"


# --- the event's term ----------------------------------------------------------------


def blood_pressure_term(body: BloodPressure) -> str:
    """The gravest finding of the reading names the event (docs/clinical-rules.md): a
    hypertensive emergency (180/120 or above with a target-organ symptom: reading grade
    4), a hypertensive urgency (180/120 or above without one), syncope, hypotension,
    hypertension (grade 3), a slow or fast heart, a raised pressure (grades 1-2), else
    the measurement itself.

    The grade is worked out from the reading here rather than read from the stored
    version, so that a version graded under older rules gets today's term.
    """
    grade = hypertension_reading_grade(body.systolic, body.diastolic, body.symptoms)
    if grade == 4:
        return "Hypertensive emergency"
    if is_severe_pressure(body.systolic, body.diastolic):
        return "Hypertensive urgency"
    if body.syncope:
        return "Syncope"
    if body.systolic < HYPOTENSION_SYSTOLIC or body.diastolic < HYPOTENSION_DIASTOLIC:
        return "Hypotension"
    if grade == 3:
        return "Hypertension"
    if body.pulse is not None and body.pulse < BRADYCARDIA_PULSE:
        return "Bradycardia"
    if body.pulse is not None and body.pulse > TACHYCARDIA_PULSE:
        return "Tachycardia"
    if grade > 0:
        return "Blood pressure increased"
    return "Blood pressure measurement"


def dissociation_term(body: Dissociation) -> str:
    """The gravest finding names the event: breathing, then consciousness, then dissociation."""
    low_spo2 = body.spo2 is not None and body.spo2 < RESPIRATORY_DEPRESSION_SPO2
    slow_breathing = (
        body.respiratory_rate is not None and body.respiratory_rate < RESPIRATORY_DEPRESSION_RATE
    )
    if body.respiratory_depression or low_spo2 or slow_breathing:
        return "Respiratory depression"
    if body.moaa_s <= SEDATION_MOAA_S:
        return "Sedation"
    return "Dissociation"


def suggested_term(body: AdverseEvent) -> str | None:
    """The MedDRA preferred term the service suggests beside the nurse's verbatim term;
    none for the category ``other``."""
    if body.category == "suicidality":
        # C-SSRS q6: suicidal behaviour in the past 3 months; the rest is ideation.
        behaviour = body.cssrs is not None and body.cssrs.q6
        return "Suicidal behaviour" if behaviour else "Suicidal ideation"
    if body.category == "urological":
        for symptom, term in UROLOGICAL_TERMS.items():
            if symptom in body.urological_symptoms:
                return term
        return None
    return CATEGORY_TERMS.get(body.category)


def event_term(body: ReportBody) -> str | None:
    """The MedDRA preferred term (name only) that fits the report: for an adverse event
    the suggestion beside the verbatim term; none for a stock incident."""
    if isinstance(body, BloodPressure):
        return blood_pressure_term(body)
    if isinstance(body, Dissociation):
        return dissociation_term(body)
    if isinstance(body, AdverseEvent):
        return suggested_term(body)
    if isinstance(body, MisuseConcern):
        return CONCERN_TERMS[body.concern_type]
    return None


# --- the findings note ---------------------------------------------------------------

_PHASES = {"pre_dose": "pre-dose", "post_dose": "post-dose", "discharge": "at discharge"}


def _words(value: str) -> str:
    return value.replace("_", " ")


def _number(value: float) -> str:
    return f"{value:g}"


def vital_sign_findings(body: PatientReport) -> list[str]:
    findings: list[str] = []
    if body.systolic is not None and body.diastolic is not None:
        phase = f" ({_PHASES[body.phase]})" if body.phase is not None else ""
        findings.append(f"Blood pressure {body.systolic}/{body.diastolic} mmHg{phase}")
    if body.pulse is not None:
        findings.append(f"pulse {body.pulse}/min")
    if body.respiratory_rate is not None:
        findings.append(f"respiratory rate {body.respiratory_rate}/min")
    if body.spo2 is not None:
        findings.append(f"SpO2 {body.spo2} %")
    if body.syncope:
        findings.append("syncope")
    if isinstance(body, BloodPressure) and body.symptoms:
        findings.append("symptoms: " + ", ".join(_words(s) for s in body.symptoms))
    return findings


def dissociation_findings(body: Dissociation) -> list[str]:
    findings = [f"MOAA/S {body.moaa_s}", f"severity {body.severity}"]
    if body.cadss_total is not None:
        findings.append(f"CADSS {body.cadss_total}")
    if body.respiratory_depression:
        findings.append("respiratory depression")
    findings.append("resolved" if body.resolved else "not resolved")
    return findings


def adverse_event_findings(body: AdverseEvent) -> list[str]:
    findings = [f"Category: {_words(body.category)}"]
    if body.cssrs is not None:
        answers = msgspec.structs.asdict(body.cssrs)
        yes = [question for question, answer in answers.items() if answer]
        findings.append("C-SSRS yes: " + (", ".join(yes) if yes else "none"))
    if body.phq9_item9 is not None:
        findings.append(f"PHQ-9 item 9: {body.phq9_item9}")
    if body.rescue_medication is not None:
        findings.append("rescue medication" if body.rescue_medication else "no rescue medication")
    if body.ed_transfer is not None:
        findings.append(
            "transferred to an emergency department" if body.ed_transfer else "not transferred"
        )
    if body.moaa_s is not None:
        findings.append(f"MOAA/S {body.moaa_s}")
    if body.urological_symptoms:
        symptoms = ", ".join(_words(s) for s in body.urological_symptoms)
        findings.append(f"urological symptoms: {symptoms}")
    return findings


def misuse_findings(body: MisuseConcern) -> list[str]:
    findings = [f"Concern: {_words(body.concern_type)}"]
    if body.dast10_score is not None:
        findings.append(f"DAST-10 {body.dast10_score}")
    unit = f" {body.unit}" if body.unit else ""
    if body.expected_quantity is not None:
        findings.append(f"expected {_number(body.expected_quantity)}{unit}")
    if body.actual_quantity is not None:
        findings.append(f"counted {_number(body.actual_quantity)}{unit}")
    if body.lot is not None:
        findings.append(f"lot {body.lot}")
    return findings


def dose_findings(body: PatientReport) -> list[str]:
    findings: list[str] = []
    per_kg = dose_mg_per_kg(body.dose_mg, body.weight_kg)
    if per_kg is not None and body.weight_kg is not None:
        findings.append(f"dose {_number(per_kg)} mg/kg (weight {_number(body.weight_kg)} kg)")
    if body.infusion_minutes is not None:
        findings.append(f"infused over {body.infusion_minutes} minutes")
    if body.minutes_after_dose is not None:
        findings.append(f"{body.minutes_after_dose} minutes after the dose")
    return findings


def findings(body: PatientReport) -> str:
    """One line summing up what was observed, for the first note."""
    if isinstance(body, Dissociation):
        parts = dissociation_findings(body) + vital_sign_findings(body)
    elif isinstance(body, AdverseEvent):
        parts = adverse_event_findings(body) + vital_sign_findings(body)
    elif isinstance(body, MisuseConcern):
        parts = misuse_findings(body) + vital_sign_findings(body)
    else:
        parts = vital_sign_findings(body)
    parts += dose_findings(body)
    return "; ".join(parts) + "."


# --- contained vital-signs Observations ----------------------------------------------

_VITAL_SIGNS = {
    "coding": [
        {"system": OBSERVATION_CATEGORY_SYSTEM, "code": "vital-signs", "display": "Vital Signs"}
    ],
    "text": "Vital Signs",
}


def _loinc(code: str, display: str) -> dict[str, str]:
    return {"system": LOINC, "code": code, "display": display}


def _quantity(value: int, unit: str, code: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": code}


def _vital_sign(
    local_id: str,
    profile: str,
    codings: list[dict[str, str]],
    text: str,
    context: dict[str, Any],
    **value: Any,
) -> dict[str, Any]:
    """An Observation in the shape of the FHIR vital-signs profile ``profile``."""
    return {
        "resourceType": "Observation",
        "id": local_id,
        "meta": {"profile": [PROFILE_BASE + profile]},
        "status": "final",
        "category": [_VITAL_SIGNS],
        "code": {"coding": codings, "text": text},
        **context,
        **value,
    }


class Readings(msgspec.Struct, frozen=True, kw_only=True):
    """The vital signs one reading carries, as a report or a treatment session's
    observation gives them."""

    systolic: int | None = None
    diastolic: int | None = None
    pulse: int | None = None
    respiratory_rate: int | None = None
    spo2: int | None = None
    phase: Phase | None = None


def vital_sign_observations(readings: Readings, context: dict[str, Any]) -> list[dict[str, Any]]:
    """The readings as vital-signs Observations with ids local to one resource (``bp``,
    ``heart-rate``, ``respiratory-rate``, ``spo2``); ``context`` adds the fields every one
    carries (subject, effectiveDateTime, encounter)."""
    found: list[dict[str, Any]] = []
    if readings.systolic is not None and readings.diastolic is not None:
        mmhg = ("mmHg", "mm[Hg]")
        components = [
            {
                "code": {"coding": [_loinc("8480-6", "Systolic blood pressure")]},
                "valueQuantity": _quantity(readings.systolic, *mmhg),
            },
            {
                "code": {"coding": [_loinc("8462-4", "Diastolic blood pressure")]},
                "valueQuantity": _quantity(readings.diastolic, *mmhg),
            },
        ]
        extra: dict[str, Any] = {"component": components}
        if readings.phase is not None:
            extra["note"] = [{"text": f"Measured {_PHASES[readings.phase]}"}]
        panel = _loinc("85354-9", "Blood pressure panel with all children optional")
        found.append(
            _vital_sign("bp", "bp", [panel], "Blood pressure", context, **extra),
        )
    if readings.pulse is not None:
        value = _quantity(readings.pulse, "beats/minute", "/min")
        codings = [_loinc("8867-4", "Heart rate")]
        found.append(
            _vital_sign(
                "heart-rate", "heartrate", codings, "Heart rate", context, valueQuantity=value
            )
        )
    if readings.respiratory_rate is not None:
        value = _quantity(readings.respiratory_rate, "breaths/minute", "/min")
        codings = [_loinc("9279-1", "Respiratory rate")]
        found.append(
            _vital_sign(
                "respiratory-rate",
                "resprate",
                codings,
                "Respiratory rate",
                context,
                valueQuantity=value,
            )
        )
    if readings.spo2 is not None:
        # The profile fixes 2708-6; 59408-5 says it was measured by pulse oximetry.
        codings = [
            _loinc("2708-6", "Oxygen saturation in Arterial blood"),
            _loinc("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
        ]
        value = _quantity(readings.spo2, "%", "%")
        found.append(
            _vital_sign("spo2", "oxygensat", codings, "SpO2", context, valueQuantity=value)
        )
    return found


def observations(body: PatientReport, subject: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's readings as vital-signs Observations, to be contained (ids local)."""
    readings = Readings(
        systolic=body.systolic,
        diastolic=body.diastolic,
        pulse=body.pulse,
        respiratory_rate=body.respiratory_rate,
        spo2=body.spo2,
        phase=body.phase,
    )
    context = {"subject": subject, "effectiveDateTime": fhir_time(body.occurred_at)}
    return vital_sign_observations(readings, context)


# --- the AdverseEvent ----------------------------------------------------------------


def _concept(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [{"system": system, "code": code, "display": display}]}
    if text is not None:
        concept["text"] = text
    return concept


def seriousness(body: PatientReport) -> dict[str, Any]:
    """Serious when any ICH E2B criterion was ticked; the criteria are named in ``text``."""
    if not body.seriousness:
        return _concept(SERIOUSNESS_SYSTEM, "non-serious", "Non-serious")
    criteria = ", ".join(SERIOUSNESS_CRITERIA[c] for c in body.seriousness)
    return _concept(SERIOUSNESS_SYSTEM, "serious", "Serious", f"Serious: {criteria}")


def suspect_entity(body: PatientReport, session: SessionLinks | None = None) -> dict[str, Any]:
    """The drug; when the report's session gave it (a dose of the same drug), the
    session's MedicationAdministration as ``instanceReference``."""
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
    if session is not None and session.administration is not None and session.drug == body.drug:
        entity = {"instanceReference": {**session.administration, "display": substance}}
    if extensions:
        entity["extension"] = extensions
    return entity


def notes(body: PatientReport, reading_grade: int | None) -> list[dict[str, Any]]:
    """The findings, the reading's grade, the suggested term, then the report's own text."""
    texts = [findings(body)]
    if reading_grade is not None:
        texts.append(f"{READING_GRADE_NOTE}{reading_grade}")
    if isinstance(body, AdverseEvent):
        suggested = suggested_term(body)
        if suggested is not None:
            texts.append(SUGGESTED_TERM_NOTE + suggested)
    if isinstance(body, MisuseConcern):
        texts.append(body.description)
    if body.narrative is not None:
        texts.append(body.narrative)
    return [{"text": text} for text in texts]


def event_code(body: PatientReport) -> dict[str, Any]:
    """The nurse's verbatim term for an adverse event, else the service's MedDRA term."""
    if isinstance(body, AdverseEvent):
        return {"text": body.verbatim_term}
    term = event_term(body)
    assert term is not None  # every patient kind but adverse_event has a term
    return {"text": term}


def patient_body(report: ReportView) -> PatientReport:
    """The report's body; a stock incident, which has no patient, is refused (409)."""
    body: ReportBody = msgspec.convert(report.body, ReportBody)
    if isinstance(body, StockIncident):
        raise NoAdverseEvent(
            f"report {report.id} is a stock incident: it concerns no patient, so it has no"
            f" FHIR AdverseEvent; read it at /api/v1/reports/{report.id} or export it as"
            " CSV or NDJSON"
        )
    return body


def adverse_event(report: ReportView, session: SessionLinks | None = None) -> dict[str, Any]:
    """The report's current version as a FHIR R5 AdverseEvent (plain JSON values);
    ``session``: the references to its treatment session's resources, when it names one.

    Raises NoAdverseEvent (409) for a stock incident.
    """
    body = patient_body(report)
    grade = report.hypertension_reading_grade
    outcome_code, outcome_display, status = OUTCOMES[body.outcome]
    subject = {
        "type": "Patient",
        "identifier": {"system": patient_system(report.clinic), "value": body.patient_ref},
    }
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
        "code": event_code(body),
        "subject": subject,
        "occurrenceDateTime": fhir_time(report.occurred_at),
        "recordedDate": fhir_time(report.created_at),
        "recorder": {
            "type": "Practitioner",
            "identifier": {"system": USER_SYSTEM, "value": report.created_by},
            "display": report.created_by,
        },
        "seriousness": seriousness(body),
        "outcome": [_concept(OUTCOME_SYSTEM, outcome_code, outcome_display)],
        "suspectEntity": [suspect_entity(body, session)],
        "note": notes(body, grade),
    }
    contained = observations(body, subject)
    supporting = [
        {"itemReference": {"reference": f"#{observation['id']}"}} for observation in contained
    ]
    if session is not None:
        resource["encounter"] = session.encounter
        supporting += [{"itemReference": reference} for reference in session.observations]
    # FHIR forbids empty arrays: each only when there is something in it.
    if contained:
        resource["contained"] = contained
    if supporting:
        resource["supportingInfo"] = supporting
    if isinstance(body, BloodPressure) and body.age_band == "65_and_over":
        # Markedly raised pressure: 11 % of elderly patients against 2-5 % (docs/clinical-rules.md).
        factor = {"itemCodeableConcept": {"text": "Age 65 or over"}}
        resource["contributingFactor"] = [factor]
    return resource


def encode(resource: dict[str, Any]) -> bytes:
    return _encoder.encode(resource)
