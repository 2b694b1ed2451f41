"""Report validation: every kind accepted when valid, every broken rule named at once.

A rejected request must leave nothing behind: no report, no version, no audit entry.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from safetyreport.errors import ValidationFailed
from safetyreport.reports.types import BloodPressure, Dissociation, MisuseConcern
from safetyreport.reports.validation import validate_report
from tests.helpers.reports import (
    NOTHING,
    REPORTS,
    Stored,
    bp_report,
    dissociation_report,
    errors_of,
    misuse_report,
    new_key,
    post_report,
    stock_report,
    stored,
)
from tests.helpers.world import World

Builder = Callable[..., dict[str, Any]]
SKEW = timedelta(minutes=5)
NOW = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def nurse(world: World) -> dict[str, str]:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    return await world.login("nina")


async def rejected(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    headers: dict[str, str],
    body: Any,
) -> list[tuple[str, str]]:
    """POST ``body``; assert 422 and that nothing was stored; the (field, rule) pairs."""
    response = await post_report(client, headers, body)
    errors = errors_of(response)
    assert await stored(db) == NOTHING
    return errors


async def rejected_raw(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    headers: dict[str, str],
    content: bytes,
) -> list[tuple[str, str]]:
    response = await client.post(
        REPORTS,
        content=content,
        headers={**headers, "Idempotency-Key": new_key(), "Content-Type": "application/json"},
    )
    errors = errors_of(response)
    assert await stored(db) == NOTHING
    return errors


def without(body: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in names}


# --- accepted -------------------------------------------------------------------------


@pytest.mark.parametrize("builder", [bp_report, dissociation_report, misuse_report])
async def test_each_kind_is_accepted(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    builder: Builder,
) -> None:
    response = await post_report(client, nurse, builder())
    assert response.status_code == 201, response.text
    assert response.json()["kind"] == builder()["kind"]
    assert await stored(db) == Stored(1, 1, 1)


async def test_limits_themselves_are_accepted(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    bodies = [
        bp_report(
            systolic=300,
            diastolic=200,
            pulse=250,
            respiratory_rate=60,
            drug="other",
            dose_mg=10_000,
            minutes_after_dose=1440,
        ),
        bp_report(systolic=50, diastolic=30, pulse=20, respiratory_rate=4, minutes_after_dose=0),
        dissociation_report(moaa_s=0, cadss_total=92, spo2=50, weight_kg=20, dose_mg=1),
        dissociation_report(moaa_s=5, cadss_total=0, spo2=100, weight_kg=300, dose_mg=1),
        bp_report(patient_ref="A" * 64),
    ]
    for body in bodies:
        response = await post_report(client, nurse, body)
        assert response.status_code == 201, (body, response.text)
    assert (await stored(db)).reports == len(bodies)


async def test_a_time_one_minute_ahead_is_accepted(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    ahead = datetime.now(UTC) + timedelta(minutes=1)
    response = await post_report(client, nurse, bp_report(occurred_at=ahead.isoformat()))
    assert response.status_code == 201, response.text


# --- rejected: one rule each -----------------------------------------------------------


@pytest.mark.parametrize(
    ("builder", "field", "value"),
    [
        (bp_report, "systolic", 301),
        (bp_report, "systolic", 49),
        (bp_report, "diastolic", 29),
        (bp_report, "diastolic", 201),
        (bp_report, "pulse", 19),
        (bp_report, "pulse", 251),
        (dissociation_report, "moaa_s", 6),
        (dissociation_report, "moaa_s", -1),
        (dissociation_report, "cadss_total", 93),
        (dissociation_report, "spo2", 49),
        (dissociation_report, "spo2", 101),
        (bp_report, "minutes_after_dose", 1441),
        (bp_report, "minutes_after_dose", -1),
        (bp_report, "dose_mg", 0),
        (misuse_report, "expected_quantity", -1),
    ],
)
async def test_out_of_range_is_rejected(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    builder: Builder,
    field: str,
    value: int,
) -> None:
    errors = await rejected(client, db, nurse, builder(**{field: value}))
    assert (field, "range") in errors


async def test_every_bad_field_is_named_at_once(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    body = bp_report(systolic=301, diastolic=29, pulse=19)
    errors = await rejected(client, db, nurse, body)
    assert errors == [("systolic", "range"), ("diastolic", "range"), ("pulse", "range")]


async def test_errors_of_different_rules_are_named_together(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    body = without(bp_report(colour="red", drug="whisky", pulse="fast"), "phase")
    errors = await rejected(client, db, nurse, body)
    assert sorted(errors) == [
        ("colour", "unknown_field"),
        ("drug", "enum"),
        ("phase", "required"),
        ("pulse", "type"),
    ]


@pytest.mark.parametrize(("systolic", "diastolic"), [(120, 120), (100, 110)])
async def test_systolic_must_exceed_diastolic(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    systolic: int,
    diastolic: int,
) -> None:
    body = bp_report(systolic=systolic, diastolic=diastolic)
    assert await rejected(client, db, nurse, body) == [("systolic", "above_diastolic")]


async def test_unknown_field_is_rejected(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    # A field of another kind is just as unknown.
    body = bp_report(temperature=37, moaa_s=4)
    errors = await rejected(client, db, nurse, body)
    assert sorted(errors) == [("moaa_s", "unknown_field"), ("temperature", "unknown_field")]


@pytest.mark.parametrize(
    ("builder", "field", "value"),
    [
        (bp_report, "systolic", "150"),
        (bp_report, "systolic", 150.5),
        (bp_report, "systolic", True),
        (bp_report, "symptoms", "chest_pain"),
        (dissociation_report, "resolved", "yes"),
        (misuse_report, "description", 42),
        (bp_report, "occurred_at", 1_700_000_000),
    ],
)
async def test_wrong_type_is_rejected(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    builder: Builder,
    field: str,
    value: Any,
) -> None:
    assert await rejected(client, db, nurse, builder(**{field: value})) == [(field, "type")]


@pytest.mark.parametrize(
    ("builder", "field", "value"),
    [
        (bp_report, "drug", "aspirin"),
        (bp_report, "outcome", "fine"),
        (bp_report, "phase", "during"),
        (dissociation_report, "severity", "extreme"),
        (misuse_report, "concern_type", "rumour"),
        (bp_report, "symptoms", ["chest_pain", "hiccups"]),
        (bp_report, "seriousness", ["bad"]),
    ],
)
async def test_bad_enum_is_rejected(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    builder: Builder,
    field: str,
    value: Any,
) -> None:
    assert await rejected(client, db, nurse, builder(**{field: value})) == [(field, "enum")]


@pytest.mark.parametrize("ref", ["", "PT 001", "PT/001", "Émile", "A" * 65])
async def test_bad_patient_ref_is_rejected(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str], ref: str
) -> None:
    body = bp_report(patient_ref=ref)
    assert await rejected(client, db, nurse, body) == [("patient_ref", "pattern")]


async def test_occurred_at_needs_an_offset(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    body = bp_report(occurred_at="2026-01-15T10:30:00")
    assert await rejected(client, db, nurse, body) == [("occurred_at", "offset_required")]


async def test_occurred_at_must_be_a_time(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    body = bp_report(occurred_at="yesterday")
    assert await rejected(client, db, nurse, body) == [("occurred_at", "format")]


async def test_occurred_at_beyond_the_clock_skew_is_rejected(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    future = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
    body = bp_report(occurred_at=future)
    assert await rejected(client, db, nurse, body) == [("occurred_at", "not_in_future")]


@pytest.mark.parametrize(
    ("builder", "field"),
    [
        (bp_report, "clinic"),
        (bp_report, "patient_ref"),
        (bp_report, "occurred_at"),
        (bp_report, "drug"),
        (bp_report, "outcome"),
        (bp_report, "systolic"),
        (bp_report, "diastolic"),
        (dissociation_report, "moaa_s"),
        (dissociation_report, "resolved"),
        (misuse_report, "description"),
        (misuse_report, "concern_type"),
    ],
)
async def test_missing_required_field_is_rejected(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    builder: Builder,
    field: str,
) -> None:
    errors = await rejected(client, db, nurse, without(builder(), field))
    assert errors == [(field, "required")]


async def test_all_missing_required_fields_are_named(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    errors = await rejected(client, db, nurse, {"kind": "blood_pressure"})
    assert sorted(errors) == sorted(
        (name, "required")
        for name in (
            "clinic",
            "patient_ref",
            "occurred_at",
            "drug",
            "outcome",
            "phase",
            "systolic",
            "diastolic",
        )
    )


async def test_kind_is_required(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    body = without(bp_report(), "kind")
    assert await rejected(client, db, nurse, body) == [("kind", "required")]


@pytest.mark.parametrize("kind", ["fever", "", "BLOOD_PRESSURE", 3, None, ["blood_pressure"]])
async def test_kind_must_be_known(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str], kind: Any
) -> None:
    errors = await rejected(client, db, nurse, bp_report(kind=kind))
    assert len(errors) == 1
    assert errors[0][0] == "kind"
    assert errors[0][1] in {"enum", "required"}
    if kind is not None:
        assert errors[0][1] == "enum"


@pytest.mark.parametrize("field", ["seriousness", "symptoms"])
async def test_duplicate_list_values_are_rejected(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str], field: str
) -> None:
    values: dict[str, Any] = {
        "seriousness": ["hospitalization", "hospitalization"],
        "symptoms": ["chest_pain", "confusion", "chest_pain"],
    }
    body = bp_report(**{field: values[field]})
    assert await rejected(client, db, nurse, body) == [(field, "unique")]


@pytest.mark.parametrize("concern", ["theft", "loss", "inventory_discrepancy"])  # incident types
async def test_quantity_incidents_need_quantities(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str], concern: str
) -> None:
    body = without(
        stock_report(incident_type=concern), "expected_quantity", "actual_quantity", "unit"
    )
    errors = await rejected(client, db, nurse, body)
    assert sorted(errors) == [
        ("actual_quantity", "required"),
        ("expected_quantity", "required"),
        ("unit", "required"),
    ]


async def test_patient_behaviour_takes_no_quantities(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    body = misuse_report(
        concern_type="patient_behaviour",
        expected_quantity=10,
        actual_quantity=8,
        unit="ml",
        lot="LOT-7",
    )
    errors = await rejected(client, db, nurse, body)
    assert sorted(errors) == [
        ("actual_quantity", "not_applicable"),
        ("expected_quantity", "not_applicable"),
        ("lot", "not_applicable"),
        ("unit", "not_applicable"),
    ]


async def test_patient_behaviour_without_quantities_is_accepted(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    body = without(
        misuse_report(concern_type="patient_behaviour"),
        "expected_quantity",
        "actual_quantity",
        "unit",
    )
    response = await post_report(client, nurse, body)
    assert response.status_code == 201, response.text


async def test_a_sent_but_invalid_quantity_is_not_called_missing(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    errors = await rejected(client, db, nurse, misuse_report(expected_quantity=-1, unit="litre"))
    assert errors == [("expected_quantity", "range"), ("unit", "enum")]


@pytest.mark.parametrize("field", ["narrative", "patient_ref"])
async def test_nul_in_text_is_rejected(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str], field: str
) -> None:
    body = bp_report(**{field: "before\x00after"})
    assert await rejected(client, db, nurse, body) == [(field, "no_nul")]


@pytest.mark.parametrize(
    "content",
    [b'{"kind": "blood_pressure",', b"not json", b"{'kind': 'dissociation'}", b"\xff\xfe"],
)
async def test_malformed_json_is_rejected(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str], content: bytes
) -> None:
    assert await rejected_raw(client, db, nurse, content) == [("$", "malformed_json")]


async def test_an_empty_body_is_rejected(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    assert await rejected_raw(client, db, nurse, b"") == [("$", "required")]


@pytest.mark.parametrize(
    "content", [b'[{"kind": "blood_pressure"}]', b"[]", b'"blood_pressure"', b"42", b"null"]
)
async def test_a_body_that_is_not_an_object_is_rejected(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str], content: bytes
) -> None:
    assert await rejected_raw(client, db, nurse, content) == [("$", "type")]


async def test_an_oversized_body_is_refused(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    body = bp_report(narrative="x" * (65 * 1024))
    response = await post_report(client, nurse, body)
    assert response.status_code == 413, response.text
    assert await stored(db) == NOTHING


async def test_a_body_just_under_the_limit_is_read(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    # 60 KiB is read and validated (422 for the too-long narrative), not refused as too large.
    body = bp_report(narrative="x" * (60 * 1024))
    assert await rejected(client, db, nurse, body) == [("narrative", "length")]


# --- validate_report, directly ------------------------------------------------------


def broken(raw: Any, now: datetime = NOW) -> list[tuple[str, str]]:
    with pytest.raises(ValidationFailed) as info:
        validate_report(raw, skew=SKEW, now=now)
    return [(e.field, e.rule) for e in info.value.errors]


def test_validate_returns_the_typed_report() -> None:
    assert isinstance(validate_report(bp_report(), skew=SKEW, now=NOW), BloodPressure)
    assert isinstance(validate_report(dissociation_report(), skew=SKEW, now=NOW), Dissociation)
    assert isinstance(validate_report(misuse_report(), skew=SKEW, now=NOW), MisuseConcern)


def test_validate_normalises_occurred_at_to_utc() -> None:
    body = validate_report(bp_report(occurred_at="2026-01-15T10:30:00+01:00"), skew=SKEW, now=NOW)
    assert body.occurred_at == datetime(2026, 1, 15, 9, 30, tzinfo=UTC)
    assert body.occurred_at.utcoffset() == timedelta(0)


def test_validate_allows_the_clock_skew_and_no_more() -> None:
    inside = (NOW + SKEW).isoformat()
    outside = (NOW + SKEW + timedelta(seconds=1)).isoformat()
    validate_report(bp_report(occurred_at=inside), skew=SKEW, now=NOW)
    assert broken(bp_report(occurred_at=outside)) == [("occurred_at", "not_in_future")]


def test_validate_names_every_range_error() -> None:
    raw = bp_report(systolic=301, diastolic=29, pulse=19, dose_mg=0, minutes_after_dose=1441)
    assert broken(raw) == [
        ("dose_mg", "range"),
        ("minutes_after_dose", "range"),
        ("systolic", "range"),
        ("diastolic", "range"),
        ("pulse", "range"),
    ]
    raw = dissociation_report(moaa_s=6, cadss_total=93, spo2=49, respiratory_rate=3)
    assert broken(raw) == [
        ("respiratory_rate", "range"),
        ("spo2", "range"),
        ("moaa_s", "range"),
        ("cadss_total", "range"),
    ]


def test_validate_rejects_what_is_not_an_object() -> None:
    assert broken([]) == [("$", "type")]
    assert broken("x") == [("$", "type")]


def test_validate_needs_a_known_kind() -> None:
    assert broken(without(bp_report(), "kind")) == [("kind", "required")]
    assert broken(bp_report(kind="fever")) == [("kind", "enum")]


def test_validate_rejects_offsetless_time_and_pressure_together() -> None:
    raw = bp_report(occurred_at="2026-01-15T10:30:00", systolic=80, diastolic=90)
    assert sorted(broken(raw)) == [
        ("occurred_at", "offset_required"),
        ("systolic", "above_diastolic"),
    ]


async def test_a_time_before_year_one_in_utc_is_a_validation_error(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    body = bp_report(occurred_at="0001-01-01T00:30:00+01:00")
    errors = await rejected(client, db, nurse, body)
    assert [field for field, _ in errors] == ["occurred_at"]
