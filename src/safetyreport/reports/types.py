"""Report bodies, tagged by ``kind``. Ranges: docs/clinical-rules.md."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Drug = Literal["esketamine_nasal", "ketamine_iv", "ketamine_im", "ketamine_oral", "other"]
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
# Crisis symptoms (docs/clinical-rules.md): any of them raises a reading to critical.
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
    "staff_suspected",
    "inventory_discrepancy",
    "theft",
    "loss",
    "device_tampered",
]
QUANTITY_CONCERNS = frozenset({"inventory_discrepancy", "theft", "loss"})
Unit = Literal["mg", "ml", "device"]

PATIENT_REF_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
PatientRef = Annotated[str, Meta(pattern=PATIENT_REF_PATTERN)]
ClinicCode = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
Text = Annotated[str, Meta(min_length=1, max_length=4000)]


class _Report(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="kind"):
    clinic: ClinicCode
    patient_ref: PatientRef
    occurred_at: datetime
    drug: Drug
    outcome: Outcome
    dose_mg: Annotated[float, Meta(gt=0, le=10_000)] | None = None
    minutes_after_dose: Annotated[int, Meta(ge=0, le=1440)] | None = None
    seriousness: Annotated[list[Seriousness], Meta(max_length=6)] = msgspec.field(
        default_factory=list
    )
    narrative: Text | None = None
    # Age-dependent rules (the pre-dose hold is 150 systolic over 65) need it.
    age_band: Literal["under_65", "65_and_over"] | None = None


class BloodPressure(_Report, tag="blood_pressure"):
    phase: Phase
    systolic: Annotated[int, Meta(ge=50, le=300)]
    diastolic: Annotated[int, Meta(ge=30, le=200)]
    pulse: Annotated[int, Meta(ge=20, le=250)] | None = None
    symptoms: Annotated[list[Symptom], Meta(max_length=7)] = msgspec.field(default_factory=list)


class Dissociation(_Report, tag="dissociation"):
    moaa_s: Annotated[int, Meta(ge=0, le=5)]
    severity: Literal["mild", "moderate", "severe"]
    resolved: bool
    respiratory_depression: bool
    cadss_total: Annotated[int, Meta(ge=0, le=92)] | None = None
    spo2: Annotated[int, Meta(ge=50, le=100)] | None = None


class MisuseConcern(_Report, tag="misuse_concern"):
    concern_type: ConcernType
    description: Text
    expected_quantity: Annotated[float, Meta(ge=0, le=1_000_000)] | None = None
    actual_quantity: Annotated[float, Meta(ge=0, le=1_000_000)] | None = None
    unit: Unit | None = None
    lot: Annotated[str, Meta(min_length=1, max_length=64)] | None = None


ReportBody = BloodPressure | Dissociation | MisuseConcern
KINDS: dict[str, type[BloodPressure] | type[Dissociation] | type[MisuseConcern]] = {
    "blood_pressure": BloodPressure,
    "dissociation": Dissociation,
    "misuse_concern": MisuseConcern,
}
# Fields an amendment may not change: they decide where the report lives.
FIXED_FIELDS = frozenset({"kind", "clinic"})
