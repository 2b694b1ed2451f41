"""CTCAE v5.0 hypertension grades (docs/clinical-rules.md), directly and as stored with a report."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from safetyreport.reports.grading import ctcae_hypertension_grade
from tests.helpers.reports import (
    REPORTS,
    bp_report,
    create_report,
    dissociation_report,
    misuse_report,
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
    assert ctcae_hypertension_grade(systolic, diastolic, []) == grade


def test_the_worse_of_systolic_and_diastolic_wins() -> None:
    assert ctcae_hypertension_grade(165, 70, []) == 3
    assert ctcae_hypertension_grade(125, 105, []) == 3
    assert ctcae_hypertension_grade(145, 82, []) == 2
    assert ctcae_hypertension_grade(122, 95, []) == 2


@pytest.mark.parametrize("symptom", ["neurological_deficit", "seizure"])
@pytest.mark.parametrize(("systolic", "diastolic"), [(110, 70), (150, 92), (190, 125)])
def test_neurological_symptoms_are_grade_4_at_any_pressure(
    symptom: str, systolic: int, diastolic: int
) -> None:
    assert ctcae_hypertension_grade(systolic, diastolic, [symptom]) == 4


@pytest.mark.parametrize(
    ("systolic", "diastolic", "grade"),
    [
        (181, 100, 4),
        (150, 121, 4),
        (181, 121, 4),
        (180, 100, 3),
        (175, 100, 3),
        (170, 120, 3),
        (180, 120, 3),
        (130, 85, 1),
    ],
)
def test_crisis_symptom_is_grade_4_only_above_180_over_120(
    systolic: int, diastolic: int, grade: int
) -> None:
    assert ctcae_hypertension_grade(systolic, diastolic, ["chest_pain"]) == grade


@pytest.mark.parametrize(
    "symptom",
    ["severe_headache", "chest_pain", "shortness_of_breath", "visual_change", "confusion"],
)
def test_every_crisis_symptom_counts_above_180(symptom: str) -> None:
    assert ctcae_hypertension_grade(185, 110, [symptom]) == 4
    assert ctcae_hypertension_grade(175, 110, [symptom]) == 3


def test_a_very_high_reading_without_symptoms_is_grade_3() -> None:
    assert ctcae_hypertension_grade(220, 130, []) == 3


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
        ({"systolic": 175, "diastolic": 100, "symptoms": ["chest_pain"]}, 3),
        ({"systolic": 181, "diastolic": 100, "symptoms": ["chest_pain"]}, 4),
        ({"systolic": 118, "diastolic": 70, "symptoms": ["neurological_deficit"]}, 4),
    ]
    for fields, grade in cases:
        view = await create_report(client, nurse, bp_report(**fields))
        assert view["ctcae_grade"] == grade, fields
        stored = await db.fetchval(
            "SELECT ctcae_grade FROM report_versions WHERE report_id = $1::uuid", view["id"]
        )
        assert stored == grade, fields
        read = await client.get(f"{REPORTS}/{view['id']}", headers=nurse)
        assert read.json()["ctcae_grade"] == grade


@pytest.mark.parametrize("builder", [dissociation_report, misuse_report])
async def test_other_kinds_have_no_grade(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    builder: Any,
) -> None:
    view = await create_report(client, nurse, builder())
    assert "ctcae_grade" in view
    assert view["ctcae_grade"] is None
    stored = await db.fetchval(
        "SELECT ctcae_grade FROM report_versions WHERE report_id = $1::uuid", view["id"]
    )
    assert stored is None
