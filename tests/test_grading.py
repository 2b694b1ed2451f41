"""The hypertension reading grade (CTCAE v5.0 grades applied to one reading; grade 4 an
ACC/AHA hypertensive emergency; docs/clinical-rules.md), directly and as stored with a
report of any patient kind."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from safetyreport.reports.grading import hypertension_reading_grade
from tests.helpers.reports import (
    REPORTS,
    adverse_report,
    bp_report,
    create_report,
    dissociation_report,
    misuse_report,
    stock_report,
)
from tests.helpers.world import World


@pytest.mark.parametrize(
    ("systolic", "diastolic", "grade"),
    [
        (119, 79, 0),
        (90, 60, 0),
        (120, 79, 1),
        (119, 80, 1),
        (139, 89, 1),
        (140, 79, 2),
        (119, 90, 2),
        (140, 89, 2),
        (139, 90, 2),
        (159, 99, 2),
        (160, 79, 3),
        (119, 100, 3),
        (160, 99, 3),
        (159, 100, 3),
        (200, 130, 3),
        (300, 200, 3),
    ],
)
def test_grade_without_symptoms(systolic: int, diastolic: int, grade: int) -> None:
    assert hypertension_reading_grade(systolic, diastolic, []) == grade


def test_the_worse_of_systolic_and_diastolic_wins() -> None:
    assert hypertension_reading_grade(165, 70, []) == 3
    assert hypertension_reading_grade(125, 105, []) == 3
    assert hypertension_reading_grade(145, 82, []) == 2
    assert hypertension_reading_grade(122, 95, []) == 2


@pytest.mark.parametrize("symptom", ["neurological_deficit", "seizure"])
@pytest.mark.parametrize(
    ("systolic", "diastolic", "grade"), [(110, 70, 0), (150, 92, 2), (179, 119, 3)]
)
def test_neurological_symptoms_below_180_over_120_are_not_grade_4(
    symptom: str, systolic: int, diastolic: int, grade: int
) -> None:
    """A seizure at a normal pressure is an event of its own (the target-organ-symptom
    rule), not a hypertension grade."""
    assert hypertension_reading_grade(systolic, diastolic, [symptom]) == grade


@pytest.mark.parametrize(
    ("systolic", "diastolic", "grade"),
    [
        (180, 100, 4),
        (150, 120, 4),
        (180, 120, 4),
        (181, 121, 4),
        (179, 100, 3),
        (175, 100, 3),
        (170, 119, 3),
        (179, 119, 3),
        (130, 85, 1),
    ],
)
def test_a_symptom_is_grade_4_only_at_180_or_120(systolic: int, diastolic: int, grade: int) -> None:
    assert hypertension_reading_grade(systolic, diastolic, ["chest_pain"]) == grade


@pytest.mark.parametrize(
    "symptom",
    [
        "severe_headache",
        "chest_pain",
        "shortness_of_breath",
        "visual_change",
        "neurological_deficit",
        "confusion",
        "seizure",
    ],
)
def test_every_target_organ_symptom_counts_at_180(symptom: str) -> None:
    assert hypertension_reading_grade(180, 110, [symptom]) == 4
    assert hypertension_reading_grade(179, 110, [symptom]) == 3


def test_a_very_high_reading_without_symptoms_is_grade_3() -> None:
    assert hypertension_reading_grade(220, 130, []) == 3
    assert hypertension_reading_grade(180, 120, []) == 3


# --- the stored grade -----------------------------------------------------------


@pytest.fixture
async def nurse(world: World) -> dict[str, str]:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    return await world.login("nina")


async def test_stored_grade_matches_the_reading(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    cases: list[tuple[dict[str, Any], int]] = [
        ({"systolic": 119, "diastolic": 79}, 0),
        ({"systolic": 120, "diastolic": 79}, 1),
        ({"systolic": 119, "diastolic": 90}, 2),
        ({"systolic": 160, "diastolic": 99}, 3),
        ({"systolic": 179, "diastolic": 100, "symptoms": ["chest_pain"]}, 3),
        ({"systolic": 180, "diastolic": 100, "symptoms": ["chest_pain"]}, 4),
        ({"systolic": 190, "diastolic": 125}, 3),
        ({"systolic": 118, "diastolic": 70, "symptoms": ["neurological_deficit"]}, 0),
    ]
    for fields, grade in cases:
        view = await create_report(client, nurse, bp_report(**fields))
        await assert_grade(client, db, nurse, view, grade)


async def assert_grade(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    view: dict[str, Any],
    grade: int | None,
) -> None:
    """The grade in the created view, in the database and when the report is read."""
    assert "ctcae_grade" not in view
    assert view["hypertension_reading_grade"] == grade, view
    stored = await db.fetchval(
        "SELECT hypertension_reading_grade FROM report_versions WHERE report_id = $1::uuid",
        view["id"],
    )
    assert stored == grade, view
    read = await client.get(f"{REPORTS}/{view['id']}", headers=nurse)
    assert read.json()["hypertension_reading_grade"] == grade


@pytest.mark.parametrize(
    ("builder", "pressure", "grade"),
    [
        (adverse_report, {"systolic": 165, "diastolic": 95}, 3),
        (dissociation_report, {"systolic": 145, "diastolic": 85}, 2),
        (misuse_report, {"systolic": 185, "diastolic": 100}, 3),
    ],
)
async def test_any_patient_report_with_a_pressure_has_a_grade(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    builder: Any,
    pressure: dict[str, int],
    grade: int,
) -> None:
    view = await create_report(client, nurse, builder(**pressure))
    await assert_grade(client, db, nurse, view, grade)


@pytest.mark.parametrize(
    "builder", [dissociation_report, misuse_report, adverse_report, stock_report]
)
async def test_reports_without_a_pressure_have_no_grade(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    builder: Any,
) -> None:
    view = await create_report(client, nurse, builder())
    await assert_grade(client, db, nurse, view, None)
