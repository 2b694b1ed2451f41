"""Keyset pages (the report list, the alert list, audit search) return every row once,
in the list's order, when many rows share the sort key and when rows are written
between pages: a row written after the cursor's place is on a later page, one written
before it on none (migration 0024's indexes serve these pages)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from bench.fill_audit import append_entries
from tests.helpers.world import World

BASE = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
LIMIT = 7


async def walk(
    world: World,
    headers: dict[str, str],
    path: str,
    params: dict[str, Any],
    between: Callable[[int], Awaitable[None]] | None = None,
) -> list[dict[str, Any]]:
    """Every item of the list, page by page; ``between(page)`` runs after each page."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for page in range(100):
        query = {**params, "limit": LIMIT, **({"cursor": cursor} if cursor else {})}
        response = await world.client.get(path, params=query, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) <= LIMIT
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
        if between is not None:
            await between(page)
    raise AssertionError("the cursor does not advance")


# --- reports ----------------------------------------------------------------------------


async def insert_reports(
    db: asyncpg.Connection[Any], clinic: str, times: list[datetime]
) -> set[str]:
    admin = await db.fetchval("SELECT id FROM users WHERE username = 'adam'")
    clinic_id = await db.fetchval("SELECT id FROM clinics WHERE code = $1", clinic)
    ids = [uuid.uuid4() for _ in times]
    await db.executemany(
        "WITH r AS (INSERT INTO reports (id, clinic_id, kind, patient_ref, occurred_at, "
        "current_version, created_by) VALUES ($1, $2, 'blood_pressure', 'PT-1', $3, 1, $4)) "
        "INSERT INTO report_versions (report_id, version, body, created_by) "
        "VALUES ($1, 1, $5, $4)",
        [
            (i, clinic_id, t, admin, {"kind": "blood_pressure", "systolic": 120, "diastolic": 80})
            for i, t in zip(ids, times, strict=True)
        ],
    )
    return {str(i) for i in ids}


def report_key(item: dict[str, Any]) -> tuple[datetime, uuid.UUID]:
    return datetime.fromisoformat(item["occurred_at"]), uuid.UUID(item["id"])


@pytest.mark.parametrize("clinic", ["C1", None])
async def test_report_pages_with_ties_and_writes_between_pages(
    world: World, db: asyncpg.Connection[Any], clinic: str | None
) -> None:
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("adam", "admin", all_clinics=True)
    headers = await world.login("adam")
    # Six reports at each of five times in each clinic: ties cross every page boundary.
    times = [BASE - timedelta(hours=h) for h in range(5) for _ in range(6)]
    before = await insert_reports(db, "C1", times) | await insert_reports(db, "C2", times)
    newer: set[str] = set()
    older: set[str] = set()

    async def write(page: int) -> None:
        # Newer than any page's place: never listed; older than every report before it
        # (a tie with a listed one could sort either side of the cursor): listed later.
        newer.update(await insert_reports(db, "C1", [BASE + timedelta(minutes=page + 1)]))
        older.update(await insert_reports(db, "C1", [BASE - timedelta(hours=5 + page)]))

    params = {"clinic": clinic} if clinic else {}
    items = await walk(world, headers, "/api/v1/reports", params, write)

    ids = [i["id"] for i in items]
    assert len(ids) == len(set(ids)), "a report on two pages"
    keys = [report_key(i) for i in items]
    assert keys == sorted(keys, reverse=True)
    expected = before if clinic is None else {i for i in before if i in ids}
    assert expected <= set(ids)
    assert len(expected) == (60 if clinic is None else 30)
    assert older <= set(ids)
    assert not newer & set(ids)


# --- alerts -----------------------------------------------------------------------------


async def insert_alerts(
    db: asyncpg.Connection[Any], clinic: str, rows: list[tuple[str, datetime]]
) -> set[str]:
    """Resolved alerts of each (severity, first_seen_at), of a rule of that severity."""
    clinic_id = await db.fetchval("SELECT id FROM clinics WHERE code = $1", clinic)
    rules = {
        r["severity"]: (r["id"], r["version"])
        for r in await db.fetch("SELECT id, version, severity FROM alert_rules ORDER BY id")
    }
    ids = [uuid.uuid4() for _ in rows]
    await db.executemany(
        "INSERT INTO alerts (id, rule_id, rule_version, clinic_id, group_by, group_key, "
        "from_pattern, severity, status, first_seen_at, last_seen_at, resolved_at, "
        "resolution_reason) "
        "VALUES ($1, $2, $3, $4, 'patient', $7, false, $5, 'resolved', $6, $6, $6, 'test')",
        [
            (i, *rules[severity], clinic_id, severity, at, str(i))
            for i, (severity, at) in zip(ids, rows, strict=True)
        ],
    )
    return {str(i) for i in ids}


RANK = {"info": 0, "high": 1, "urgent": 2, "critical": 3}


def alert_key(item: dict[str, Any]) -> tuple[int, datetime, uuid.UUID]:
    return (
        -RANK[item["severity"]],
        datetime.fromisoformat(item["first_seen_at"]),
        uuid.UUID(item["id"]),
    )


@pytest.mark.parametrize("clinic", ["C1", None])
async def test_alert_pages_with_ties_and_writes_between_pages(
    world: World, db: asyncpg.Connection[Any], clinic: str | None
) -> None:
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("adam", "admin", all_clinics=True)
    headers = await world.login("adam")
    severities = sorted({r["severity"] for r in await db.fetch("SELECT severity FROM alert_rules")})
    assert len(severities) >= 3
    # Four alerts of each severity at each of three times: ties on rank and time.
    rows = [(s, BASE - timedelta(hours=h)) for s in severities for h in range(3) for _ in range(4)]
    before = await insert_alerts(db, "C1", rows) | await insert_alerts(db, "C2", rows)
    ahead: set[str] = set()
    behind: set[str] = set()
    least, most = min(severities, key=RANK.__getitem__), max(severities, key=RANK.__getitem__)

    async def write(page: int) -> None:
        # The most severe and oldest is before every cursor; the least severe and newer
        # than every alert before it, after every cursor.
        behind.update(await insert_alerts(db, "C1", [(most, BASE - timedelta(days=1))]))
        ahead.update(await insert_alerts(db, "C1", [(least, BASE + timedelta(days=page + 1))]))

    params = {"status": "resolved", **({"clinic": clinic} if clinic else {})}
    items = await walk(world, headers, "/api/v1/alerts", params, write)

    ids = [i["id"] for i in items]
    assert len(ids) == len(set(ids)), "an alert on two pages"
    keys = [alert_key(i) for i in items]
    assert keys == sorted(keys)
    listed = set(ids)
    assert len(before & listed) == (len(rows) * 2 if clinic is None else len(rows))
    assert ahead <= listed
    assert not behind & listed


# --- audit search -----------------------------------------------------------------------


def tied_clock(start: datetime) -> Callable[[int], datetime]:
    """Three entries at each instant."""

    def at(n: int) -> datetime:
        return start + timedelta(seconds=n // 3)

    return at


def audit_key(item: dict[str, Any]) -> tuple[datetime, str, int]:
    return datetime.fromisoformat(item["recorded_at"]), item["chain"], item["seq"]


async def entries(db: asyncpg.Connection[Any]) -> set[tuple[str, int]]:
    return {(r["chain"], r["seq"]) for r in await db.fetch("SELECT chain, seq FROM audit_entries")}


@pytest.mark.parametrize("clinic", ["C1", None])
async def test_audit_search_pages_with_ties_and_writes_between_pages(
    world: World, db: asyncpg.Connection[Any], clinic: str | None
) -> None:
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("audrey", "auditor", all_clinics=True)
    headers = await world.login("audrey")
    # Entries of both chains at the same instants, three a chain at each: ties on time,
    # and on time and chain.
    for chain in ("clinic:C1", "clinic:C2"):
        await append_entries(db, chain, 30, clock=tied_clock(BASE))
    before = await entries(db)
    older: set[tuple[str, int]] = set()

    async def write(page: int) -> None:
        # Entries recorded before every cursor's place (listed later on) and after it
        # (each page's own search, recorded now, and one recorded tomorrow: never listed).
        known = await entries(db)
        older_than_all = BASE - timedelta(days=page + 1)
        await append_entries(db, "clinic:C1", 1, clock=lambda n: older_than_all)
        older.update(await entries(db) - known)
        tomorrow = datetime.now(UTC) + timedelta(days=1)
        await append_entries(db, "clinic:C2", 1, clock=lambda n: tomorrow)

    params = {"clinic": clinic} if clinic else {}
    items = await walk(world, headers, "/api/v1/audit/entries", params, write)

    keys = [audit_key(i) for i in items]
    assert len(keys) == len(set(keys)), "an entry on two pages"
    assert keys == sorted(keys, reverse=True)
    listed = {(chain, seq) for _, chain, seq in keys}
    visible = {k for k in before if clinic is None or k[0] == f"clinic:{clinic}"}
    assert len(visible) > 3 * LIMIT
    assert older
    assert listed == visible | older
