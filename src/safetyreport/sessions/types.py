"""Treatment session bodies (issue 15). Ranges as for reports (reports/types.py); the
fitness-to-leave criteria and their sources: docs/clinical-rules.md."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from safetyreport.amendments import MAX_REASON, REASON_PATTERN
from safetyreport.reports.types import (
    ClinicCode,
    Diastolic,
    Drug,
    Lot,
    MoaaS,
    PatientRef,
    Systolic,
)

AgeBand = Literal["under_65", "65_and_over"]
Reason = Annotated[str, Meta(min_length=1, max_length=2000)]
Pulse = Annotated[int, Meta(ge=20, le=250)]
RespiratoryRate = Annotated[int, Meta(ge=4, le=60)]
Spo2 = Annotated[int, Meta(ge=50, le=100)]
CadssTotal = Annotated[int, Meta(ge=0, le=92)]
# A pseudonym the network assigns to link one patient's sessions at several clinics:
# never a name or a record number (docs/api.md). The same pattern is checked in SQL.
NETWORK_REF_PATTERN = r"^[A-Za-z0-9-]{4,64}$"
NetworkRef = Annotated[str, Meta(pattern=NETWORK_REF_PATTERN)]


class _Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    pass


class Checklist(_Body, kw_only=True):
    """The pre-dose checklist: the blood pressure goes through the rules as a pre-dose
    reading of a report would."""

    systolic: Systolic
    diastolic: Diastolic
    fasting: bool
    cns_depressants: bool
    pregnancy_possible: bool
    transport_arranged: bool


class SessionCreate(_Body, kw_only=True):
    # A UUID the tablet made, so that it can queue the session's later steps offline;
    # accepted once.
    id: uuid.UUID | None = None
    clinic: ClinicCode
    patient_ref: PatientRef
    drug: Drug
    weight_kg: Annotated[float, Meta(ge=20, le=300)] | None = None
    age_band: AgeBand | None = None
    prescriber: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    checklist: Checklist
    # Links the patient's sessions across the network's clinics (patients/course.py).
    network_ref: NetworkRef | None = None


class DoseBody(_Body, kw_only=True):
    dose_mg: Annotated[float, Meta(gt=0, le=10_000)]
    dosed_at: datetime
    lot: Lot | None = None
    infusion_minutes: Annotated[int, Meta(ge=1, le=1440)] | None = None
    # Dosing despite an open hold (the pre-dose hold): why; recorded on the alert.
    override_reason: Reason | None = None


class ObservationBody(_Body, kw_only=True):
    observed_at: datetime
    systolic: Systolic | None = None
    diastolic: Diastolic | None = None
    pulse: Pulse | None = None
    respiratory_rate: RespiratoryRate | None = None
    spo2: Spo2 | None = None
    moaa_s: MoaaS | None = None
    cadss_total: CadssTotal | None = None


# The vital signs an observation may carry, in the order they are shown.
VITALS = ("systolic", "diastolic", "pulse", "respiratory_rate", "spo2", "moaa_s", "cadss_total")


class DischargeBody(_Body, kw_only=True):
    discharged_at: datetime
    moaa_s: MoaaS
    # The last blood pressure, at discharge (absent: a criterion unmet).
    systolic: Systolic | None = None
    diastolic: Diastolic | None = None
    # Someone accompanies the patient home.
    escort: bool
    # Discharging although a criterion is unmet: why (audited; raises discharge-override).
    override_reason: Reason | None = None


# An amendment's reason: 1-1000 characters with one that is not a space
# (amendments.reason_and_changes checks it).
AmendmentReason = Annotated[str, Meta(min_length=1, max_length=MAX_REASON, pattern=REASON_PATTERN)]


class SessionAmendment(_Body, kw_only=True):
    """Documents ``POST /api/v1/sessions/{id}/amendments``: the reason and any field to
    correct (the dose's once dosed). Checked by sessions.service.amend_session."""

    reason: AmendmentReason
    weight_kg: Annotated[float, Meta(ge=20, le=300)] | None = None
    age_band: AgeBand | None = None
    prescriber: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    network_ref: NetworkRef | None = None
    checklist: Checklist | None = None
    dose_mg: Annotated[float, Meta(gt=0, le=10_000)] | None = None
    dosed_at: datetime | None = None
    lot: Lot | None = None
    infusion_minutes: Annotated[int, Meta(ge=1, le=1440)] | None = None


class ObservationAmendment(_Body, kw_only=True):
    """Documents ``POST /api/v1/sessions/{id}/observations/{id}/amendments``: the reason
    and the time or vital signs to correct."""

    reason: AmendmentReason
    observed_at: datetime | None = None
    systolic: Systolic | None = None
    diastolic: Diastolic | None = None
    pulse: Pulse | None = None
    respiratory_rate: RespiratoryRate | None = None
    spo2: Spo2 | None = None
    moaa_s: MoaaS | None = None
    cadss_total: CadssTotal | None = None
