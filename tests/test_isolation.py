"""Clinic isolation is a security boundary.

Another clinic's report must look exactly like one that does not exist, must never be
changed, and must never appear in a listing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient

from tests.helpers.reports import (
    REPORTS,
    Stored,
    amend,
    audit_rows,
    bp_report,
    create_report,
    errors_of,
    post_report,
    stored,
)
from tests.helpers.world import World


@dataclass(frozen=True)
class TwoClinics:
    client: AsyncTestClient[Any]
    db: asyncpg.Connection[Any]
    c1_nurse: dict[str, str]
    c2_nurse: dict[str, str]
    report: dict[str, Any]  # C1's report, as its nurse saw it created


@pytest.fixture
async def two(world: World) -> TwoClinics:
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("ada", "nurse", ["C1"])
    await world.user("bea", "nurse", ["C2"])
    c1_nurse = await world.login("ada")
    c2_nurse = await world.login("bea")
    report = await create_report(world.client, c1_nurse, bp_report("C1", patient_ref="PT-C1"))
    return TwoClinics(world.client, world.db, c1_nurse, c2_nurse, report)


def normalised(response: httpx.Response, name: str) -> tuple[int, dict[str, str], Any]:
    """Status, content type and body with the requested id or code blanked out."""
    body = response.json()
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        body["detail"] = body["detail"].replace(name, "<name>")
    return response.status_code, {"content-type": response.headers["content-type"]}, body


async def ids_listed(
    client: AsyncTestClient[Any], headers: dict[str, str], **params: Any
) -> list[str]:
    response = await client.get(REPORTS, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def assert_unchanged(two: TwoClinics) -> None:
    """C1's report is exactly as created, and nobody but its nurse touched it."""
    rows = await two.db.fetch(
        "SELECT version, body FROM report_versions WHERE report_id = $1::uuid", two.report["id"]
    )
    assert [(r["version"], r["body"]) for r in rows] == [(1, two.report["body"])]
    assert await stored(two.db) == Stored(1, 1, 1)
    assert await audit_rows(two.db, "report.amended") == []
    reads = await audit_rows(two.db, "report.read", two.report["id"])
    assert {r["actor"] for r in reads} <= {"ada"}


async def test_reading_another_clinics_report_looks_like_a_missing_one(two: TwoClinics) -> None:
    foreign = await two.client.get(f"{REPORTS}/{two.report['id']}", headers=two.c2_nurse)
    missing_id = str(uuid.uuid4())
    missing = await two.client.get(f"{REPORTS}/{missing_id}", headers=two.c2_nurse)
    assert foreign.status_code == 404
    assert normalised(foreign, two.report["id"]) == normalised(missing, missing_id)
    await assert_unchanged(two)


async def test_the_fhir_view_of_another_clinics_report_looks_like_a_missing_one(
    world: World, two: TwoClinics
) -> None:
    await world.user("audrey", "auditor", ["C2"])
    c2_auditor = await world.login("audrey")
    for headers in (two.c2_nurse, c2_auditor):
        foreign = await two.client.get(f"{REPORTS}/{two.report['id']}/fhir", headers=headers)
        missing_id = str(uuid.uuid4())
        missing = await two.client.get(f"{REPORTS}/{missing_id}/fhir", headers=headers)
        assert foreign.status_code == 404, foreign.text
        assert normalised(foreign, two.report["id"]) == normalised(missing, missing_id)
        assert "PT-C1" not in foreign.text
    await assert_unchanged(two)


@pytest.mark.parametrize(
    "body",
    [
        {"reason": "hijack", "systolic": 148},
        {"reason": "hijack", "systolic": 150},  # no change to C1's report
        {"reason": "hijack", "systolic": 40},  # invalid once merged
        {"reason": "hijack", "patient_ref": "PT-C2"},
    ],
)
@pytest.mark.parametrize("with_key", [False, True])
async def test_amending_another_clinics_report_looks_like_a_missing_one(
    two: TwoClinics, body: dict[str, Any], with_key: bool
) -> None:
    headers = {**two.c2_nurse, **({"Idempotency-Key": "k-1"} if with_key else {})}
    foreign = await amend(two.client, headers, two.report["id"], body)
    missing_id = str(uuid.uuid4())
    other_headers = {**two.c2_nurse, **({"Idempotency-Key": "k-2"} if with_key else {})}
    missing = await amend(two.client, other_headers, missing_id, body)
    assert foreign.status_code == 404, foreign.text
    assert normalised(foreign, two.report["id"]) == normalised(missing, missing_id)
    await assert_unchanged(two)
    reread = await two.client.get(f"{REPORTS}/{two.report['id']}", headers=two.c1_nurse)
    assert reread.json()["body"] == two.report["body"]
    assert reread.json()["version"] == 1


@pytest.mark.parametrize(
    "body",
    [
        {"systolic": 148},
        {"reason": "hijack", "clinic": "C2"},
        {"reason": "hijack", "kind": "dissociation"},
    ],
)
async def test_an_invalid_amendment_gets_the_same_answer_for_foreign_and_missing(
    two: TwoClinics, body: dict[str, Any]
) -> None:
    foreign = await amend(two.client, two.c2_nurse, two.report["id"], body)
    missing_id = str(uuid.uuid4())
    missing = await amend(two.client, two.c2_nurse, missing_id, body)
    assert normalised(foreign, two.report["id"]) == normalised(missing, missing_id)
    await assert_unchanged(two)


async def test_another_clinics_report_is_never_listed(two: TwoClinics) -> None:
    own = await create_report(two.client, two.c2_nurse, bp_report("C2", patient_ref="PT-C2"))
    listings: list[dict[str, Any]] = [
        {},
        {"kind": "blood_pressure"},
        {"patient_ref": "PT-C1"},
        {"since": "2026-01-01T00:00:00Z"},
        {"clinic": "C2"},
        {"limit": 1},
    ]
    for params in listings:
        assert two.report["id"] not in await ids_listed(two.client, two.c2_nurse, **params)
    assert await ids_listed(two.client, two.c2_nurse) == [own["id"]]
    assert await ids_listed(two.client, two.c1_nurse) == [two.report["id"]]


async def test_a_cursor_does_not_open_another_clinic(two: TwoClinics) -> None:
    await create_report(
        two.client, two.c1_nurse, bp_report("C1", occurred_at="2026-01-16T08:00:00Z")
    )
    page = await two.client.get(REPORTS, params={"limit": 1}, headers=two.c1_nurse)
    cursor = page.json()["next_cursor"]
    assert cursor is not None
    assert await ids_listed(two.client, two.c2_nurse, cursor=cursor) == []


async def test_filtering_by_another_clinic_looks_like_a_missing_clinic(two: TwoClinics) -> None:
    foreign = await two.client.get(REPORTS, params={"clinic": "C1"}, headers=two.c2_nurse)
    missing = await two.client.get(REPORTS, params={"clinic": "C9"}, headers=two.c2_nurse)
    assert foreign.status_code == 404, foreign.text
    assert normalised(foreign, "C1") == normalised(missing, "C9")
    assert await audit_rows(two.db, "report.listed") == []


async def test_reporting_for_another_clinic_is_refused(two: TwoClinics) -> None:
    response = await post_report(two.client, two.c2_nurse, bp_report("C1"), key="k-c1")
    assert [field for field, _ in errors_of(response)] == ["clinic"]
    assert await stored(two.db) == Stored(1, 1, 1)
    assert await two.db.fetchval("SELECT count(*) FROM idempotency_keys") == 1  # C1's own


async def test_a_nurse_of_both_clinics_sees_both(world: World, two: TwoClinics) -> None:
    own = await create_report(two.client, two.c2_nurse, bp_report("C2"))
    await world.user("cid", "nurse", ["C1", "C2"])
    both = await world.login("cid")
    assert sorted(await ids_listed(two.client, both)) == sorted([two.report["id"], own["id"]])
    assert await ids_listed(two.client, both, clinic="C1") == [two.report["id"]]
    assert await ids_listed(two.client, both, clinic="C2") == [own["id"]]
    for report_id in (two.report["id"], own["id"]):
        response = await two.client.get(f"{REPORTS}/{report_id}", headers=both)
        assert response.status_code == 200, response.text


async def test_an_auditor_of_all_clinics_sees_both(world: World, two: TwoClinics) -> None:
    own = await create_report(two.client, two.c2_nurse, bp_report("C2"))
    await world.user("audrey", "auditor", all_clinics=True)
    auditor = await world.login("audrey")
    assert sorted(await ids_listed(two.client, auditor)) == sorted([two.report["id"], own["id"]])
    assert await ids_listed(two.client, auditor, clinic="C1") == [two.report["id"]]
    assert await ids_listed(two.client, auditor, clinic="C2") == [own["id"]]
    for report_id in (two.report["id"], own["id"]):
        response = await two.client.get(f"{REPORTS}/{report_id}", headers=auditor)
        assert response.status_code == 200, response.text


async def test_an_auditor_of_one_clinic_sees_only_that_one(world: World, two: TwoClinics) -> None:
    own = await create_report(two.client, two.c2_nurse, bp_report("C2"))
    await world.user("audrey", "auditor", ["C2"])
    auditor = await world.login("audrey")
    assert await ids_listed(two.client, auditor) == [own["id"]]
    response = await two.client.get(f"{REPORTS}/{two.report['id']}", headers=auditor)
    assert response.status_code == 404
