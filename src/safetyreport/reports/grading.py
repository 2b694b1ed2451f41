"""CTCAE v5.0 hypertension grade of one blood-pressure reading (docs/clinical-rules.md).

    G1  SBP 120-139 or DBP 80-89
    G2  SBP 140-159 or DBP 90-99
    G3  SBP >= 160 or DBP >= 100
    G4  life-threatening: hypertensive crisis or neurological deficit

The worse of the systolic and diastolic grades wins. G4 is taken as a neurological
deficit or seizure, or a hypertensive emergency in the ACC/AHA 2017 sense: a
reading above 180/120 together with a target-organ (crisis) symptom.
"""

from __future__ import annotations

from collections.abc import Collection

NEUROLOGICAL = frozenset({"neurological_deficit", "seizure"})


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


def ctcae_hypertension_grade(systolic: int, diastolic: int, symptoms: Collection[str]) -> int:
    if NEUROLOGICAL & set(symptoms):
        return 4
    if symptoms and (systolic > 180 or diastolic > 120):
        return 4
    return max(_systolic_grade(systolic), _diastolic_grade(diastolic))
