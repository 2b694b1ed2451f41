"""Running the enabled rules against a stored report, in the report's transaction.

Single-report rules look at the report's own values. Pattern rules count the reports
of one group (clinic, or patient within a clinic) in a time window that match their
condition; their condition may use ``alert_severity``, the most severe single-report
alert a report raised. A match opens an alert, or attaches the report to the
unresolved alert of the same rule and group.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from safetyreport import audit
from safetyreport.alerts import events
from safetyreport.alerts.rules import SEVERITY_RANK, SEVERITY_RANK_SQL, Rule, enabled_rules
from safetyreport.db.pool import Conn
from safetyreport.settings import AlertSettings

DEA_FORM_106_DAYS = 45


@dataclass(frozen=True, slots=True)
class StoredReport:
    """A report version as stored, with what the rules may look at."""

    id: uuid.UUID
    version: int
    clinic_id: int
    kind: str
    patient_ref: str
    occurred_at: datetime
    body: dict[str, Any]
    ctcae_grade: int | None

    def facts(self, alert_severity: str | None = None) -> dict[str, Any]:
        return {
            **self.body,
            "kind": self.kind,
            "ctcae_grade": self.ctcae_grade,
            "alert_severity": alert_severity,
        }


@dataclass(slots=True)
class Outcome:
    opened: list[uuid.UUID] = field(default_factory=list)
    attached: list[uuid.UUID] = field(default_factory=list)


def next_business_day(moment: datetime) -> datetime:
    """One business day later (Saturdays and Sundays skipped; public holidays are not)."""
    later = moment + timedelta(days=1)
    while later.weekday() >= 5:
        later += timedelta(days=1)
    return later


async def evaluate_report(
    conn: Conn,
    report: StoredReport,
    *,
    actor: audit.Actor,
    client_addr: str | None,
    settings: AlertSettings,
) -> Outcome:
    outcome = Outcome()
    rules = [r for r in await enabled_rules(conn) if r.applies_to(report.kind)]
    facts = report.facts()
    fired = [r for r in rules if r.definition.pattern is None and r.condition.holds(facts)]
    for rule in fired:
        await _raise(
            conn, rule, report, [(report.id, report.version)], outcome, actor, client_addr, settings
        )
    top = max(fired, key=lambda r: SEVERITY_RANK[r.severity], default=None)
    facts = report.facts(top.severity if top else None)
    for rule in rules:
        if rule.definition.pattern is None or not rule.condition.holds(facts):
            continue
        matching = await _pattern_matches(conn, rule, report)
        if len(matching) >= rule.definition.pattern.min_count:
            await _raise(conn, rule, report, matching, outcome, actor, client_addr, settings)
    return outcome


_CANDIDATES = f"""
SELECT r.id, r.current_version, r.kind, r.patient_ref, r.occurred_at, r.clinic_id,
       v.body, v.ctcae_grade,
       (SELECT a.severity FROM alert_reports ar JOIN alerts a ON a.id = ar.alert_id
         WHERE ar.report_id = r.id AND ar.report_version = r.current_version
           AND NOT a.from_pattern
         ORDER BY {SEVERITY_RANK_SQL} DESC
         LIMIT 1) AS alert_severity
FROM reports r
JOIN report_versions v ON v.report_id = r.id AND v.version = r.current_version
WHERE r.clinic_id = $1
  AND r.occurred_at > $2::timestamptz - $3::interval
  AND r.occurred_at < $2::timestamptz + $3::interval
  AND ($4::text IS NULL OR r.patient_ref = $4)
  AND (cardinality($5::text[]) = 0 OR r.kind = ANY($5::text[]))
"""  # noqa: S608 (constant SQL fragments, no input)


async def _pattern_matches(
    conn: Conn, rule: Rule, report: StoredReport
) -> list[tuple[uuid.UUID, int]]:
    """The most matching reports of the report's group in one window that includes it.

    Reports arrive late from tablets, so the window may lie before or after the report.
    """
    pattern = rule.definition.pattern
    assert pattern is not None
    rows = await conn.fetch(
        _CANDIDATES,
        report.clinic_id,
        report.occurred_at,
        timedelta(days=pattern.window_days),
        report.patient_ref if rule.definition.group_by == "patient" else None,
        list(rule.definition.kinds),
    )
    matching: list[tuple[datetime, uuid.UUID, int]] = []
    for row in rows:
        candidate = StoredReport(
            id=row["id"],
            version=row["current_version"],
            clinic_id=row["clinic_id"],
            kind=row["kind"],
            patient_ref=row["patient_ref"],
            occurred_at=row["occurred_at"],
            body=row["body"],
            ctcae_grade=row["ctcae_grade"],
        )
        if rule.condition.holds(candidate.facts(row["alert_severity"])):
            matching.append((candidate.occurred_at, candidate.id, candidate.version))
    return _densest_window(matching, report.occurred_at, timedelta(days=pattern.window_days))


def _densest_window(
    reports: list[tuple[datetime, uuid.UUID, int]], at: datetime, window: timedelta
) -> list[tuple[uuid.UUID, int]]:
    """The reports in the fullest window [start, start + window) that contains ``at``."""
    best: list[tuple[uuid.UUID, int]] = []
    for start, _, _ in reports:
        if not (at - window < start <= at):
            continue
        inside = [(rid, v) for t, rid, v in reports if start <= t < start + window]
        if len(inside) > len(best):
            best = inside
    return best


_UPSERT = """
INSERT INTO alerts (id, rule_id, rule_version, clinic_id, group_by, group_key, from_pattern,
                    severity, status, ack_deadline, dea_notice_due, dea_form106_due)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'open', now() + $9::interval, $10, $11)
ON CONFLICT (rule_id, clinic_id, group_key) WHERE status <> 'resolved'
DO UPDATE SET last_seen_at = now(), updated_at = now(), revision = alerts.revision + 1
RETURNING id, (xmax = 0) AS opened
"""
_LINK = """
INSERT INTO alert_reports (alert_id, report_id, report_version)
SELECT $1, r.id, r.version FROM unnest($2::uuid[], $3::int[]) AS r(id, version)
ON CONFLICT DO NOTHING
"""
_COUNT = """
UPDATE alerts SET report_count =
    (SELECT count(DISTINCT report_id) FROM alert_reports WHERE alert_id = $1)
WHERE id = $1 RETURNING report_count
"""


async def _raise(
    conn: Conn,
    rule: Rule,
    report: StoredReport,
    reports: list[tuple[uuid.UUID, int]],
    outcome: Outcome,
    actor: audit.Actor,
    client_addr: str | None,
    settings: AlertSettings,
) -> None:
    group_key = report.patient_ref if rule.definition.group_by == "patient" else "clinic"
    dea = rule.definition.dea_deadlines
    row = await conn.fetchrow(
        _UPSERT,
        uuid.uuid4(),
        rule.id,
        rule.version,
        report.clinic_id,
        rule.definition.group_by,
        group_key,
        rule.definition.pattern is not None,
        rule.severity,
        settings.ack_deadlines.get(rule.severity),
        next_business_day(report.occurred_at) if dea else None,
        report.occurred_at + timedelta(days=DEA_FORM_106_DAYS) if dea else None,
    )
    assert row is not None
    alert_id: uuid.UUID = row["id"]
    await conn.execute(_LINK, alert_id, [r for r, _ in reports], [v for _, v in reports])
    count = await conn.fetchval(_COUNT, alert_id)
    details = {
        "rule_id": rule.id,
        "rule_version": rule.version,
        "severity": rule.severity,
        "report_id": str(report.id),
        "report_version": report.version,
        "report_count": count,
    }
    action = "opened" if row["opened"] else "matched"
    await events.record(
        conn,
        alert_id=alert_id,
        actor=actor,
        action=action,
        details=details,
        client_addr=client_addr,
        settings=settings,
    )
    (outcome.opened if row["opened"] else outcome.attached).append(alert_id)
