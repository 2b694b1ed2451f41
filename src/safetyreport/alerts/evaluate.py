"""Running the rules in force at a report's clinic against it, in the report's transaction.

Single-report rules look at the report's own values (its facts, see ``facts_of``).
Pattern rules count the reports and treatment-session readings (``session_readings``),
or the distinct patients, of one group (clinic, or patient) in a time window that match
their condition; their condition may use ``alert_severity``, the most severe
single-report alert a report or reading raised. A patient's group follows their linked
identities across the network (``network_ref``, patients/course.py): another clinic's
matches count, but only the alert's own clinic's are linked to it (its staff may not
see the rest). A match opens an alert, or attaches the report to the unresolved alert
of the same rule and group (a rule grouped by report gives every matching report its
own). A report that concerns no patient (a stock incident) is never grouped by
patient, nor counted as one by a pattern of distinct patients.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import msgspec

from safetyreport import audit
from safetyreport.alerts import dea, events
from safetyreport.alerts.conditions import All, AnyOf, Compare, Condition, Not
from safetyreport.alerts.limits import OFF_LOOP_EVALUATIONS
from safetyreport.alerts.rules import (
    CANDIDATE_COLUMNS,
    CANDIDATES_SQL,
    SEVERITY_RANK,
    SEVERITY_RANK_SQL,
    Rule,
    ack_window,
    compile_rule,
    in_force,
)
from safetyreport.alerts.triggers import shown, trigger_values
from safetyreport.audit.chain import format_time
from safetyreport.db.pool import Conn
from safetyreport.ids import new_id
from safetyreport.patients.course import LINKED_IDS
from safetyreport.reports.types import dose_mg_per_kg
from safetyreport.settings import AlertSettings

_T = TypeVar("_T")


def facts_of(
    body: dict[str, Any], kind: str, reading_grade: int | None, alert_severity: str | None
) -> dict[str, Any]:
    """What a rule's condition may name: the body's fields, each field of an object in it
    as ``object.field`` (``cssrs.q4``), the dose per kilogram where the weight is known,
    the kind, the hypertension reading grade and ``alert_severity``."""
    facts = dict(body)
    for name, value in body.items():
        if isinstance(value, dict):
            facts.update({f"{name}.{inner}": item for inner, item in value.items()})
    facts["dose_mg_per_kg"] = dose_mg_per_kg(body.get("dose_mg"), body.get("weight_kg"))
    facts["kind"] = kind
    facts["hypertension_reading_grade"] = reading_grade
    facts["alert_severity"] = alert_severity
    return facts


# The body fields each derived fact is made from (see facts_of).
_DERIVED_FROM = {"dose_mg_per_kg": ("dose_mg", "weight_kg")}


def body_fields(named: set[str]) -> set[str]:
    """The body fields that give the facts ``named``."""
    fields: set[str] = set()
    for name in named:
        fields.update(_DERIVED_FROM.get(name, (name.split(".", 1)[0],)))
    return fields


@dataclass(frozen=True, slots=True)
class StoredReport:
    """A report version as stored, with what the rules may look at."""

    id: uuid.UUID
    version: int
    clinic_id: int
    kind: str
    # None for a report that concerns no patient (a stock incident).
    patient_ref: str | None
    occurred_at: datetime
    body: dict[str, Any]
    reading_grade: int | None
    # A reading of a treatment session rather than a report (sessions/service.py): its
    # session and which reading ("checklist", "observation", "dose", "discharge"). Its id
    # is the reading's; the rules run on it as on a report with the same values (its
    # facts are in session_readings, where patterns count it), and its alerts link to it
    # in alert_session_readings.
    session_reading: tuple[uuid.UUID, str] | None = None

    def facts(self, alert_severity: str | None = None) -> dict[str, Any]:
        return facts_of(self.body, self.kind, self.reading_grade, alert_severity)


@dataclass(frozen=True, slots=True)
class Linked:
    """A report version, or a session's reading, linked to an alert, with the values that
    made it match (its trigger values, see triggers.py)."""

    id: uuid.UUID
    version: int
    values: dict[str, Any]
    session_reading: tuple[uuid.UUID, str] | None = None


@dataclass(slots=True)
class Outcome:
    opened: list[uuid.UUID] = field(default_factory=list)
    attached: list[uuid.UUID] = field(default_factory=list)
    # Each alert as its event recorded it (the row of events.record) and whether its rule
    # is a hold: what the answer to the report shows (raised.py), without reading it again.
    recorded: dict[uuid.UUID, tuple[Mapping[str, Any], bool]] = field(default_factory=dict)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)


# The rules in force are read in every report's transaction (a change applies to the very
# next report), but compiling them is not repeated: compiled rules are kept per stored
# form (the candidate row as read, definition text included).
_MAX_COMPILED = 1000
_compiled: dict[tuple[Any, ...], Rule] = {}
_json = msgspec.json.Decoder()


async def rules_in_force(
    conn: Conn, clinic_id: int, candidates: Sequence[Mapping[str, Any]] | None = None
) -> list[Rule]:
    """The enabled rules in force at a clinic, compiled: its clinic rules and overrides,
    and the network rules it has not overridden. ``candidates``: the rows of CANDIDATES_SQL
    for the clinic, when the caller read them in a statement of its own."""
    if candidates is None:
        candidates = await conn.fetch(CANDIDATES_SQL, clinic_id)
    return in_force(_compiled_rule(row) for row in candidates)


def _compiled_rule(row: Mapping[str, Any]) -> Rule:
    key = tuple(row[name] for name in CANDIDATE_COLUMNS)
    rule = _compiled.get(key)
    if rule is None:
        fields = {name: row[name] for name in CANDIDATE_COLUMNS}
        rule = compile_rule({**fields, "definition": _json.decode(row["definition"])})
        if len(_compiled) >= _MAX_COMPILED:
            _compiled.clear()
        _compiled[key] = rule
    return rule


async def evaluate_report(
    conn: Conn,
    report: StoredReport,
    *,
    actor: audit.Actor,
    client_addr: str | None,
    settings: AlertSettings,
    candidates: Sequence[Mapping[str, Any]] | None = None,
) -> Outcome:
    """``candidates``: the clinic's candidate rules, if the caller read them already (see
    rules_in_force)."""
    outcome = Outcome()
    rules = [
        r
        for r in await rules_in_force(conn, report.clinic_id, candidates)
        if r.applies_to(report.kind) and (report.patient_ref is not None or _not_about_patients(r))
    ]
    facts = report.facts()
    single = [r for r in rules if r.definition.pattern is None]
    fired = await _off_loop_if_heavy(sum(r.nodes for r in single), _holding, single, facts)
    for rule in fired:
        values = trigger_values(_named_fields(rule.condition), facts)
        linked = [Linked(report.id, report.version, values, report.session_reading)]
        await _raise(conn, rule, report, linked, outcome, actor, client_addr, settings)
    top = max(fired, key=lambda r: SEVERITY_RANK[r.severity], default=None)
    facts = report.facts(top.severity if top else None)
    for rule in rules:
        if rule.definition.pattern is None or not rule.condition.holds(facts):
            continue
        window = await _pattern_matches(conn, rule, report)
        if window.linked:
            await _raise(
                conn,
                rule,
                report,
                window.linked,
                outcome,
                actor,
                client_addr,
                settings,
                elsewhere=window.elsewhere,
            )
    return outcome


def _not_about_patients(rule: Rule) -> bool:
    """Whether a rule may run on a report that concerns no patient (a stock incident):
    not one grouped by patient, nor a pattern that counts distinct patients."""
    pattern = rule.definition.pattern
    by_patient = pattern is not None and pattern.count == "patients"
    return rule.definition.group_by != "patient" and not by_patient


# The most severe single-report alert of a candidate ($ALIAS: r for reports, s for
# session readings).
_REPORT_SEVERITY = f"""
       (SELECT a.severity FROM alert_reports ar JOIN alerts a ON a.id = ar.alert_id
         WHERE ar.report_id = r.id AND ar.report_version = r.current_version
           AND NOT a.from_pattern
         ORDER BY {SEVERITY_RANK_SQL} DESC
         LIMIT 1)"""  # noqa: S608 (constant SQL fragments, no input)
_READING_SEVERITY = f"""
       (SELECT a.severity FROM alert_session_readings ar JOIN alerts a ON a.id = ar.alert_id
         WHERE ar.reading_id = s.reading_id AND NOT a.from_pattern
         ORDER BY {SEVERITY_RANK_SQL} DESC
         LIMIT 1)"""  # noqa: S608 (constant SQL fragments, no input)
# Of each body only the fields the condition names and its trigger values show ($6), so
# that the many candidates of a busy clinic are not sent and decoded whole. Facts a
# condition does not name cannot change what it says; an absent field and a null one read
# alike (see conditions).
_NAMED = """(SELECT jsonb_object_agg(f, {body} -> f) FROM unnest($6::text[]) AS f
         WHERE {body} ? f) AS named"""
# $1 the clinic (an array, for LINKED_IDS), $2 the patient (NULL: the clinic's window),
# $3 the time, $4 half the window, $5 the kinds (none: all), $6 the fields named.
_REPORTS = """
SELECT r.id, r.current_version AS version, NULL::uuid AS session_id, NULL::text AS reading,
       r.clinic_id, r.kind, r.occurred_at, r.patient_ref, v.hypertension_reading_grade,
       {named}, {severity} AS alert_severity
FROM reports r
JOIN report_versions v ON v.report_id = r.id AND v.version = r.current_version
{scope}
WHERE r.occurred_at > $3::timestamptz - $4::interval
  AND r.occurred_at < $3::timestamptz + $4::interval
  AND (cardinality($5::text[]) = 0 OR r.kind = ANY($5::text[]))
  {clinic}
"""
_READINGS = """
SELECT s.reading_id, 1, s.session_id, s.reading,
       s.clinic_id, s.kind, s.occurred_at, s.patient_ref, s.hypertension_reading_grade,
       {named}, {severity} AS alert_severity
FROM session_readings s
{scope}
WHERE s.occurred_at > $3::timestamptz - $4::interval
  AND s.occurred_at < $3::timestamptz + $4::interval
  AND (cardinality($5::text[]) = 0 OR s.kind = ANY($5::text[]))
  {clinic}
"""


def _candidates_sql(*, by_patient: bool, severity: bool) -> str:
    """The candidates of one window: a clinic's, or a patient's linked identities'; with
    each one's alert severity when the condition looks at it (a lookup per row)."""
    parts = []
    for template, alias, severity_sql in (
        (_REPORTS, "r", _REPORT_SEVERITY),
        (_READINGS, "s", _READING_SEVERITY),
    ):
        parts.append(
            template.format(
                named=_NAMED.format(body="v.body" if alias == "r" else "s.body"),
                severity=severity_sql if severity else "NULL::text",
                scope="JOIN ids USING (clinic_id, patient_ref)" if by_patient else "",
                clinic=""
                if by_patient
                else f"AND {alias}.clinic_id = ANY($1::bigint[])" + " AND $2::text IS NULL",
            )
        )
    union = "\nUNION ALL\n".join(parts)
    return LINKED_IDS + union if by_patient else union


# Chosen by the rule: grouped by patient or not, looking at alert_severity or not.
_CANDIDATES = {
    (by_patient, severity): _candidates_sql(by_patient=by_patient, severity=severity)
    for by_patient in (False, True)
    for severity in (False, True)
}


def _named_fields(condition: Condition) -> set[str]:
    """The fields a condition looks at."""
    if isinstance(condition, Compare):
        return {condition.field}
    if isinstance(condition, Not):
        return _named_fields(condition.condition)
    assert isinstance(condition, All | AnyOf)
    return set().union(*(_named_fields(c) for c in condition.conditions))


@dataclass(frozen=True, slots=True)
class _Match:
    """A candidate that matches a pattern's condition: when, whose, and its link (None:
    another clinic's, counted but not linked)."""

    at: datetime
    patient_ref: str | None
    linked: Linked | None


@dataclass(frozen=True, slots=True)
class _Window:
    """The matches of a pattern's fullest window: those linked to the alert, and how many
    of another clinic were counted beside them."""

    linked: list[Linked]
    elsewhere: int = 0


def window_query(rule: Rule, report: StoredReport) -> tuple[str, list[Any]]:
    """The statement and arguments reading a pattern rule's candidates around ``report``:
    its group's reports and session readings within the window on either side of it."""
    pattern = rule.definition.pattern
    assert pattern is not None, "a pattern rule"
    named = _named_fields(rule.condition)
    by_patient_group = rule.definition.group_by == "patient"
    return _CANDIDATES[by_patient_group, "alert_severity" in named], [
        [report.clinic_id],
        report.patient_ref if by_patient_group else None,
        report.occurred_at,
        timedelta(days=pattern.window_days),
        list(rule.definition.kinds),
        # Also what the trigger values show beside them (the other half of a pressure).
        sorted(body_fields(shown(named))),
    ]


async def _pattern_matches(conn: Conn, rule: Rule, report: StoredReport) -> _Window:
    """The most matching reports and session readings of the report's group in one window
    that includes it, each with the facts the condition names as its trigger values.

    Reports arrive late from tablets, so the window may lie before or after the report.
    """
    pattern = rule.definition.pattern
    assert pattern is not None
    sql, args = window_query(rule, report)
    rows = await conn.fetch(sql, *args)
    matching = await _off_loop_if_heavy(
        len(rows) * rule.nodes, _matching_rows, rule, rows, report.clinic_id
    )
    counts_patients = pattern.count == "patients"
    if counts_patients:
        # A report that concerns no patient (a stock incident) is no patient to count.
        matching = [m for m in matching if m.patient_ref is not None]
    window = _densest_window(
        matching,
        report.occurred_at,
        timedelta(days=pattern.window_days),
        pattern.min_count,
        by_patient=counts_patients,
    )
    linked = [m.linked for m in window if m.linked is not None]
    return _Window(linked, elsewhere=len(window) - len(linked))


def _holding(rules: list[Rule], facts: dict[str, Any]) -> list[Rule]:
    return [r for r in rules if r.condition.holds(facts)]


def _matching_rows(rule: Rule, rows: list[Any], clinic_id: int) -> list[_Match]:
    named = _named_fields(rule.condition)
    matching: list[_Match] = []
    for row in rows:
        # As StoredReport.facts, from the named fields of the body.
        facts = facts_of(
            row["named"] or {},
            row["kind"],
            row["hypertension_reading_grade"],
            row["alert_severity"],
        )
        if not rule.condition.holds(facts):
            continue
        linked = None
        if row["clinic_id"] == clinic_id:
            reading = None if row["session_id"] is None else (row["session_id"], row["reading"])
            linked = Linked(row["id"], row["version"], trigger_values(named, facts), reading)
        matching.append(_Match(row["occurred_at"], row["patient_ref"], linked))
    return matching


async def _off_loop_if_heavy(evaluations: int, work: Callable[..., _T], *args: Any) -> _T:
    """Run ``work`` here when it is light, else in a worker thread, so that a clinic with
    many rules or many reports in a pattern's window never stalls the event loop."""
    if evaluations <= OFF_LOOP_EVALUATIONS:
        return work(*args)
    return await asyncio.to_thread(work, *args)


def _densest_window(
    matches: list[_Match],
    at: datetime,
    window: timedelta,
    min_count: int,
    *,
    by_patient: bool,
) -> list[_Match]:
    """The matches in the fullest window [start, start + window) that contains ``at``,
    if it holds ``min_count`` or more (matches, or distinct patients ``by_patient``).

    Windows start at a match's time; of equally full ones the earliest wins. One pass
    over the matches in time order, the window's end moving forward with its start,
    keeps this O(n log n) for the sort.
    """
    ordered = sorted(matches, key=lambda m: m.at)
    patients: Counter[str | None] = Counter()
    best: tuple[int, int] | None = None  # (start index, end index) of the fullest
    best_count = 0
    end = 0
    for start, first in enumerate(ordered):
        while end < len(ordered) and ordered[end].at < first.at + window:
            patients[ordered[end].patient_ref] += 1
            end += 1
        count = len(patients) if by_patient else end - start
        if at - window < first.at <= at and count > best_count:
            best, best_count = (start, end), count
        patients[first.patient_ref] -= 1
        if patients[first.patient_ref] == 0:
            del patients[first.patient_ref]
    if best is None or best_count < min_count:
        return []
    return ordered[best[0] : best[1]]


_UPSERT = """
INSERT INTO alerts (id, rule_id, rule_version, clinic_id, group_by, group_key, from_pattern,
                    severity, status, ack_deadline, dea_notice_due, dea_form106_due,
                    dea_clock_zone)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'open', now() + $9::interval, $10, $11, $12)
ON CONFLICT (rule_id, clinic_id, group_key) WHERE status <> 'resolved'
DO UPDATE SET last_seen_at = now(), updated_at = now(), revision = alerts.revision + 1
RETURNING id, (xmax = 0) AS opened, severity, status, ack_deadline, report_count
"""
# Severities whose alert, when a new report joins it, is open again with a new deadline.
RENEWING_SEVERITIES = frozenset({"critical", "urgent"})
# A new report joined: the alert is open again (an acknowledgement no longer covers it),
# its deadline starts again from now, and an override of a hold no longer stands (the new
# reading needs its own decision), and it is paged again (``renewals`` is part of a
# page's key, see paging.py). The upsert above holds the row's lock.
_RENEW = """
UPDATE alerts SET status = 'open', acknowledged_at = NULL, acknowledged_by = NULL,
                  renewals = renewals + 1,
                  ack_deadline = now() + $2::interval, override_reason = NULL,
                  overridden_by = NULL, overridden_at = NULL,
                  revision = revision + 1, updated_at = now()
WHERE id = $1
RETURNING ack_deadline
"""
_RESET_CLOCKS = """
UPDATE alerts SET dea_notice_due = $2, dea_form106_due = $3, dea_clock_zone = $4 WHERE id = $1
"""
# Link the reports and recount them in one statement. Its snapshot does not show the
# links it inserts, so the count adds them to those already there. The upsert above
# locked the alert, so nobody else links to it meanwhile.
_LINK_AND_COUNT = """
WITH linked AS (
    INSERT INTO alert_reports (alert_id, report_id, report_version, trigger_values)
    SELECT $1, r.id, r.version, coalesce($4::jsonb -> r.id::text, '{}')
    FROM unnest($2::uuid[], $3::int[]) AS r(id, version)
    ON CONFLICT DO NOTHING
    RETURNING report_id
)
UPDATE alerts SET report_count = (
    SELECT count(DISTINCT links.report_id) FROM (
        SELECT report_id FROM alert_reports WHERE alert_id = $1
        UNION ALL
        SELECT report_id FROM linked
    ) AS links
)
WHERE id = $1 RETURNING report_count
"""


# Sessions' readings linked to an alert (see StoredReport.session_reading); a row for each
# new link. The alert's report count is left as it is: it counts reports.
_LINK_READINGS = """
INSERT INTO alert_session_readings (alert_id, session_id, reading, reading_id, trigger_values)
SELECT $1, x.session_id, x.reading, x.id, coalesce($5::jsonb -> x.id::text, '{}')
FROM unnest($2::uuid[], $3::text[], $4::uuid[]) AS x(session_id, reading, id)
ON CONFLICT DO NOTHING
RETURNING reading_id
"""


def _group_key(rule: Rule, report: StoredReport) -> str:
    """The group whose open alert a match joins: the patient, the clinic, or (group_by
    report) the report itself, so that every matching report has an alert of its own."""
    if rule.definition.group_by == "report":
        return str(report.id)
    if rule.definition.group_by == "clinic":
        return "clinic"
    assert report.patient_ref is not None, "patient rules are not run on reports without one"
    return report.patient_ref


async def _raise(
    conn: Conn,
    rule: Rule,
    report: StoredReport,
    linked: list[Linked],
    outcome: Outcome,
    actor: audit.Actor,
    client_addr: str | None,
    settings: AlertSettings,
    *,
    elsewhere: int = 0,
) -> None:
    group_key = _group_key(rule, report)
    # The DEA clocks start at the discovery, in the clinic's time zone.
    clocks = (
        await dea.clinic_clocks(conn, report.clinic_id, report.occurred_at)
        if rule.definition.dea_deadlines
        else None
    )
    row = await conn.fetchrow(
        _UPSERT,
        new_id(),
        rule.id,
        rule.version,
        report.clinic_id,
        rule.definition.group_by,
        group_key,
        rule.definition.pattern is not None,
        rule.severity,
        ack_window(rule.ack_minutes, rule.severity, settings),
        clocks.notice_due if clocks else None,
        clocks.form106_due if clocks else None,
        clocks.zone if clocks else None,
    )
    assert row is not None
    alert_id: uuid.UUID = row["id"]
    if clocks and rule.definition.group_by == "report" and not row["opened"]:
        # The report's own alert, matched again by an amendment: its clocks follow the
        # discovery time as amended.
        await conn.execute(
            _RESET_CLOCKS, alert_id, clocks.notice_due, clocks.form106_due, clocks.zone
        )
    details: dict[str, Any] = {
        "rule_id": rule.id,
        "rule_version": rule.version,
        "severity": rule.severity,
    }
    reports = [item for item in linked if item.session_reading is None]
    readings = [item for item in linked if item.session_reading is not None]
    count = await conn.fetchval(
        _LINK_AND_COUNT,
        alert_id,
        [item.id for item in reports],
        [item.version for item in reports],
        {str(item.id): item.values for item in reports},
    )
    new_readings = await _link_readings(conn, alert_id, readings) if readings else []
    if report.session_reading is None:
        details.update(report_id=str(report.id), report_version=report.version, report_count=count)
    else:
        session_id, reading = report.session_reading
        details.update(session_id=str(session_id), reading=reading, reading_id=str(report.id))
    if elsewhere:
        # Counted at the patient's other clinics of the network (network_ref), not linked.
        details.update(matched_at_other_clinics=elsewhere)
    joined = not row["opened"] and (count > row["report_count"] or bool(new_readings))
    action = "opened" if row["opened"] else "matched"
    if joined and (row["severity"] in RENEWING_SEVERITIES or rule.definition.hold):
        action = "renewed"
        deadline = await conn.fetchval(
            _RENEW, alert_id, ack_window(rule.ack_minutes, row["severity"], settings)
        )
        details.update(
            status_was=row["status"],
            deadline_was=_iso(row["ack_deadline"]),
            next_deadline=_iso(deadline),
        )
    _, alert = await events.record_alert(
        conn,
        alert_id=alert_id,
        actor=actor,
        action=action,
        details=details,
        client_addr=client_addr,
        settings=settings,
    )
    (outcome.opened if row["opened"] else outcome.attached).append(alert_id)
    outcome.recorded[alert_id] = (alert, rule.definition.hold)


async def _link_readings(conn: Conn, alert_id: uuid.UUID, readings: list[Linked]) -> list[Any]:
    sessions = [item.session_reading for item in readings if item.session_reading is not None]
    return await conn.fetch(
        _LINK_READINGS,
        alert_id,
        [session_id for session_id, _ in sessions],
        [reading for _, reading in sessions],
        [item.id for item in readings],
        {str(item.id): item.values for item in readings},
    )


async def raise_unlinked(
    conn: Conn,
    *,
    clinic_id: int,
    rule_id: str,
    group_key: str,
    details: dict[str, Any],
    actor: audit.Actor,
    settings: AlertSettings,
) -> uuid.UUID | None:
    """Raise the alert of the rule ``rule_id`` (or the clinic's override of it) at a
    clinic for a finding that is neither a report nor a session's reading (a safety
    signal, analytics/signals.py): the same upsert and event as a report's alert (history,
    live stream, audit entry, notifications; paging follows the open alert), linked to
    nothing, with ``details`` in its event. None when the rule is not in force at the
    clinic (disabled there)."""
    rule = next(
        (r for r in await rules_in_force(conn, clinic_id) if rule_id in (r.id, r.overrides)),
        None,
    )
    if rule is None:
        return None
    row = await conn.fetchrow(
        _UPSERT,
        new_id(),
        rule.id,
        rule.version,
        clinic_id,
        rule.definition.group_by,
        group_key,
        False,
        rule.severity,
        ack_window(rule.ack_minutes, rule.severity, settings),
        None,
        None,
        None,
    )
    assert row is not None
    alert_id: uuid.UUID = row["id"]
    await events.record(
        conn,
        alert_id=alert_id,
        actor=actor,
        action="opened" if row["opened"] else "matched",
        details={
            "rule_id": rule.id,
            "rule_version": rule.version,
            "severity": rule.severity,
            **details,
        },
        client_addr=None,
        settings=settings,
    )
    return alert_id
