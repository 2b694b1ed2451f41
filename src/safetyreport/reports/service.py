"""Creating, amending, reading and listing reports. Every call is audited in its transaction."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from safetyreport.alerts.evaluate import StoredReport, evaluate_report
from safetyreport.alerts.raised import RaisedAlert, raised_alerts
from safetyreport.alerts.rules import candidates_sql
from safetyreport.amendments import changed_fields, reason_and_changes
from safetyreport.audit.chain import LOCK_HEAD_CTE, chain_for, holding, locked_head
from safetyreport.auth.users import Principal
from safetyreport.caller import Caller
from safetyreport.db.pool import Conn
from safetyreport.db.query import Where
from safetyreport.errors import NotFound, ValidationFailed
from safetyreport.ids import new_id
from safetyreport.metrics import facts
from safetyreport.pagination import decode_cursor, encode_cursor
from safetyreport.reports.grading import hypertension_reading_grade
from safetyreport.reports.types import (
    FIXED_FIELDS,
    STOCK_CONCERNS,
    BloodPressure,
    ReportBody,
    StockIncident,
    dose_mg_per_kg,
)
from safetyreport.reports.validation import validate_report
from safetyreport.sessions.service import check_report_session
from safetyreport.settings import AlertSettings, ReportSettings
from safetyreport.times import require_utc

_canonical = msgspec.json.Encoder(order="sorted")
_encoder = msgspec.json.Encoder()


class ReportVersionView(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    created_at: datetime
    created_by: str
    reason: str | None
    hypertension_reading_grade: int | None
    body: dict[str, Any]


class ReportView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    id: uuid.UUID
    clinic: str
    kind: str
    # None for a stock incident, which concerns no patient.
    patient_ref: str | None
    # When it happened; for a stock incident, when it was discovered.
    occurred_at: datetime
    version: int
    # The CTCAE v5.0 hypertension grade of the reading this report carries (0: below
    # grade 1; none without a pressure): the grade of one reading, not of the event.
    hypertension_reading_grade: int | None
    # Derived from dose_mg and weight_kg (two decimals), as the rules compare it.
    dose_mg_per_kg: float | None
    serious: bool
    created_at: datetime
    created_by: str
    updated_at: datetime
    body: dict[str, Any]
    # Every version, oldest first; only on the single-report view.
    history: list[ReportVersionView] | None = None
    # Only in the answer to a submission or an amendment: every alert the report raised
    # or joined, most severe first, with what to do now.
    alerts: list[RaisedAlert] | None = None


class ReportPage(msgspec.Struct, frozen=True):
    items: list[ReportView]
    next_cursor: str | None


class ReportSelection(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Which reports: the filters the list and the export share."""

    kind: str | None = None
    clinic: str | None = None
    patient_ref: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class ReportFilters(ReportSelection, frozen=True, kw_only=True, omit_defaults=True):
    """A page of the list: the selection, and where the page starts."""

    cursor: str | None = None
    limit: int = 50


def selection_where(principal: Principal, selection: ReportSelection) -> Where:
    """The selection's conditions; a clinic the user is not in is NotFound."""
    where = Where()
    where.in_clinics("r.clinic_id", principal.visible_clinics(selection.clinic))
    where.equals("r.kind", selection.kind)
    where.equals("r.patient_ref", selection.patient_ref)
    if selection.since is not None:
        where.add(f"r.occurred_at >= {where.param(selection.since)}")
    if selection.until is not None:
        where.add(f"r.occurred_at < {where.param(selection.until)}")
    return where


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys: equal content, equal bytes (for hashes and fingerprints)."""
    return _canonical.encode(value)


def _grade(body: ReportBody) -> int | None:
    """The reading grade of the pressure a report carries, whatever its kind."""
    if isinstance(body, StockIncident) or body.systolic is None or body.diastolic is None:
        return None
    symptoms = body.symptoms if isinstance(body, BloodPressure) else []
    return hypertension_reading_grade(body.systolic, body.diastolic, symptoms)


def _clinic_id(principal: Principal, code: str) -> int:
    clinic_id = principal.clinic_ids.get(code)
    if clinic_id is None:
        raise ValidationFailed.one("clinic", "member", f"you do not report for a clinic {code}")
    return clinic_id


async def _check_session(conn: Conn, body: ReportBody, clinic_id: int) -> None:
    """A report linked to a treatment session: one of its clinic and its patient."""
    if isinstance(body, StockIncident) or body.session_id is None:
        return
    await check_report_session(conn, body.session_id, clinic_id, body.patient_ref)


SELECT_VIEW = """
SELECT r.id, c.code AS clinic, r.kind, r.patient_ref, r.occurred_at, r.current_version,
       v.hypertension_reading_grade, v.body, r.created_at, u.username AS created_by,
       r.updated_at, r.clinic_id
FROM reports r
JOIN report_versions v ON v.report_id = r.id AND v.version = r.current_version
JOIN clinics c ON c.id = r.clinic_id
JOIN users u ON u.id = r.created_by
"""
_SELECT_HISTORY = """
SELECT v.version, v.created_at, u.username AS created_by, v.reason,
       v.hypertension_reading_grade, v.body
FROM report_versions v JOIN users u ON u.id = v.created_by
WHERE v.report_id = $1 ORDER BY v.version
"""


def view_of_row(row: asyncpg.Record, history: list[asyncpg.Record] | None = None) -> ReportView:
    body: dict[str, Any] = row["body"]
    return ReportView(
        id=row["id"],
        clinic=row["clinic"],
        kind=row["kind"],
        patient_ref=row["patient_ref"],
        occurred_at=row["occurred_at"],
        version=row["current_version"],
        hypertension_reading_grade=row["hypertension_reading_grade"],
        dose_mg_per_kg=dose_mg_per_kg(body.get("dose_mg"), body.get("weight_kg")),
        serious=bool(body.get("seriousness")),
        created_at=row["created_at"],
        created_by=row["created_by"],
        updated_at=row["updated_at"],
        body=body,
        history=None if history is None else [ReportVersionView(**dict(h)) for h in history],
    )


async def _load(
    conn: Conn, principal: Principal, report_id: uuid.UUID, *, lock: bool = False
) -> asyncpg.Record:
    """The report's current row if the principal may see it; 404 otherwise.

    With ``lock``, the report row is locked first, on its own: locking through the
    join would re-check the join against the old version after a concurrent amendment
    commits, and lose the row.
    """
    if lock:
        await conn.execute("SELECT 1 FROM reports WHERE id = $1 FOR UPDATE", report_id)
    row = await conn.fetchrow(SELECT_VIEW + " WHERE r.id = $1", report_id)
    if row is None or not principal.can_see(row["clinic_id"]):
        raise NotFound(f"no report {report_id}")
    found: asyncpg.Record = row
    return found


async def _detail(conn: Conn, report_id: uuid.UUID) -> ReportView:
    row = await conn.fetchrow(SELECT_VIEW + " WHERE r.id = $1", report_id)
    assert row is not None
    return view_of_row(row, await conn.fetch(_SELECT_HISTORY, report_id))


async def _run_rules(
    conn: Conn,
    caller: Caller,
    report_id: uuid.UUID,
    version: int,
    clinic_id: int,
    body: ReportBody,
    alert_settings: AlertSettings,
    candidates: Sequence[Mapping[str, Any]] | None = None,
) -> list[RaisedAlert]:
    stored = msgspec.to_builtins(body)
    outcome = await evaluate_report(
        conn,
        StoredReport(
            id=report_id,
            version=version,
            clinic_id=clinic_id,
            kind=stored["kind"],
            patient_ref=body.patient_ref,
            occurred_at=body.occurred_at,
            body=stored,
            reading_grade=_grade(body),
        ),
        actor=caller.principal.actor(),
        client_addr=caller.address,
        settings=alert_settings,
        candidates=candidates,
    )
    return await raised_alerts(conn, outcome)


# The report and its first version (the foreign key of the version is checked at the
# statement's end; both rows get the transaction's now() as their times), the clinic's
# audit chain head locked until commit ($9 the chain), and the rules that may be in force
# at the clinic: one statement, one row per candidate rule (at least one row).
#
# The chain's lock serializes the clinic's submissions from here on: each later statement
# of this transaction (the pattern rules' windows above all) sees every report of the
# clinic committed before, so concurrent reports that together cross a pattern's
# threshold raise it. It is taken before any alert row, as lock_chains requires.
_INSERT_FIRST_VERSION = f"""
WITH report AS (
    INSERT INTO reports (id, clinic_id, kind, patient_ref, occurred_at, current_version,
                         created_by)
    VALUES ($1, $2, $3, $4, $5, 1, $6)
    RETURNING created_at, updated_at
), version AS (
    INSERT INTO report_versions (report_id, version, body, hypertension_reading_grade,
                                 created_by)
    VALUES ($1, 1, $7, $8, $6)
    RETURNING created_at
), {LOCK_HEAD_CTE.replace("$CHAIN", "$9")},
rules AS ({candidates_sql("$2")})
SELECT report.created_at AS report_created_at, report.updated_at AS report_updated_at,
       version.created_at AS version_created_at,
       head.last_seq, head.last_hash, head.now, rules.*
FROM report CROSS JOIN version LEFT JOIN head ON true LEFT JOIN rules ON true
ORDER BY rules.id
"""  # noqa: S608 (constant SQL fragments, no input)


def _as_read_back(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with its keys in the order jsonb gives them back: shorter keys first, then
    bytewise. A report body holds only scalars and lists of them, which jsonb returns as
    they went in, so this is exactly what reading the stored version would decode to."""
    return {key: body[key] for key in sorted(body, key=lambda k: (len(k.encode()), k.encode()))}


async def insert_report(
    conn: Conn, caller: Caller, body: ReportBody, alert_settings: AlertSettings
) -> ReportView:
    """Store version 1 of a validated report, audit it and run the alert rules.

    The caller owns the transaction: the report, its audit entries and its alerts
    commit together or not at all. The returned view is what reading the report back
    would give; it is built from what was written rather than read again.
    """
    principal = caller.principal
    clinic_id = _clinic_id(principal, body.clinic)
    await _check_session(conn, body, clinic_id)
    report_id = new_id()
    stored = msgspec.to_builtins(body)
    grade = _grade(body)
    rows = await conn.fetch(
        _INSERT_FIRST_VERSION,
        report_id,
        clinic_id,
        stored["kind"],
        body.patient_ref,
        body.occurred_at,
        principal.id,
        stored,
        grade,
        chain_for(body.clinic),
    )
    row = rows[0]
    candidates = [r for r in rows if r["id"] is not None]
    # Its audit entries (the report's, its alerts') are written in one statement at the
    # end, under the chain's lock taken above.
    held = await locked_head(conn, body.clinic, row)
    async with holding(conn, held):
        await caller.audit(
            conn,
            "report.created",
            object_type="report",
            object_id=str(report_id),
            clinic=body.clinic,
            details={
                "kind": stored["kind"],
                "version": 1,
                "body_sha256": hashlib.sha256(canonical_json(body)).hexdigest(),
            },
        )
        alerts = await _run_rules(
            conn, caller, report_id, 1, clinic_id, body, alert_settings, candidates
        )
    facts.record(conn, facts.ReportStored(stored["kind"]))
    read_back = _as_read_back(stored)
    return ReportView(
        id=report_id,
        clinic=body.clinic,
        kind=stored["kind"],
        patient_ref=body.patient_ref,
        occurred_at=body.occurred_at,
        version=1,
        hypertension_reading_grade=grade,
        dose_mg_per_kg=dose_mg_per_kg(body.dose_mg, body.weight_kg)
        if not isinstance(body, StockIncident)
        else None,
        serious=bool(read_back.get("seriousness")),
        created_at=row["report_created_at"],
        created_by=principal.username,
        updated_at=row["report_updated_at"],
        body=read_back,
        history=[
            ReportVersionView(
                version=1,
                created_at=row["version_created_at"],
                created_by=principal.username,
                reason=None,
                hypertension_reading_grade=grade,
                body=read_back,
            )
        ],
        alerts=alerts,
    )


def encode(view: msgspec.Struct) -> bytes:
    return _encoder.encode(view)


async def amend_report(
    conn: Conn,
    caller: Caller,
    report_id: uuid.UUID,
    raw: Any,
    settings: ReportSettings,
    alert_settings: AlertSettings,
) -> ReportView:
    """Add a version with the changed fields, validated like a new report; rules run on it."""
    reason, changes = reason_and_changes(raw, noun="report", fixed=FIXED_FIELDS)
    row = await _load(conn, caller.principal, report_id, lock=True)
    current: dict[str, Any] = row["body"]
    merged = {k: v for k, v in {**current, **changes}.items() if v is not None}
    # A misuse concern stored with a stock concern type of old keeps the rules it was
    # created with: it may be amended, and is never turned into a stock incident.
    legacy = (
        current.get("kind") == "misuse_concern" and current.get("concern_type") in STOCK_CONCERNS
    )
    body = validate_report(merged, skew=settings.clock_skew, stock_concerns_allowed=legacy)
    stored = msgspec.to_builtins(body)
    if stored == current:
        raise ValidationFailed.one("$", "no_change", "the amendment changes nothing")
    await _check_session(conn, body, row["clinic_id"])
    version = row["current_version"] + 1
    await conn.execute(
        "INSERT INTO report_versions"
        " (report_id, version, body, hypertension_reading_grade, reason, created_by)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        report_id,
        version,
        stored,
        _grade(body),
        reason,
        caller.principal.id,
    )
    await conn.execute(
        "UPDATE reports SET current_version = $2, patient_ref = $3, occurred_at = $4,"
        " updated_at = now() WHERE id = $1",
        report_id,
        version,
        body.patient_ref,
        body.occurred_at,
    )
    changed = changed_fields(current, stored)
    await caller.audit(
        conn,
        "report.amended",
        object_type="report",
        object_id=str(report_id),
        clinic=row["clinic"],
        details={"version": version, "reason": reason, "changes": changed},
    )
    alerts = await _run_rules(
        conn, caller, report_id, version, row["clinic_id"], body, alert_settings
    )
    return msgspec.structs.replace(await _detail(conn, report_id), alerts=alerts)


async def read_report(conn: Conn, caller: Caller, report_id: uuid.UUID) -> ReportView:
    row = await _load(conn, caller.principal, report_id)
    await caller.audit(
        conn, "report.read", object_type="report", object_id=str(report_id), clinic=row["clinic"]
    )
    return view_of_row(row, await conn.fetch(_SELECT_HISTORY, report_id))


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    after, report_id = decode_cursor(cursor, tuple[datetime, uuid.UUID])
    return require_utc("cursor", after), report_id


def list_query(principal: Principal, filters: ReportFilters) -> tuple[str, list[Any]]:
    """The SQL of a page of the list and its arguments: one more row than the page, to
    know whether a next page exists."""
    where = selection_where(principal, filters)
    if filters.cursor is not None:
        after_time, after_id = _decode_cursor(filters.cursor)
        where.add(f"(r.occurred_at, r.id) < ({where.param(after_time)}, {where.param(after_id)})")
    sql = (
        SELECT_VIEW
        + where.sql()
        + f" ORDER BY r.occurred_at DESC, r.id DESC LIMIT {where.param(filters.limit + 1)}"
    )
    return sql, where.args


async def list_reports(conn: Conn, caller: Caller, filters: ReportFilters) -> ReportPage:
    """The newest reports first, among the clinics the caller may see."""
    sql, args = list_query(caller.principal, filters)
    rows = await conn.fetch(sql, *args)
    items = [view_of_row(r) for r in rows[: filters.limit]]
    next_cursor = None
    if len(rows) > filters.limit:
        last = items[-1]
        next_cursor = encode_cursor(last.occurred_at, last.id)
    await caller.audit_page(
        conn,
        "report.listed",
        object_type="report",
        filters=filters,
        clinic_filter=filters.clinic,
        items=items,
        ids_key="report_ids",
    )
    return ReportPage(items=items, next_cursor=next_cursor)
