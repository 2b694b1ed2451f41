"""The hypertension reading grade of one blood-pressure reading (docs/clinical-rules.md).

The CTCAE v5.0 Hypertension grades, applied to one reading:

    1  SBP 120-139 or DBP 80-89
    2  SBP 140-159 or DBP 90-99
    3  SBP >= 160 or DBP >= 100
    4  a hypertensive emergency (ACC/AHA 2017): SBP >= 180 or DBP >= 120 together
       with a target-organ symptom

The worse of the systolic and diastolic grades wins. CTCAE grades 2-4 also involve
intervention, persistence and consequences, which one reading cannot show: this is the
grade of the reading, not of the patient's event. A seizure or neurological deficit at
a lower pressure is an event of its own (its own rule), not a hypertension grade.
"""

from __future__ import annotations

from collections.abc import Collection

# ACC/AHA 2017 severe elevation: with a target-organ symptom, a hypertensive emergency.
SEVERE_SYSTOLIC = 180
SEVERE_DIASTOLIC = 120


def is_severe_pressure(systolic: int, diastolic: int) -> bool:
    """At or above 180 systolic or 120 diastolic (ACC/AHA 2017 severe hypertension)."""
    return systolic >= SEVERE_SYSTOLIC or diastolic >= SEVERE_DIASTOLIC


def _systolic_grade(systolic: int) -> int:
    if systolic >= 160:
        return 3
    if systolic >= 140:
        return 2
    if systolic >= 120:
        return 1
    return 0


def _diastolic_grade(diastolic: int) -> int:
    if diastolic >= 100:
        return 3
    if diastolic >= 90:
        return 2
    if diastolic >= 80:
        return 1
    return 0


def hypertension_reading_grade(systolic: int, diastolic: int, symptoms: Collection[str]) -> int:
    if symptoms and is_severe_pressure(systolic, diastolic):
        return 4
    return max(_systolic_grade(systolic), _diastolic_grade(diastolic))
