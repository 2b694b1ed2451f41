"""The reads that must cost the same at year six are answered from migration 0024's
indexes in the list's order (no sort of the clinic's whole history): the plans of the
service's own queries, with the planner told to avoid scans and sorts where it can, so
that a tiny test database shows what a large one does."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import pytest

from safetyreport.alerts.evaluate import StoredReport, rules_in_force, window_query
from safetyreport.alerts.queue import AlertFilters
from safetyreport.alerts.queue import list_query as alert_list_query
from safetyreport.audit.export import AuditFilters
from safetyreport.audit.search import search_query
from safetyreport.auth.users import Principal, principal_by_username
from safetyreport.pagination import encode_cursor
from safetyreport.patients.service import _ALERTS as TIMELINE_ALERTS
from safetyreport.reports.service import ReportFilters
from safetyreport.reports.service import list_query as report_list_query
from tests.helpers.world import World


def nodes(plan: dict[str, Any], subplans: bool = False) -> list[dict[str, Any]]:
    """The plan's nodes, leaving out subplans (a row's own subquery, run per row) unless
    asked for."""
    found = [plan]
    for child in plan.get("Plans", []):
        if subplans or child.get("Parent Relationship") not in ("SubPlan", "InitPlan"):
            found += nodes(child, subplans)
    return found


async def plan_of(
    db: asyncpg.Connection[Any], sql: str, args: list[Any], subplans: bool = False
) -> list[dict[str, Any]]:
    async with db.transaction():
        for setting in ("enable_seqscan", "enable_sort", "enable_bitmapscan"):
            await db.execute(f"SET LOCAL {setting} = off")
        raw = await db.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    return nodes(plan, subplans)


def indexes(plan: list[dict[str, Any]]) -> set[str]:
    return {n["Index Name"] for n in plan if "Index Name" in n}


def sorted_whole(plan: list[dict[str, Any]]) -> bool:
    return any(n["Node Type"] == "Sort" for n in plan)


@pytest.fixture
async def admin(world: World, db: asyncpg.Connection[Any]) -> Principal:
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("adam", "admin", all_clinics=True)
    principal = await principal_by_username(db, "adam")
    assert principal is not None
    return principal


CURSORS = [None, "later"]


@pytest.mark.parametrize("cursor", CURSORS)
async def test_a_clinics_report_page_reads_its_index_in_order(
    db: asyncpg.Connection[Any], admin: Principal, cursor: str | None
) -> None:
    after = encode_cursor("2024-01-01T00:00:00Z", "00000000-0000-4000-8000-000000000000")
    filters = ReportFilters(clinic="C1", cursor=after if cursor else None)
    plan = await plan_of(db, *report_list_query(admin, filters))
    assert "reports_clinic_occurred_idx" in indexes(plan)
    assert not sorted_whole(plan)


async def resolved_alerts(db: asyncpg.Connection[Any], clinic_id: int, count: int) -> None:
    await db.execute(
        "INSERT INTO alerts (id, rule_id, rule_version, clinic_id, group_by, group_key, "
        "from_pattern, severity, status, first_seen_at, resolved_at) "
        "SELECT gen_random_uuid(), r.id, r.version, $1, 'patient', 'PT-' || n, false, "
        "r.severity, 'resolved', now() - n * interval '1 hour', now() "
        "FROM generate_series(1, $2) AS n, "
        "(SELECT * FROM alert_rules ORDER BY id LIMIT 1) AS r",
        clinic_id,
        count,
    )


@pytest.mark.parametrize("cursor", CURSORS)
async def test_the_alert_queue_reads_its_index_in_order(
    db: asyncpg.Connection[Any], admin: Principal, cursor: str | None
) -> None:
    # Many alerts elsewhere, as a network has: the clinic's own index is the way to its.
    await resolved_alerts(db, admin.clinic_ids["C1"], 20)
    await resolved_alerts(db, admin.clinic_ids["C2"], 3_000)
    await db.execute("ANALYZE alerts")
    after = encode_cursor(2, "2024-01-01T00:00:00Z", "00000000-0000-4000-8000-000000000000")
    filters = AlertFilters(clinic="C1", status="resolved", cursor=after if cursor else None)
    plan = await plan_of(db, *alert_list_query(admin, filters))
    wanted = "alerts_clinic_queue_idx"
    assert wanted in indexes(plan)
    assert not sorted_whole(plan)
    # The cursor is where the index scan starts, not a filter over the rows before it.
    scan = next(n for n in plan if n.get("Index Name") == wanted)
    assert ("first_seen_at" in scan.get("Index Cond", "")) == bool(cursor)


@pytest.mark.parametrize("cursor", CURSORS)
async def test_a_clinics_audit_search_reads_its_index_in_order(
    db: asyncpg.Connection[Any], admin: Principal, cursor: str | None
) -> None:
    after = encode_cursor("2024-01-01T00:00:00Z", "clinic:C1", 10)
    sql, args = search_query(
        admin, AuditFilters(clinic="C1"), cursor=after if cursor else None, limit=50
    )
    plan = await plan_of(db, sql, args)
    assert "audit_entries_chain_time_idx" in indexes(plan)
    assert not sorted_whole(plan)


async def test_an_audit_search_by_object_reads_the_objects_entries(
    db: asyncpg.Connection[Any], admin: Principal
) -> None:
    sql, args = search_query(admin, AuditFilters(object="patient:PT-1"), cursor=None, limit=50)
    plan = await plan_of(db, sql, args)
    assert "audit_entries_object_idx" in indexes(plan)
    assert not sorted_whole(plan)


async def test_a_patients_alerts_are_found_through_the_index(
    db: asyncpg.Connection[Any], admin: Principal
) -> None:
    clinic_id = admin.clinic_ids["C1"]
    plan = await plan_of(db, TIMELINE_ALERTS, [[clinic_id], ["PT-1"], [], []])
    assert "alerts_patient_idx" in indexes(plan)


_HISTORY = """
WITH made AS (
    INSERT INTO reports (id, clinic_id, kind, patient_ref, occurred_at, current_version,
                         created_by, created_at, updated_at)
    SELECT gen_random_uuid(), $1, 'blood_pressure', 'PT-' || (n % 50),
           timestamptz '2020-01-01 00:00+00' + n * interval '3 hours', 1, $2, now(), now()
    FROM generate_series(1, 20000) AS n
    RETURNING id
)
INSERT INTO report_versions (report_id, version, body, created_by, created_at)
SELECT id, 1, '{"kind": "blood_pressure"}', $2, now() FROM made
"""


async def test_the_pattern_rules_read_their_window_through_an_index(
    db: asyncpg.Connection[Any], admin: Principal
) -> None:
    """Each default pattern rule reads the reports of its window only (issue 17, goal 2),
    with years of a clinic's reports stored: the index scan on reports is bounded by the
    window's times (and the patient, for a patient's window), and no table is scanned
    whole, not even by the subquery run for each candidate (migration 0026)."""
    clinic_id = admin.clinic_ids["C1"]
    await db.execute(_HISTORY, clinic_id, admin.id)
    await db.execute("ANALYZE reports, report_versions")
    report = StoredReport(
        id=uuid.uuid4(),
        version=1,
        clinic_id=clinic_id,
        kind="blood_pressure",
        patient_ref="PT-1",
        occurred_at=datetime(2026, 6, 1, tzinfo=UTC),
        body={},
        reading_grade=None,
    )
    patterns = [r for r in await rules_in_force(db, clinic_id) if r.definition.pattern]
    assert {r.definition.group_by for r in patterns} >= {"clinic", "patient"}
    for rule in patterns:
        # With the subqueries run per candidate (a reading's alert severity, above all).
        plan = await plan_of(db, *window_query(rule, report), subplans=True)
        on_reports = [n for n in plan if n.get("Relation Name") == "reports"]
        bounds = ["occurred_at >", "occurred_at <"]
        if rule.definition.group_by == "patient":
            bounds.append("patient_ref =")
        assert on_reports, rule.id
        for scan in on_reports:
            assert all(b in scan.get("Index Cond", "") for b in bounds), (rule.id, scan)
        scanned = [n["Relation Name"] for n in plan if n["Node Type"] == "Seq Scan"]
        assert not scanned, (rule.id, scanned)


_SESSIONS = """
INSERT INTO treatment_sessions (id, clinic_id, patient_ref, drug, weight_kg, checklist,
                                dose_mg, dosed_at, created_by)
SELECT gen_random_uuid(), $1, 'PT-' || (n % 50), 'esketamine_nasal', 70, '{}', 56,
       timestamptz '2020-01-01 00:00+00' + n * interval '3 hours', $2
FROM generate_series(1, 20000) AS n
"""


@pytest.mark.parametrize("grain", ["month", "week"])
async def test_a_periods_recount_reads_that_period_only(
    db: asyncpg.Connection[Any], admin: Principal, grain: str
) -> None:
    """Keeping the rollups costs the same at year six (migration 0027): the recount of a
    clinic's period reads its sessions and its unlinked reports through indexes bounded by
    the period's times, not every session and report the clinic ever had."""
    clinic_id = admin.clinic_ids["C1"]
    await db.execute(_HISTORY, clinic_id, admin.id)
    await db.execute(_SESSIONS, clinic_id, admin.id)
    await db.execute("ANALYZE reports, report_versions, treatment_sessions")
    # The function's body as stored, its parameters as the statement's (a call's plan
    # would show only the function).
    body: str = await db.fetchval("SELECT prosrc FROM pg_proc WHERE proname = 'analytics_recount'")
    for n, (name, type_) in enumerate(
        (("clinic", "bigint"), ("grain", "text"), ("period", "date"))
    ):
        body = re.sub(rf"\b{name}\b", f"${n + 1}::{type_}", body)
    plan = await plan_of(db, body, [clinic_id, grain, date(2024, 6, 3)], True)
    for table, column in (("treatment_sessions", "dosed_at"), ("reports", "occurred_at")):
        # A row reached by its key (a linked report) is one row; any other scan of the
        # table is bounded by the period.
        scans = [
            n
            for n in plan
            if n.get("Relation Name") == table and "(id = " not in n.get("Index Cond", "")
        ]
        assert scans, table
        for scan in scans:
            cond = scan.get("Index Cond", "")
            assert f"{column} >=" in cond, (table, scan)
            assert f"{column} <" in cond, (table, scan)
    scanned = [n["Relation Name"] for n in plan if n["Node Type"] == "Seq Scan"]
    assert not scanned, scanned
