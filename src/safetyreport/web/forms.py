"""The report forms, derived from the report types so ranges and required fields never drift.

Each kind's form lists its fields in the order a nurse fills them in at the chair side.
Whether a field is required, its numeric range and its pattern come from
``reports/types.py`` (through ``msgspec.inspect``); what this module adds is what a
person needs: labels, hints, option wording, the widget and sensible defaults. The
browser checks the same ranges before a report goes into the offline outbox, so a
report queued without network rarely fails later; the server's checks stay the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import msgspec.inspect as mi

from safetyreport.reports.types import KINDS

Widget = Literal[
    "integer", "decimal", "text", "textarea", "select", "radios", "checkboxes", "yesno", "datetime"
]

KIND_LABELS = {
    "blood_pressure": "Blood pressure",
    "dissociation": "Dissociation or sedation",
    "misuse_concern": "Misuse or diversion",
}

# Option wording, in the order shown. A test checks these match the types exactly.
OPTIONS: dict[str, dict[str, str]] = {
    "phase": {"pre_dose": "Before dose", "post_dose": "After dose", "discharge": "At discharge"},
    "drug": {
        "esketamine_nasal": "Esketamine nasal spray",
        "ketamine_iv": "Ketamine IV",
        "ketamine_im": "Ketamine IM",
        "ketamine_oral": "Ketamine oral",
        "other": "Other",
    },
    "outcome": {
        "ongoing": "Ongoing",
        "recovering": "Recovering",
        "resolved": "Resolved",
        "resolved_with_sequelae": "Resolved with sequelae",
        "fatal": "Fatal",
        "unknown": "Unknown",
    },
    "symptoms": {
        "severe_headache": "Severe headache",
        "chest_pain": "Chest pain",
        "shortness_of_breath": "Shortness of breath",
        "visual_change": "Visual change",
        "neurological_deficit": "Neurological deficit",
        "confusion": "Confusion",
        "seizure": "Seizure",
    },
    "seriousness": {
        "death": "Death",
        "life_threatening": "Life-threatening",
        "hospitalization": "Hospitalisation (initial or prolonged)",
        "disability": "Disability",
        "congenital_anomaly": "Congenital anomaly",
        "other_medically_important": "Other medically important event",
    },
    "age_band": {"under_65": "Under 65", "65_and_over": "65 or over"},
    "moaa_s": {
        "5": "5 - responds readily to name",
        "4": "4 - lethargic response to name",
        "3": "3 - responds only to loud or repeated name",
        "2": "2 - responds only to mild prodding",
        "1": "1 - responds only to a painful squeeze",
        "0": "0 - no response",
    },
    "severity": {"mild": "Mild", "moderate": "Moderate", "severe": "Severe"},
    "concern_type": {
        "patient_behaviour": "Patient behaviour",
        "staff_suspected": "Staff suspected",
        "inventory_discrepancy": "Inventory count discrepancy",
        "theft": "Theft",
        "loss": "Loss",
        "device_tampered": "Damaged or tampered device",
    },
    "unit": {"mg": "mg", "ml": "ml", "device": "devices"},
}

LABELS = {
    "clinic": "Clinic",
    "patient_ref": "Patient reference",
    "occurred_at": "When it happened",
    "phase": "Phase",
    "systolic": "Systolic (mmHg)",
    "diastolic": "Diastolic (mmHg)",
    "pulse": "Pulse (bpm)",
    "symptoms": "Crisis symptoms",
    "drug": "Drug",
    "dose_mg": "Dose (mg)",
    "minutes_after_dose": "Minutes after dose",
    "age_band": "Age",
    "outcome": "Outcome",
    "seriousness": "Serious because of",
    "narrative": "Notes",
    "moaa_s": "MOAA/S sedation score",
    "severity": "Dissociation severity",
    "resolved": "Resolved now?",
    "respiratory_depression": "Respiratory depression?",
    "cadss_total": "CADSS total",
    "spo2": "SpO2 (%)",
    "concern_type": "Concern",
    "description": "What happened",
    "expected_quantity": "Expected quantity",
    "actual_quantity": "Actual quantity",
    "unit": "Unit",
    "lot": "Lot number",
}

HINTS = {
    "patient_ref": "Pseudonymous reference, never a name.",
    "symptoms": "Any of these makes the reading critical.",
    "seriousness": "Leave empty unless the event is serious.",
    "cadss_total": "CADSS-23 total, 0-92.",
    "expected_quantity": "Needed for discrepancies, theft and loss.",
    "actual_quantity": "Needed for discrepancies, theft and loss.",
    "unit": "Needed for discrepancies, theft and loss.",
    "lot": "Only for discrepancies, theft and loss.",
}

# Hints that differ by kind: a stock concern may have no patient.
KIND_HINTS = {
    ("misuse_concern", "patient_ref"): (
        "The patient involved, or the stock reference for a stock concern."
    ),
}

# The order a nurse fills each form in; every field of the kind appears exactly once.
_COMMON_HEAD = ("clinic", "patient_ref", "occurred_at")
_COMMON_TAIL = (
    "drug",
    "dose_mg",
    "minutes_after_dose",
    "age_band",
    "outcome",
    "seriousness",
    "narrative",
)
ORDER: dict[str, tuple[str, ...]] = {
    "blood_pressure": (
        *_COMMON_HEAD,
        "phase",
        "systolic",
        "diastolic",
        "pulse",
        "symptoms",
        *_COMMON_TAIL,
    ),
    "dissociation": (
        *_COMMON_HEAD,
        "moaa_s",
        "severity",
        "respiratory_depression",
        "spo2",
        "cadss_total",
        "resolved",
        *_COMMON_TAIL,
    ),
    "misuse_concern": (
        *_COMMON_HEAD,
        "concern_type",
        "description",
        "expected_quantity",
        "actual_quantity",
        "unit",
        "lot",
        *_COMMON_TAIL,
    ),
}

# Defaults for a new report: what is almost always true, never a clinical measurement.
DEFAULTS: dict[str, dict[str, str]] = {
    "blood_pressure": {"phase": "post_dose", "drug": "esketamine_nasal", "outcome": "ongoing"},
    "dissociation": {
        "drug": "esketamine_nasal",
        "outcome": "ongoing",
        "respiratory_depression": "false",
    },
    "misuse_concern": {"drug": "esketamine_nasal", "outcome": "unknown"},
}

# Fields shown as radio buttons (few options, large targets) rather than a select.
_RADIOS = frozenset({"phase", "age_band", "severity", "unit"})
_TEXTAREAS = frozenset({"narrative", "description"})


@dataclass(frozen=True, slots=True)
class FormField:
    name: str
    label: str
    widget: Widget
    required: bool
    hint: str = ""
    options: tuple[tuple[str, str], ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    # True when the minimum itself is not allowed (dose must be above 0).
    minimum_exclusive: bool = False
    max_length: int | None = None
    pattern: str | None = None
    default: str | None = None
    # Options whose values the browser sends as numbers (the MOAA/S score).
    numeric: bool = False


def _unwrap(t: mi.Type) -> mi.Type:
    """The type inside ``X | None``."""
    if isinstance(t, mi.UnionType):
        inner = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if len(inner) == 1:
            return inner[0]
    return t


def _options(name: str) -> tuple[tuple[str, str], ...]:
    return tuple(OPTIONS[name].items())


def _field(kind: str, info: mi.Field) -> FormField:
    name, t = info.name, _unwrap(info.type)
    common: dict[str, Any] = {
        "name": name,
        "label": LABELS[name],
        "required": info.required,
        "hint": KIND_HINTS.get((kind, name), HINTS.get(name, "")),
        "default": DEFAULTS[kind].get(name),
    }
    if name == "clinic":
        return FormField(widget="select", **common)  # options: the user's clinics
    if isinstance(t, mi.IntType) and name in OPTIONS:
        # A score with a meaning per value: one large radio button each.
        return FormField(widget="radios", options=_options(name), numeric=True, **common)
    if isinstance(t, mi.LiteralType):
        widget: Widget = "radios" if name in _RADIOS else "select"
        return FormField(widget=widget, options=_options(name), **common)
    if isinstance(t, mi.ListType):
        return FormField(widget="checkboxes", options=_options(name), **common)
    if isinstance(t, mi.BoolType):
        return FormField(widget="yesno", options=(("true", "Yes"), ("false", "No")), **common)
    if isinstance(t, mi.DateTimeType):
        return FormField(widget="datetime", **common)
    if isinstance(t, mi.IntType | mi.FloatType):
        exclusive = t.gt is not None
        return FormField(
            widget="integer" if isinstance(t, mi.IntType) else "decimal",
            minimum=t.gt if exclusive else t.ge,
            maximum=t.le,
            minimum_exclusive=exclusive,
            **common,
        )
    if isinstance(t, mi.StrType):
        widget = "textarea" if name in _TEXTAREAS else "text"
        return FormField(widget=widget, max_length=t.max_length, pattern=t.pattern, **common)
    raise TypeError(f"no form widget for {kind}.{name}: {t}")


@cache
def report_form(kind: str) -> tuple[FormField, ...]:
    """The fields of a ``kind`` report, in form order."""
    info = mi.type_info(KINDS[kind])
    assert isinstance(info, mi.StructType)
    fields = {f.name: f for f in info.fields}
    return tuple(_field(kind, fields[name]) for name in ORDER[kind])


def all_forms() -> dict[str, tuple[FormField, ...]]:
    return {kind: report_form(kind) for kind in KINDS}
