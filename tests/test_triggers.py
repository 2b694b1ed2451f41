"""The values that triggered an alert, put into words (alerts/triggers.py): no database."""

from __future__ import annotations

from typing import Any

import pytest

from safetyreport.alerts.triggers import describe, describe_change, trigger_values


@pytest.mark.parametrize(
    ("values", "text"),
    [
        ({"systolic": 210, "diastolic": 125}, "BP 210/125 mmHg"),
        ({"pulse": 128}, "pulse 128/min"),
        ({"spo2": 88}, "SpO2 88 %"),
        ({"moaa_s": 2}, "MOAA/S 2"),
        ({"respiratory_rate": 8}, "respiratory rate 8/min"),
        ({"dose_mg_per_kg": 1.2}, "dose 1.2 mg/kg"),
        ({"dose_mg": 56.0}, "dose 56 mg"),
        ({"cssrs.q4": True}, "C-SSRS q4 yes"),
        ({"symptoms": ["chest_pain", "severe_headache"]}, "symptoms chest pain, severe headache"),
        ({"incident_type": "theft"}, "incident type theft"),
        # Fields without a label of their own: "field value".
        ({"some_field": 3}, "some field 3"),
        (
            {"systolic": 210, "diastolic": 125, "symptoms": ["chest_pain"], "pulse": 128},
            "BP 210/125 mmHg, pulse 128/min, symptoms chest pain",
        ),
        ({"systolic": 190}, "systolic 190 mmHg"),
        # An empty list named by the condition did not trigger it.
        ({"systolic": 190, "diastolic": 100, "symptoms": []}, "BP 190/100 mmHg"),
        ({}, ""),
    ],
)
def test_describe_gives_short_text_with_units(values: dict[str, Any], text: str) -> None:
    assert describe(values) == text


def test_trigger_values_keep_the_named_facts_and_the_other_half_of_a_pressure() -> None:
    facts = {"systolic": 210, "diastolic": 125, "pulse": 90, "symptoms": None, "kind": "bp"}
    assert trigger_values({"systolic", "symptoms"}, facts) == {"systolic": 210, "diastolic": 125}
    assert trigger_values({"spo2"}, facts) == {}


@pytest.mark.parametrize(
    ("field", "before", "after", "text"),
    [
        ("systolic", 150, 210, "systolic 150 → 210"),
        ("cssrs.q4", False, True, "C-SSRS q4 no → yes"),
        ("narrative", None, "felt faint", "narrative — → felt faint"),
    ],
)
def test_describe_change(field: str, before: Any, after: Any, text: str) -> None:
    assert describe_change(field, before, after) == text
