"""Report bodies, tagged by ``kind``. Ranges and their sources: docs/clinical-rules.md.

Every kind but ``stock_incident`` concerns a patient and may carry the patient's vital
signs; a stock incident concerns the clinic's controlled substances and names no patient.
Fields left out are left out of the stored body too (``omit_defaults``): a rule reads an
absent field as not given.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

ReportKind = Literal[
    "blood_pressure", "dissociation", "adverse_event", "misuse_concern", "stock_incident"
]
Drug = Literal["esketamine_nasal", "ketamine_iv", "ketamine_im", "ketamine_oral", "other"]
# The esketamine nasal spray comes in 28 mg devices: a dose is one, two or three of them.
ESKETAMINE_DOSES_MG = (28, 56, 84)
# Ketamine given by weight: a dose of these needs the patient's weight (mg/kg).
WEIGHT_BASED_DRUGS = frozenset({"ketamine_iv", "ketamine_im"})
Seriousness = Literal[
    "death",
    "life_threatening",
    "hospitalization",
    "disability",
    "congenital_anomaly",
    "other_medically_important",
]
Outcome = Literal["resolved", "recovering", "ongoing", "resolved_with_sequelae", "fatal", "unknown"]
Phase = Literal["pre_dose", "post_dose", "discharge"]
# Target-organ (crisis) symptoms (docs/clinical-rules.md).
Symptom = Literal[
    "severe_headache",
    "chest_pain",
    "shortness_of_breath",
    "visual_change",
    "neurological_deficit",
    "confusion",
    "seizure",
]
ConcernType = Literal[
    "patient_behaviour",
    "drug_seeking",
    "extra_dose_request",
    "patient_tampering",
    "positive_drug_screen",
    # Stock incidents, filed as misuse concerns before the stock_incident kind existed.
    # Stored reports keep them (and may be amended under their old rules); a new
    # misuse concern may not use them.
    "staff_suspected",
    "inventory_discrepancy",
    "theft",
    "loss",
    "device_tampered",
]
STOCK_CONCERNS = frozenset(
    {"staff_suspected", "inventory_discrepancy", "theft", "loss", "device_tampered"}
)
QUANTITY_CONCERNS = frozenset({"inventory_discrepancy", "theft", "loss"})
IncidentType = Literal[
    "theft", "loss", "inventory_discrepancy", "device_tampered", "suspected_staff_diversion"
]
QUANTITY_INCIDENTS = frozenset({"theft", "loss", "inventory_discrepancy"})
Unit = Literal["mg", "ml", "device"]
Category = Literal[
    "suicidality",
    "emergence_reaction",
    "vomiting",
    "fall",
    "urological",
    "pregnancy_exposure",
    "other",
]
UrologicalSymptom = Literal["dysuria", "frequency", "pelvic_pain", "haematuria"]

PATIENT_REF_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
PatientRef = Annotated[str, Meta(pattern=PATIENT_REF_PATTERN)]
ClinicCode = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
Text = Annotated[str, Meta(min_length=1, max_length=4000)]
Quantity = Annotated[float, Meta(ge=0, le=1_000_000)]
Lot = Annotated[str, Meta(min_length=1, max_length=64)]
Systolic = Annotated[int, Meta(ge=50, le=300)]
Diastolic = Annotated[int, Meta(ge=30, le=200)]
MoaaS = Annotated[int, Meta(ge=0, le=5)]


class _Report(
    msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True, tag_field="kind"
):
    clinic: ClinicCode
    drug: Drug


class _PatientReport(_Report, kw_only=True):
    """What every report about a patient has, the patient's vital signs included."""

    patient_ref: PatientRef
    occurred_at: datetime
    outcome: Outcome
    dose_mg: Annotated[float, Meta(gt=0, le=10_000)] | None = None
    # Needed with a dose of IV or IM ketamine, which is given by weight.
    weight_kg: Annotated[float, Meta(ge=20, le=300)] | None = None
    # How long an IV ketamine infusion ran.
    infusion_minutes: Annotated[int, Meta(ge=1, le=1440)] | None = None
    minutes_after_dose: Annotated[int, Meta(ge=0, le=1440)] | None = None
    seriousness: Annotated[list[Seriousness], Meta(max_length=6)] = msgspec.field(
        default_factory=list
    )
    narrative: Text | None = None
    # Age-dependent rules (the pre-dose hold is 150 systolic over 65) need it.
    age_band: Literal["under_65", "65_and_over"] | None = None
    phase: Phase | None = None
    systolic: Systolic | None = None
    diastolic: Diastolic | None = None
    pulse: Annotated[int, Meta(ge=20, le=250)] | None = None
    respiratory_rate: Annotated[int, Meta(ge=4, le=60)] | None = None
    spo2: Annotated[int, Meta(ge=50, le=100)] | None = None
    syncope: bool | None = None
    # The treatment session the event happened in: one of the same clinic and patient.
    session_id: uuid.UUID | None = None


class BloodPressure(_PatientReport, kw_only=True, tag="blood_pressure"):
    phase: Phase
    systolic: Systolic
    diastolic: Diastolic
    symptoms: Annotated[list[Symptom], Meta(max_length=7)] = msgspec.field(default_factory=list)


class Dissociation(_PatientReport, kw_only=True, tag="dissociation"):
    moaa_s: MoaaS
    severity: Literal["mild", "moderate", "severe"]
    resolved: bool
    respiratory_depression: bool
    cadss_total: Annotated[int, Meta(ge=0, le=92)] | None = None


class Cssrs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The C-SSRS screener's six answers (q6: suicidal behaviour in the past 3 months)."""

    q1: bool
    q2: bool
    q3: bool
    q4: bool
    q5: bool
    q6: bool


class AdverseEvent(_PatientReport, kw_only=True, tag="adverse_event"):
    """An adverse event that is neither a pressure spike nor dissociation."""

    category: Category
    # The nurse's own words; the MedDRA term the service suggests stays beside them.
    verbatim_term: Annotated[str, Meta(min_length=1, max_length=200)]
    # suicidality: at least one of the two.
    cssrs: Cssrs | None = None
    phq9_item9: Annotated[int, Meta(ge=0, le=3)] | None = None
    # emergence_reaction
    rescue_medication: bool | None = None
    ed_transfer: bool | None = None
    # vomiting: sedation at the time (aspiration risk).
    moaa_s: MoaaS | None = None
    # urological: at least one.
    urological_symptoms: Annotated[list[UrologicalSymptom], Meta(max_length=4)] = msgspec.field(
        default_factory=list
    )


class MisuseConcern(_PatientReport, kw_only=True, tag="misuse_concern"):
    """A patient's behaviour that suggests misuse."""

    concern_type: ConcernType
    description: Text
    dast10_score: Annotated[int, Meta(ge=0, le=10)] | None = None
    # Only on the stock concerns of old (QUANTITY_CONCERNS).
    expected_quantity: Quantity | None = None
    actual_quantity: Quantity | None = None
    unit: Unit | None = None
    lot: Lot | None = None


class StockIncident(_Report, kw_only=True, tag="stock_incident"):
    """Controlled-substance stock: theft, loss, a count that does not match, a tampered
    device, suspected diversion by staff. No patient: it never feeds a patient's rules."""

    incident_type: IncidentType
    discovered_at: datetime
    description: Text
    expected_quantity: Quantity | None = None
    actual_quantity: Quantity | None = None
    unit: Unit | None = None
    lot: Lot | None = None

    @property
    def patient_ref(self) -> None:
        return None

    @property
    def occurred_at(self) -> datetime:
        """The report's time, for ordering and rule windows: when it was discovered."""
        return self.discovered_at


def dose_mg_per_kg(dose_mg: float | None, weight_kg: float | None) -> float | None:
    """The dose per kilogram, to two decimals, where dose and weight are given: the one
    number the report view, the exports and the rules all use."""
    if dose_mg is None or not weight_kg:
        return None
    return round(dose_mg / weight_kg, 2)


PatientReport = BloodPressure | Dissociation | AdverseEvent | MisuseConcern
ReportBody = PatientReport | StockIncident
ReportStruct = (
    type[BloodPressure]
    | type[Dissociation]
    | type[AdverseEvent]
    | type[MisuseConcern]
    | type[StockIncident]
)
KINDS: dict[str, ReportStruct] = {
    "blood_pressure": BloodPressure,
    "dissociation": Dissociation,
    "adverse_event": AdverseEvent,
    "misuse_concern": MisuseConcern,
    "stock_incident": StockIncident,
}
KIND_NAMES: tuple[str, ...] = ReportKind.__args__  # type: ignore[attr-defined]
assert set(KIND_NAMES) == set(KINDS)
# The field that holds a kind's time (a stock incident's is when it was discovered).
TIME_FIELD = {
    kind: "discovered_at" if kind == "stock_incident" else "occurred_at" for kind in KINDS
}
# Fields an amendment may not change: they decide where the report lives.
FIXED_FIELDS = frozenset({"kind", "clinic"})
