"""The alert queue: listing, reading and working alerts (acknowledge, assign, resolve,
reopen, notes, the override of a hold). Every transition is audited with who and when;
two people acting on one alert at once get one winner and a Conflict for the other,
never an overwrite."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

import asyncpg
import msgspec

from safetyreport import audit
from safetyreport.alerts import dea, events
from safetyreport.alerts.rules import SEVERITY_RANK, SEVERITY_RANK_SQL, ack_window
from safetyreport.alerts.triggers import describe
from safetyreport.alerts.view import ALERT_COLUMNS, ALERT_JOINS, AlertView, Status, alert_fields
from safetyreport.auth.permissions import ALERT_WORKERS
from safetyreport.auth.users import Principal
from safetyreport.caller import Caller
from safetyreport.db.pool import Conn
from safetyreport.db.query import Where
from safetyreport.errors import Conflict, FieldError, NotFound, ValidationFailed
from safetyreport.pagination import decode_cursor, encode_cursor
from safetyreport.settings import AlertSettings
from safetyreport.times import require_utc


class ReportChange(msgspec.Struct, frozen=True, kw_only=True):
    """One field an amendment changed; null before: added, null after: removed."""

    field: str
    before: Any
    after: Any


class AlertReportView(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    version: int
    kind: str
    # None for a stock incident, which concerns no patient.
    patient_ref: str | None
    occurred_at: datetime
    added_at: datetime
    # What this report version contributed: the facts the rule's condition names, and the
    # same in words ({} and "" for links made before these were kept).
    trigger_values: dict[str, Any]
    triggered_by: str
    # For an amendment (version > 1): what it changed against the version before.
    changes: list[ReportChange]


class AlertReadingView(msgspec.Struct, frozen=True, kw_only=True):
    """A treatment session's reading linked to the alert (its checklist, an observation,
    its dose or its discharge)."""

    session_id: uuid.UUID
    reading: str
    reading_id: uuid.UUID
    patient_ref: str
    occurred_at: datetime
    added_at: datetime
    trigger_values: dict[str, Any]
    triggered_by: str


class AlertEventView(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    at: datetime
    actor: str
    action: str
    details: dict[str, Any]


class AlertDetail(AlertView, frozen=True, kw_only=True):
    reports: list[AlertReportView]
    # The session readings that raised or joined it (``report_count`` counts reports).
    session_readings: list[AlertReadingView]
    history: list[AlertEventView]


class AlertPage(msgspec.Struct, frozen=True):
    items: list[AlertView]
    next_cursor: str | None


class AlertFilters(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    status: Status | None = None
    severity: str | None = None
    clinic: str | None = None
    rule: str | None = None
    assigned_to: str | None = None
    cursor: str | None = None
    limit: int = 50


_SELECT = f"""
SELECT {ALERT_COLUMNS}, {SEVERITY_RANK_SQL} AS severity_rank
FROM alerts a {ALERT_JOINS}
"""  # noqa: S608 (constant SQL fragments, no input)
_REPORTS = """
SELECT r.id, ar.report_version AS version, r.kind, r.patient_ref, r.occurred_at, ar.added_at,
       ar.trigger_values, v.body, prev.body AS previous_body
FROM alert_reports ar
JOIN reports r ON r.id = ar.report_id
JOIN report_versions v ON v.report_id = ar.report_id AND v.version = ar.report_version
LEFT JOIN report_versions prev
       ON prev.report_id = ar.report_id AND prev.version = ar.report_version - 1
WHERE ar.alert_id = $1 ORDER BY ar.added_at, r.id, ar.report_version
"""
# When a reading was taken: as the rules saw it (session_readings), else (a link made
# before migration 0017) when it was linked.
_READINGS = """
SELECT sr.session_id, sr.reading, sr.reading_id, s.patient_ref,
       coalesce(r.occurred_at, sr.added_at) AS occurred_at, sr.added_at, sr.trigger_values
FROM alert_session_readings sr
JOIN treatment_sessions s ON s.id = sr.session_id
LEFT JOIN session_readings r ON r.reading_id = sr.reading_id
WHERE sr.alert_id = $1 ORDER BY sr.added_at, sr.reading_id
"""
_HISTORY = """
SELECT id, at, actor, action, details FROM alert_events WHERE alert_id = $1 ORDER BY id
"""
# The queue's first sort key: the severity's rank negated, so that the queue's order (most
# severe first, then oldest) is ascending on every key, as the index on it is
# (migration 0024), and the cursor one row comparison the index seeks to.
_NEG_RANK = f"(-{SEVERITY_RANK_SQL})"


def _view(row: asyncpg.Record) -> AlertView:
    return AlertView(**alert_fields(row))


async def _load(conn: Conn, principal: Principal, alert_id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow(_SELECT + " WHERE a.id = $1", alert_id)
    if row is None or not principal.can_see(row["clinic_id"]):
        raise NotFound(f"no alert {alert_id}")
    found: asyncpg.Record = row
    return found


def _flat(body: dict[str, Any]) -> dict[str, Any]:
    """A body's fields, each field of an object in it as ``object.field`` (``cssrs.q4``)."""
    flat: dict[str, Any] = {}
    for name, value in body.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{inner}": item for inner, item in value.items()})
        else:
            flat[name] = value
    return flat


def amendment_changes(before: dict[str, Any], after: dict[str, Any]) -> list[ReportChange]:
    """The fields that differ between two versions of a report body, in name order."""
    old, new = _flat(before), _flat(after)
    return [
        ReportChange(field=name, before=old.get(name), after=new.get(name))
        for name in sorted(old.keys() | new.keys())
        if old.get(name) != new.get(name)
    ]


def _report_view(row: asyncpg.Record) -> AlertReportView:
    previous = row["previous_body"]
    return AlertReportView(
        id=row["id"],
        version=row["version"],
        kind=row["kind"],
        patient_ref=row["patient_ref"],
        occurred_at=row["occurred_at"],
        added_at=row["added_at"],
        trigger_values=row["trigger_values"],
        triggered_by=describe(row["trigger_values"]),
        changes=[] if previous is None else amendment_changes(previous, row["body"]),
    )


async def _detail(conn: Conn, row: asyncpg.Record) -> AlertDetail:
    reports = [_report_view(r) for r in await conn.fetch(_REPORTS, row["id"])]
    readings = [
        AlertReadingView(**dict(r), triggered_by=describe(r["trigger_values"]))
        for r in await conn.fetch(_READINGS, row["id"])
    ]
    history = [AlertEventView(**dict(e)) for e in await conn.fetch(_HISTORY, row["id"])]
    return AlertDetail(
        **alert_fields(row), reports=reports, session_readings=readings, history=history
    )


async def read_alert(conn: Conn, caller: Caller, alert_id: uuid.UUID) -> AlertDetail:
    row = await _load(conn, caller.principal, alert_id)
    await caller.audit(
        conn, "alert.read", object_type="alert", object_id=str(alert_id), clinic=row["clinic"]
    )
    return await _detail(conn, row)


def _decode_cursor(cursor: str) -> tuple[int, datetime, uuid.UUID]:
    rank, seen, alert_id = decode_cursor(cursor, tuple[int, datetime, uuid.UUID])
    if not 0 <= rank <= max(SEVERITY_RANK.values()):
        raise ValidationFailed.one("cursor", "format", "use next_cursor from a previous page")
    return rank, require_utc("cursor", seen), alert_id


def list_query(principal: Principal, filters: AlertFilters) -> tuple[str, list[Any]]:
    """The SQL of a page of the list and its arguments (one more row than the page)."""
    where = Where()
    where.in_clinics("a.clinic_id", principal.visible_clinics(filters.clinic))
    where.equals("a.status", filters.status)
    where.equals("a.severity", filters.severity)
    where.equals("a.rule_id", filters.rule)
    where.equals("asg.username", filters.assigned_to)
    if filters.cursor is not None:
        c_rank, c_seen, c_id = _decode_cursor(filters.cursor)
        where.add(
            f"({_NEG_RANK}, a.first_seen_at, a.id) > ({where.param(-c_rank)}::int,"
            f" {where.param(c_seen)}, {where.param(c_id)})"
        )
    sql = (
        _SELECT
        + where.sql()
        + f" ORDER BY {_NEG_RANK}, a.first_seen_at, a.id LIMIT {where.param(filters.limit + 1)}"
    )
    return sql, where.args


async def list_alerts(conn: Conn, caller: Caller, filters: AlertFilters) -> AlertPage:
    """Alerts of the caller's clinics: most severe first, then oldest first."""
    sql, args = list_query(caller.principal, filters)
    rows = await conn.fetch(sql, *args)
    items = [_view(r) for r in rows[: filters.limit]]
    next_cursor = None
    if len(rows) > filters.limit:
        last = items[-1]
        rank = rows[filters.limit - 1]["severity_rank"]
        next_cursor = encode_cursor(rank, last.first_seen_at, last.id)
    await _audit_page(conn, caller, filters, items)
    return AlertPage(items=items, next_cursor=next_cursor)


async def _audit_page(
    conn: Conn, caller: Caller, filters: AlertFilters, items: list[AlertView]
) -> None:
    """Record the page in the chain of each clinic on it (empty: where the filter points)."""

    def listed(clinic: str | None) -> dict[str, Any]:
        return {
            "filters": msgspec.to_builtins(filters),
            "count": sum(1 for i in items if i.clinic == clinic),
        }

    clinics: set[str | None] = {i.clinic for i in items} or {filters.clinic}
    await caller.audit_each_clinic(
        conn, clinics, "alert.listed", object_type="alert", details_for=listed
    )


# --- transitions --------------------------------------------------------------

_ALLOWED_FROM: dict[str, frozenset[str]] = {
    "acknowledged": frozenset({"open"}),
    "assigned": frozenset({"open", "acknowledged"}),
    "resolved": frozenset({"open", "acknowledged"}),
    "reopened": frozenset({"resolved"}),
    "noted": frozenset({"open", "acknowledged", "resolved"}),
    "overridden": frozenset({"open", "acknowledged"}),
}
_ACKNOWLEDGE = """
UPDATE alerts SET status = 'acknowledged', acknowledged_at = now(), acknowledged_by = $2,
                  ack_deadline = NULL, revision = revision + 1, updated_at = now()
WHERE id = $1
"""
_ASSIGN = """
UPDATE alerts SET assigned_to = $2, revision = revision + 1, updated_at = now() WHERE id = $1
"""
_RESOLVE = """
UPDATE alerts SET status = 'resolved', resolved_at = now(), resolved_by = $2,
                  resolution_reason = $3, ack_deadline = NULL, dea_notified_on = $4,
                  dea_form106_number = $5, dea_not_reportable_reason = $6,
                  revision = revision + 1, updated_at = now()
WHERE id = $1
"""
# A note changes no field but is a change all the same (streams, stale revisions).
_TOUCH = "UPDATE alerts SET revision = revision + 1, updated_at = now() WHERE id = $1"
# Reopening starts the acknowledgement clock again.
_REOPEN = """
UPDATE alerts SET status = 'open', resolved_at = NULL, resolved_by = NULL,
                  resolution_reason = NULL, acknowledged_at = NULL, acknowledged_by = NULL,
                  ack_deadline = now() + $2::interval, revision = revision + 1, updated_at = now()
WHERE id = $1
"""


# Overriding a hold records who decided to dose despite it, and why; the alert stays in
# the queue for the safety officer (the status is not changed).
_OVERRIDE = """
UPDATE alerts SET override_reason = $3, overridden_by = $2, overridden_at = now(),
                  revision = revision + 1, updated_at = now()
WHERE id = $1
"""
_RULE = """
SELECT ack_minutes, definition @> '{"hold": true}'::jsonb AS hold FROM alert_rules WHERE id = $1
"""


async def _apply(
    conn: Conn,
    row: asyncpg.Record,
    action: str,
    principal: Principal,
    value: Any,
    settings: AlertSettings,
) -> None:
    alert_id = row["id"]
    if action == "acknowledged":
        await conn.execute(_ACKNOWLEDGE, alert_id, principal.id)
    elif action == "assigned":
        await conn.execute(_ASSIGN, alert_id, value)
    elif action == "resolved":
        await conn.execute(_RESOLVE, alert_id, principal.id, *value)
    elif action == "noted":
        await conn.execute(_TOUCH, alert_id)
    elif action == "overridden":
        rule = await conn.fetchrow(_RULE, row["rule_id"])
        if rule is None or not rule["hold"]:
            raise Conflict(f"{row['rule_id']} is not a hold: there is nothing to override")
        if row["overridden_at"] is not None:
            raise Conflict(f"the hold was already overridden by {row['overridden_by']}")
        await conn.execute(_OVERRIDE, alert_id, principal.id, value)
    elif action == "reopened":
        rule = await conn.fetchrow(_RULE, row["rule_id"])
        minutes = rule["ack_minutes"] if rule is not None else None
        deadline = ack_window(minutes, row["severity"], settings)
        try:
            await conn.execute(_REOPEN, alert_id, deadline)
        except asyncpg.UniqueViolationError:
            raise Conflict(
                "another alert of this rule and group is open; work that one instead"
            ) from None


async def _lock(conn: Conn, principal: Principal, alert_id: uuid.UUID) -> asyncpg.Record:
    """The alert's row, locked for this transaction; Conflict if someone else holds it.

    The clinic's audit chain is locked first, in the order report submissions use. If
    the alert changed while this request waited for the locks, someone acted at the same
    time: Conflict, rather than silently applying this change on top of theirs.
    """
    seen = await _load(conn, principal, alert_id)
    await audit.lock_chains(conn, [seen["clinic"]])
    try:
        await conn.execute("SELECT 1 FROM alerts WHERE id = $1 FOR UPDATE NOWAIT", alert_id)
    except asyncpg.LockNotAvailableError:
        raise Conflict("someone else is changing this alert right now; reload it") from None
    row = await _load(conn, principal, alert_id)
    if row["revision"] != seen["revision"]:
        raise Conflict("the alert changed while you were acting on it; reload it")
    return row


async def _transition(
    conn: Conn,
    caller: Caller,
    alert_id: uuid.UUID,
    action: str,
    *,
    expected_revision: int | None,
    value: Any = None,
    details: dict[str, Any],
    settings: AlertSettings,
) -> AlertDetail:
    """Apply ``action`` to the alert in the caller's transaction; audited, streamed."""
    principal = caller.principal
    row = await _lock(conn, principal, alert_id)
    if expected_revision is not None and expected_revision != row["revision"]:
        raise Conflict(
            f"the alert changed (revision {row['revision']}, you had {expected_revision});"
            " reload it"
        )
    if row["status"] not in _ALLOWED_FROM[action]:
        raise Conflict(f"the alert is {row['status']}: it cannot be {action}")
    await _apply(conn, row, action, principal, value, settings)
    await events.record(
        conn,
        alert_id=alert_id,
        actor=principal.actor(),
        action=action,
        details=details,
        client_addr=caller.address,
        settings=settings,
    )
    return await _detail(conn, await _load(conn, principal, alert_id))


async def acknowledge(
    conn: Conn,
    caller: Caller,
    alert_id: uuid.UUID,
    *,
    revision: int | None,
    settings: AlertSettings,
) -> AlertDetail:
    """Acknowledge an open alert: it stops escalating."""
    return await _transition(
        conn,
        caller,
        alert_id,
        "acknowledged",
        expected_revision=revision,
        details={},
        settings=settings,
    )


async def assign(
    conn: Conn,
    caller: Caller,
    alert_id: uuid.UUID,
    username: str,
    *,
    revision: int | None,
    settings: AlertSettings,
) -> AlertDetail:
    """Assign an unresolved alert to a safety officer or admin of its clinic."""
    # The assignee is checked only for an alert the caller may see (else: 404 below).
    clinic_id = await conn.fetchval("SELECT clinic_id FROM alerts WHERE id = $1", alert_id)
    user_id = None
    if clinic_id is not None and caller.principal.can_see(clinic_id):
        user_id = await assignee_id(conn, username, clinic_id)
    return await _transition(
        conn,
        caller,
        alert_id,
        "assigned",
        expected_revision=revision,
        value=user_id,
        details={"user": username},
        settings=settings,
    )


class DeaResolution(msgspec.Struct, frozen=True, kw_only=True):
    """What resolving a theft or loss alert records: when the DEA was notified and the
    Form 106 number, or why the incident was not reportable."""

    notified_on: date | None = None
    form106_number: str | None = None
    not_reportable_reason: str | None = None


_DEA_FIELDS = ("dea_notified_on", "dea_form106_number", "dea_not_reportable_reason")


def _check_dea_resolution(found: DeaResolution, row: asyncpg.Record) -> list[FieldError]:
    """Why ``found`` cannot resolve the alert ``row``; [] if it can.

    An alert with DEA clocks (a theft or loss) needs the notice date and the Form 106
    number, or a reason it was not reportable; any other alert takes none of them.
    """
    given = dict(zip(_DEA_FIELDS, msgspec.structs.astuple(found), strict=True))
    if row["dea_notice_due"] is None:
        return [
            FieldError(name, "not_dea", "only a theft or loss alert (with DEA clocks) takes this")
            for name, value in given.items()
            if value is not None
        ]
    reported = (found.notified_on, found.form106_number)
    if found.not_reportable_reason is not None:
        if reported == (None, None):
            return []
        return [
            FieldError(
                "dea_not_reportable_reason",
                "either",
                "give the DEA notice date and Form 106 number, or a reason the incident"
                " was not reportable, not both",
            )
        ]
    needed = (
        "a theft or loss alert is resolved with the date the DEA was notified and the"
        " Form 106 number, or with dea_not_reportable_reason saying why it was not reportable"
    )
    errors = [
        FieldError(name, "required", needed)
        for name in ("dea_notified_on", "dea_form106_number")
        if given[name] is None
    ]
    if found.notified_on is not None and found.notified_on > dea.today_in(row["dea_clock_zone"]):
        errors.append(
            FieldError("dea_notified_on", "future", "the DEA notice date is not in the future")
        )
    return errors


async def resolve(
    conn: Conn,
    caller: Caller,
    alert_id: uuid.UUID,
    reason: str,
    *,
    revision: int | None,
    settings: AlertSettings,
    dea_resolution: DeaResolution | None = None,
) -> AlertDetail:
    """Resolve an alert, saying why; a theft or loss alert also records the DEA notice
    date and Form 106 number, or why it was not reportable."""
    found = dea_resolution or DeaResolution()
    # Whether an alert has DEA clocks never changes, so it is checked before the lock.
    errors = _check_dea_resolution(found, await _load(conn, caller.principal, alert_id))
    if errors:
        raise ValidationFailed(errors)
    details: dict[str, Any] = {"reason": reason}
    for name, value in zip(_DEA_FIELDS, msgspec.structs.astuple(found), strict=True):
        if value is not None:
            details[name] = value.isoformat() if isinstance(value, date) else value
    return await _transition(
        conn,
        caller,
        alert_id,
        "resolved",
        expected_revision=revision,
        value=(reason, *msgspec.structs.astuple(found)),
        details=details,
        settings=settings,
    )


async def reopen(
    conn: Conn,
    caller: Caller,
    alert_id: uuid.UUID,
    reason: str,
    *,
    revision: int | None,
    settings: AlertSettings,
) -> AlertDetail:
    """Reopen a resolved alert, saying why; its acknowledgement deadline starts again."""
    return await _transition(
        conn,
        caller,
        alert_id,
        "reopened",
        expected_revision=revision,
        details={"reason": reason},
        settings=settings,
    )


async def override(
    conn: Conn,
    caller: Caller,
    alert_id: uuid.UUID,
    reason: str,
    *,
    revision: int | None,
    settings: AlertSettings,
) -> AlertDetail:
    """Record that the patient is dosed despite a hold (the pre-dose hold), and why.

    Only an alert of a hold rule (``definition.hold``) can be overridden, once; a new
    report that joins the alert clears the override (the new reading needs its own).
    """
    return await _transition(
        conn,
        caller,
        alert_id,
        "overridden",
        expected_revision=revision,
        value=reason,
        details={"reason": reason},
        settings=settings,
    )


async def add_note(
    conn: Conn, caller: Caller, alert_id: uuid.UUID, text: str, *, settings: AlertSettings
) -> AlertDetail:
    """Add a note to the alert's history."""
    return await _transition(
        conn,
        caller,
        alert_id,
        "noted",
        expected_revision=None,
        details={"text": text},
        settings=settings,
    )


# The people who work a clinic's alerts ($1): its enabled users of the ALERT_WORKERS roles
# ($2), safety officers and admins. Assignees and the on-call roster (on_call.py) are
# drawn from them. $3: only these usernames (NULL: all of them).
CLINIC_ALERT_WORKERS = """
SELECT u.id, u.username, u.role FROM users u
WHERE u.disabled_at IS NULL
  AND u.role = ANY($2::text[])
  AND (u.all_clinics OR EXISTS (
        SELECT 1 FROM user_clinics uc WHERE uc.user_id = u.id AND uc.clinic_id = $1))
  AND ($3::text[] IS NULL OR u.username = ANY($3::text[]))
ORDER BY u.username
"""


async def clinic_alert_workers(
    conn: Conn, clinic_id: int, usernames: list[str] | None = None
) -> list[asyncpg.Record]:
    """The clinic's enabled safety officers and admins (of ``usernames`` if given)."""
    return await conn.fetch(CLINIC_ALERT_WORKERS, clinic_id, list(ALERT_WORKERS), usernames)


class Assignee(msgspec.Struct, frozen=True, kw_only=True):
    username: str
    role: str


class AssigneeList(msgspec.Struct, frozen=True):
    items: list[Assignee]


async def assignees(conn: Conn, caller: Caller, alert_id: uuid.UUID) -> AssigneeList:
    """Who the alert may be assigned to: the enabled safety officers and admins who can
    see its clinic, by username. Another clinic's alert is 404."""
    row = await _load(conn, caller.principal, alert_id)
    people = await clinic_alert_workers(conn, row["clinic_id"])
    return AssigneeList([Assignee(username=p["username"], role=p["role"]) for p in people])


async def assignee_id(conn: Conn, username: str, clinic_id: int) -> int:
    """The id of a safety officer or admin who may see the clinic, or ValidationFailed."""
    found = await clinic_alert_workers(conn, clinic_id, [username])
    if not found:
        raise ValidationFailed.one(
            "user", "assignable", "no safety officer or admin of this clinic has that username"
        )
    user_id: int = found[0]["id"]
    return user_id
