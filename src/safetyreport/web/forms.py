"""The report forms, derived from the report types so ranges and required fields never drift.

Each kind's form lists its fields in the order a nurse fills them in at the chair side.
Whether a field is required, its numeric range and its pattern come from
``reports/types.py`` (through ``msgspec.inspect``); what this module adds is what a
person needs: labels, hints, option wording, the widget and sensible defaults. The
browser checks the same ranges before a report goes into the offline outbox, so a
report queued without network rarely fails later; the server's checks stay the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from typing import Any, Literal

import msgspec.inspect as mi

from safetyreport.reports.types import (
    KINDS,
    QUANTITY_CONCERNS,
    QUANTITY_INCIDENTS,
    STOCK_CONCERNS,
    WEIGHT_BASED_DRUGS,
)
from safetyreport.sessions.types import (
    Checklist,
    DischargeBody,
    DoseBody,
    ObservationBody,
    SessionCreate,
)

Widget = Literal[
    "integer",
    "decimal",
    "text",
    "textarea",
    "select",
    "radios",
    "checkboxes",
    "yesno",
    "datetime",
    "questions",
]

# A UUID as the browser checks it before sending (the service parses it).
UUID_PATTERN = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

KIND_LABELS = {
    "blood_pressure": "Blood pressure",
    "dissociation": "Dissociation or sedation",
    "adverse_event": "Other adverse event",
    "misuse_concern": "Misuse concern",
    "stock_incident": "Stock incident",
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
    "category": {
        "suicidality": "Suicidal thoughts or behaviour",
        "emergence_reaction": "Emergence reaction",
        "vomiting": "Vomiting",
        "fall": "Fall",
        "urological": "Urological symptoms",
        "pregnancy_exposure": "Exposure in pregnancy",
        "other": "Other",
    },
    # PHQ-9 item 9, over the last two weeks.
    "phq9_item9": {
        "0": "0 - not at all",
        "1": "1 - several days",
        "2": "2 - more than half the days",
        "3": "3 - nearly every day",
    },
    "urological_symptoms": {
        "dysuria": "Pain passing urine (dysuria)",
        "frequency": "Passing urine often (frequency)",
        "pelvic_pain": "Pelvic or bladder pain",
        "haematuria": "Blood in the urine (haematuria)",
    },
    "concern_type": {
        "patient_behaviour": "Patient behaviour",
        "drug_seeking": "Drug-seeking",
        "extra_dose_request": "Asked for an extra dose",
        "patient_tampering": "Patient tampered with the device or dose",
        "positive_drug_screen": "Positive drug screen",
        # Stock concerns of old: offered only when amending a report stored with one.
        "staff_suspected": "Staff suspected (stock, before stock incidents)",
        "inventory_discrepancy": "Inventory count discrepancy (stock, before stock incidents)",
        "theft": "Theft (stock, before stock incidents)",
        "loss": "Loss (stock, before stock incidents)",
        "device_tampered": "Damaged or tampered device (stock, before stock incidents)",
    },
    "incident_type": {
        "theft": "Theft",
        "loss": "Loss",
        "inventory_discrepancy": "Inventory count discrepancy",
        "device_tampered": "Damaged or tampered device",
        "suspected_staff_diversion": "Suspected diversion by staff",
    },
    "unit": {"mg": "mg", "ml": "ml", "device": "devices"},
}

# The C-SSRS screener's questions as the nurse asks them (q1-q5: the past month; q6 as
# the service records it: behaviour in the past 3 months).
QUESTIONS: dict[str, dict[str, str]] = {
    "cssrs": {
        "q1": "1. Wished to be dead, or to go to sleep and not wake up? (past month)",
        "q2": "2. Any actual thoughts of killing themselves? (past month)",
        "q3": "3. Thought about how they might do this? (past month)",
        "q4": "4. Had these thoughts with some intention of acting on them? (past month)",
        "q5": "5. Started to work out, or worked out, the details of how? (past month)",
        "q6": "6. Done, started or prepared anything to end their life? (past 3 months)",
    },
}

LABELS = {
    "clinic": "Clinic",
    "patient_ref": "Patient reference",
    "occurred_at": "When it happened",
    "discovered_at": "When it was discovered",
    "phase": "Phase",
    "systolic": "Systolic (mmHg)",
    "diastolic": "Diastolic (mmHg)",
    "pulse": "Pulse (/min)",
    "respiratory_rate": "Respiratory rate (breaths/min)",
    "spo2": "SpO2 (%)",
    "syncope": "Syncope (fainted)?",
    "symptoms": "Crisis symptoms",
    "drug": "Drug",
    "session_id": "Treatment session",
    "dose_mg": "Dose (mg)",
    "weight_kg": "Weight (kg)",
    "infusion_minutes": "Infusion time (min)",
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
    "category": "Category",
    "verbatim_term": "The event in your own words",
    "cssrs": "C-SSRS screener",
    "phq9_item9": "PHQ-9 item 9",
    "rescue_medication": "Rescue medication given?",
    "ed_transfer": "Transferred to an emergency department?",
    "urological_symptoms": "Urological symptoms",
    "concern_type": "Concern",
    "dast10_score": "DAST-10 score",
    "incident_type": "Incident",
    "description": "What happened",
    "expected_quantity": "Expected quantity",
    "actual_quantity": "Actual quantity",
    "unit": "Unit",
    "lot": "Lot number",
}

# Labels that differ by kind.
KIND_FIELD_LABELS = {
    ("adverse_event", "moaa_s"): "MOAA/S at the time",
}

HINTS = {
    "patient_ref": "Pseudonymous reference, never a name.",
    "symptoms": "Any of these makes the reading critical.",
    "seriousness": "Leave empty unless the event is serious.",
    "cadss_total": "CADSS-23 total, 0-92.",
    "dose_mg": "Esketamine nasal spray: 28, 56 or 84.",
    "weight_kg": "Needed with a dose of IV or IM ketamine (the dose per kg).",
    "session_id": "The session's id, when the event happened during a treatment session.",
    "verbatim_term": "As you would write it; the service suggests a standard term beside it.",
    "cssrs": "Give the screener, PHQ-9 item 9, or both.",
    "phq9_item9": "Thoughts of being better off dead or of self-harm, over the last 2 weeks.",
    "dast10_score": "DAST-10 total, 0-10.",
    "expected_quantity": "Needed for discrepancies, theft and loss.",
    "actual_quantity": "Needed for discrepancies, theft and loss.",
    "unit": "Needed for discrepancies, theft and loss, and with any quantity.",
}

# Hints that differ by kind.
KIND_HINTS = {
    ("adverse_event", "moaa_s"): "Sedation while vomiting (aspiration risk).",
    ("misuse_concern", "lot"): "Only for discrepancies, theft and loss.",
}

# Fields shown only while another field has one of some values: (field, values).
# They are hidden otherwise, and a hidden field is not sent.
_CATEGORY = {
    "cssrs": ("category", ("suicidality",)),
    "phq9_item9": ("category", ("suicidality",)),
    "rescue_medication": ("category", ("emergence_reaction",)),
    "ed_transfer": ("category", ("emergence_reaction",)),
    "moaa_s": ("category", ("vomiting",)),
    "urological_symptoms": ("category", ("urological",)),
}
_QUANTITY_CONCERN = ("concern_type", tuple(sorted(QUANTITY_CONCERNS)))
_QUANTITY_INCIDENT = ("incident_type", tuple(sorted(QUANTITY_INCIDENTS)))
SHOWN_WHEN: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    **{(kind, "infusion_minutes"): ("drug", ("ketamine_iv",)) for kind in KINDS},
    **{("adverse_event", name): when for name, when in _CATEGORY.items()},
    # The quantities of the stock concerns of old (a new misuse concern has none).
    **{
        ("misuse_concern", name): _QUANTITY_CONCERN
        for name in ("expected_quantity", "actual_quantity", "unit", "lot")
    },
}
# Fields required only while another field has one of some values (the server's
# cross-field rules, shown to the nurse before she submits).
REQUIRED_WHEN: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    **{
        ("adverse_event", name): _CATEGORY[name]
        for name in ("rescue_medication", "ed_transfer", "moaa_s", "urological_symptoms")
    },
    **{
        ("misuse_concern", name): _QUANTITY_CONCERN
        for name in ("expected_quantity", "actual_quantity", "unit")
    },
    **{
        ("stock_incident", name): _QUANTITY_INCIDENT
        for name in ("expected_quantity", "actual_quantity", "unit")
    },
}

# The order a nurse fills each form in, in sections (a legend each, but the first);
# every field of the kind appears exactly once.
_HEAD = ("clinic", "patient_ref", "occurred_at")
_VITALS = ("phase", "systolic", "diastolic", "pulse", "respiratory_rate", "spo2", "syncope")
_DRUG = (
    "Drug and dose",
    ("session_id", "drug", "dose_mg", "weight_kg", "infusion_minutes", "minutes_after_dose"),
)
_OUTCOME = ("Outcome", ("age_band", "outcome", "seriousness", "narrative"))
SECTIONS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "blood_pressure": (
        ("", _HEAD),
        ("Vital signs", (*_VITALS, "symptoms")),
        _DRUG,
        _OUTCOME,
    ),
    "dissociation": (
        (
            "",
            (*_HEAD, "moaa_s", "severity", "respiratory_depression", "cadss_total", "resolved"),
        ),
        ("Vital signs", _VITALS),
        _DRUG,
        _OUTCOME,
    ),
    "adverse_event": (
        (
            "",
            (
                *_HEAD,
                "category",
                "verbatim_term",
                "cssrs",
                "phq9_item9",
                "rescue_medication",
                "ed_transfer",
                "moaa_s",
                "urological_symptoms",
            ),
        ),
        ("Vital signs", _VITALS),
        _DRUG,
        _OUTCOME,
    ),
    "misuse_concern": (
        (
            "",
            (
                *_HEAD,
                "concern_type",
                "description",
                "dast10_score",
                "expected_quantity",
                "actual_quantity",
                "unit",
                "lot",
            ),
        ),
        ("Vital signs", _VITALS),
        _DRUG,
        _OUTCOME,
    ),
    # No patient: no vital signs, seriousness or outcome.
    "stock_incident": (
        (
            "",
            (
                "clinic",
                "incident_type",
                "discovered_at",
                "drug",
                "description",
                "expected_quantity",
                "actual_quantity",
                "unit",
                "lot",
            ),
        ),
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
    "adverse_event": {"drug": "esketamine_nasal", "outcome": "ongoing"},
    "misuse_concern": {"drug": "esketamine_nasal", "outcome": "unknown"},
    "stock_incident": {"drug": "esketamine_nasal"},
}

# Fields shown as radio buttons (few options, large targets) rather than a select.
_RADIOS = frozenset({"phase", "age_band", "severity", "unit", "category", "incident_type"})
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
    # The yes/no questions of a "questions" field (an object of booleans): (name, text).
    questions: tuple[tuple[str, str], ...] = ()
    # Shown only while the field named first has one of the values (else hidden, not sent).
    shown_when: tuple[str, tuple[str, ...]] | None = None
    # Required only while the field named first has one of the values.
    required_when: tuple[str, tuple[str, ...]] | None = None


@dataclass(frozen=True, slots=True)
class FormSection:
    """Fields grouped under a legend (none for the first section)."""

    title: str
    fields: tuple[FormField, ...]


def _unwrap(t: mi.Type) -> mi.Type:
    """The type inside ``X | None``."""
    if isinstance(t, mi.UnionType):
        inner = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if len(inner) == 1:
            return inner[0]
    return t


def _options(name: str, legacy: bool) -> tuple[tuple[str, str], ...]:
    options = OPTIONS[name].items()
    if name == "concern_type" and not legacy:
        # A new misuse concern is about a patient: stock goes to a stock incident.
        return tuple((value, label) for value, label in options if value not in STOCK_CONCERNS)
    return tuple(options)


def _field(kind: str, info: mi.Field, legacy: bool) -> FormField:
    name, t = info.name, _unwrap(info.type)
    common: dict[str, Any] = {
        "name": name,
        "label": KIND_FIELD_LABELS.get((kind, name)) or LABELS.get(name, name),
        "required": info.required,
        "hint": KIND_HINTS.get((kind, name), HINTS.get(name, "")),
        "default": DEFAULTS[kind].get(name),
        "shown_when": SHOWN_WHEN.get((kind, name)),
        "required_when": REQUIRED_WHEN.get((kind, name)),
    }
    if name == "clinic":
        return FormField(widget="select", **common)  # options: the user's clinics
    if isinstance(t, mi.IntType) and name in OPTIONS:
        # A score with a meaning per value: one large radio button each.
        return FormField(widget="radios", options=_options(name, legacy), numeric=True, **common)
    if isinstance(t, mi.LiteralType):
        widget: Widget = "radios" if name in _RADIOS else "select"
        return FormField(widget=widget, options=_options(name, legacy), **common)
    if isinstance(t, mi.ListType):
        return FormField(widget="checkboxes", options=_options(name, legacy), **common)
    if isinstance(t, mi.BoolType):
        return FormField(widget="yesno", options=(("true", "Yes"), ("false", "No")), **common)
    if isinstance(t, mi.DateTimeType):
        return FormField(widget="datetime", **common)
    if isinstance(t, mi.StructType) and name in QUESTIONS:
        asked = tuple(QUESTIONS[name].items())
        # Every question of the object, in its order, and nothing else.
        assert [q for q, _ in asked] == [f.name for f in t.fields], name
        return FormField(widget="questions", questions=asked, **common)
    if isinstance(t, mi.IntType | mi.FloatType):
        exclusive = t.gt is not None
        return FormField(
            widget="integer" if isinstance(t, mi.IntType) else "decimal",
            minimum=t.gt if exclusive else t.ge,
            maximum=t.le,
            minimum_exclusive=exclusive,
            **common,
        )
    if isinstance(t, mi.UUIDType):
        return FormField(widget="text", max_length=36, pattern=UUID_PATTERN, **common)
    if isinstance(t, mi.StrType):
        widget = "textarea" if name in _TEXTAREAS else "text"
        return FormField(widget=widget, max_length=t.max_length, pattern=t.pattern, **common)
    raise TypeError(f"no form widget for {kind}.{name}: {t}")


@cache
def report_sections(kind: str, legacy: bool = False) -> tuple[FormSection, ...]:
    """The sections of a ``kind`` report's form, in form order.

    ``legacy``: for amending a misuse concern stored with a stock concern type of old,
    which offers those types too.
    """
    info = mi.type_info(KINDS[kind])
    assert isinstance(info, mi.StructType)
    fields = {f.name: f for f in info.fields}
    return tuple(
        FormSection(title, tuple(_field(kind, fields[name], legacy) for name in names))
        for title, names in SECTIONS[kind]
    )


def report_form(kind: str, legacy: bool = False) -> tuple[FormField, ...]:
    """The fields of a ``kind`` report, in form order."""
    return tuple(f for section in report_sections(kind, legacy) for f in section.fields)


def all_forms() -> dict[str, tuple[FormSection, ...]]:
    """The sections of each kind's form for a new report."""
    return {kind: report_sections(kind) for kind in KINDS}


# --- the session flowsheet (issue 15) ----------------------------------------------------
#
# The nurse's tablet records a treatment session step by step (web/templates/flowsheet.html):
# opening it with the pre-dose checklist, the dose, the timed observations and the
# discharge. Its forms come from the session types as the report forms come from the
# report types; an override reason is asked for only when the server refuses a step.

STEP_TYPES: dict[str, tuple[type[Any], ...]] = {
    "session": (SessionCreate, Checklist),
    "dose": (DoseBody,),
    "observation": (ObservationBody,),
    "discharge": (DischargeBody,),
}
STEP_SECTIONS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "session": (
        (
            "",
            (
                "clinic",
                "patient_ref",
                "drug",
                "weight_kg",
                "age_band",
                "prescriber",
                "network_ref",
            ),
        ),
        (
            "Pre-dose checklist",
            (
                "systolic",
                "diastolic",
                "fasting",
                "cns_depressants",
                "pregnancy_possible",
                "transport_arranged",
            ),
        ),
    ),
    "dose": (("", ("dose_mg", "dosed_at", "lot", "infusion_minutes")),),
    "observation": (
        (
            "",
            (
                "observed_at",
                "systolic",
                "diastolic",
                "pulse",
                "respiratory_rate",
                "spo2",
                "moaa_s",
                "cadss_total",
            ),
        ),
    ),
    "discharge": (("", ("discharged_at", "systolic", "diastolic", "moaa_s", "escort")),),
}
STEP_LABELS = {
    "prescriber": "Prescriber",
    "network_ref": "Network reference",
    "fasting": "Fasted as instructed (no food 2 h, no drink 30 min)?",
    "cns_depressants": "Took CNS depressants (benzodiazepines, opioids, alcohol) today?",
    "pregnancy_possible": "Could be pregnant?",
    "transport_arranged": "Transport home arranged (not driving today)?",
    "dosed_at": "When dosed",
    "observed_at": "When observed",
    "discharged_at": "When discharged",
    "escort": "Someone accompanies the patient home?",
}
STEP_HINTS = {
    ("session", "network_ref"): "The network's pseudonym linking the patient's clinics, if any.",
    ("session", "systolic"): "The blood pressure before dosing.",
    ("discharge", "systolic"): "The blood pressure at discharge.",
    ("discharge", "moaa_s"): "5 is needed to leave.",
}
STEP_DEFAULTS: dict[str, dict[str, str]] = {
    "session": {"drug": "esketamine_nasal"},
    "dose": {},
    "observation": {},
    "discharge": {},
}
STEP_REQUIRED_WHEN: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    ("session", "weight_kg"): ("drug", tuple(sorted(WEIGHT_BASED_DRUGS))),
}


def _step_field(step: str, info: mi.Field) -> FormField:
    """A step's field: the widget and the ranges from its type as for a report's field,
    with the flowsheet's wording."""
    name = info.name
    base = _field("blood_pressure", info, False)
    return replace(
        base,
        label=STEP_LABELS.get(name) or LABELS[name],
        hint=STEP_HINTS.get((step, name), HINTS.get(name, "")),
        default=STEP_DEFAULTS[step].get(name),
        shown_when=None,
        required_when=STEP_REQUIRED_WHEN.get((step, name)),
    )


@cache
def step_sections(step: str) -> tuple[FormSection, ...]:
    """The sections of a flowsheet step's form (session, dose, observation, discharge)."""
    fields: dict[str, mi.Field] = {}
    for struct in STEP_TYPES[step]:
        info = mi.type_info(struct)
        assert isinstance(info, mi.StructType)
        fields |= {f.name: f for f in info.fields}
    return tuple(
        FormSection(title, tuple(_step_field(step, fields[name]) for name in names))
        for title, names in STEP_SECTIONS[step]
    )


def step_forms() -> dict[str, tuple[FormSection, ...]]:
    return {step: step_sections(step) for step in STEP_TYPES}
