"""The values that triggered an alert, and the one way they are put into words.

When a report is linked to an alert, the facts of that report version that the rule's
condition names are stored with the link (``alert_reports.trigger_values``), so the
queue, the detail page and the streams can say "BP 210/125 mmHg" without reading the
report. ``describe`` is the only place that turns such values (or an amendment's
changes) into text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# Facts shown together: a blood pressure is one reading of two numbers.
_COMPANIONS = {"systolic": ("diastolic",), "diastolic": ("systolic",)}

# Field: (label, unit). The label goes before the value, the unit after it.
_LABELS: dict[str, tuple[str, str]] = {
    "systolic": ("systolic", " mmHg"),
    "diastolic": ("diastolic", " mmHg"),
    "pulse": ("pulse", "/min"),
    "respiratory_rate": ("respiratory rate", "/min"),
    "spo2": ("SpO2", " %"),
    "moaa_s": ("MOAA/S", ""),
    "dose_mg": ("dose", " mg"),
    "weight_kg": ("weight", " kg"),
    "dose_mg_per_kg": ("dose", " mg/kg"),
    "infusion_minutes": ("infusion", " min"),
    "minutes_after_dose": ("minutes after dose", ""),
    "cadss_total": ("CADSS", ""),
    "dast10_score": ("DAST-10", ""),
    "phq9_item9": ("PHQ-9 item 9", ""),
    "hypertension_reading_grade": ("reading grade", ""),
    "ctcae_grade": ("CTCAE grade", ""),
    "expected_quantity": ("expected quantity", ""),
    "actual_quantity": ("actual quantity", ""),
}


def shown(named: Iterable[str]) -> set[str]:
    """The facts kept for a condition that names ``named``: those, and the other half of
    a blood pressure."""
    wanted = set(named)
    for name in list(wanted):
        wanted.update(_COMPANIONS.get(name, ()))
    return wanted


def trigger_values(named: Iterable[str], facts: Mapping[str, Any]) -> dict[str, Any]:
    """The facts of ``shown(named)`` that the report has; absent and null ones left out."""
    return {name: facts[name] for name in sorted(shown(named)) if facts.get(name) is not None}


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ", ".join(_value(item) for item in value) or "none"
    if isinstance(value, str):
        return value.replace("_", " ")
    return str(value)


def label(field: str) -> str:
    """A field's name in words: "respiratory rate", "C-SSRS q4"."""
    known = _LABELS.get(field)
    if known is not None:
        return known[0]
    if field.startswith("cssrs."):
        return f"C-SSRS {field.removeprefix('cssrs.')}"
    return field.replace("_", " ")


def describe_one(field: str, value: Any) -> str:
    """One value with its label and unit: "pulse 128/min"; "field value" when unknown."""
    unit = _LABELS.get(field, ("", ""))[1] if not isinstance(value, bool | list | str) else ""
    return f"{label(field)} {_value(value)}{unit}"


def describe(values: Mapping[str, Any]) -> str:
    """Short text for trigger values: "BP 210/125 mmHg, pulse 128/min"; "" for none."""
    parts: list[str] = []
    rest = dict(values)
    systolic, diastolic = rest.get("systolic"), rest.get("diastolic")
    if systolic is not None and diastolic is not None:
        parts.append(f"BP {_value(systolic)}/{_value(diastolic)} mmHg")
        del rest["systolic"], rest["diastolic"]
    known = [f for f in _LABELS if f in rest]
    others = sorted(f for f in rest if f not in _LABELS)
    # An empty list (no symptoms) named by a condition did not trigger it.
    parts.extend(describe_one(f, rest[f]) for f in (*known, *others) if rest[f] not in (None, []))
    return ", ".join(parts)


def describe_change(field: str, before: Any, after: Any) -> str:
    """An amendment's change of one field: "systolic 150 → 210" (— for none)."""

    def shown(value: Any) -> str:
        return "—" if value is None else _value(value)

    return f"{label(field)} {shown(before)} → {shown(after)}"
