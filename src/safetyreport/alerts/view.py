"""The alert as every reader sees it: the queue API, the live stream and notifications.

One shape (``AlertView``) and the one SQL fragment that selects it, so that an alert
looks the same wherever it is shown.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, Literal

import asyncpg
import msgspec

from safetyreport.alerts.dea import NO_ZONE_WARNING
from safetyreport.alerts.triggers import describe

Status = Literal["open", "acknowledged", "resolved"]


class AlertView(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    rule_id: str
    rule_version: int
    rule_name: str
    # The rule's guidance: what to do now.
    guidance: str
    severity: str
    status: Status
    escalation_level: int
    clinic: str
    group_by: str
    group_key: str
    report_count: int
    # The values that triggered the alert in its most recent report (the facts its rule's
    # condition names), and the same in words: "BP 210/125 mmHg" ({} and "" for alerts
    # raised before these were kept).
    trigger_values: dict[str, Any]
    triggered_by: str
    first_seen_at: datetime
    last_seen_at: datetime
    ack_deadline: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    assigned_to: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    resolution_reason: str | None
    dea_notice_due: datetime | None
    dea_form106_due: datetime | None
    # The clinic's time zone the DEA due times were counted in (the times themselves are
    # UTC); null with a warning when the clinic had none and they were counted in UTC.
    dea_clock_zone: str | None
    dea_clock_warning: str | None
    # Recorded when a theft or loss alert is resolved: when the DEA was notified and the
    # Form 106 number, or why the incident was not reportable.
    dea_notified_on: date | None
    dea_form106_number: str | None
    dea_not_reportable_reason: str | None
    # A hold overridden at the chair: why, by whom, when (null while it holds).
    override_reason: str | None
    overridden_by: str | None
    overridden_at: datetime | None
    revision: int


# The columns of AlertView, plus the alert's clinic_id (for scoping), from ``alerts a``
# joined as ALERT_JOINS joins it.
ALERT_COLUMNS = f"""
       a.id, a.rule_id, a.rule_version, r.name AS rule_name, r.guidance, a.severity, a.status,
       a.escalation_level, c.code AS clinic, a.group_by, a.group_key, a.report_count,
       coalesce((SELECT t.trigger_values FROM (
                     SELECT ar.trigger_values, ar.added_at, ar.report_version AS version,
                            ar.report_id AS linked_id
                     FROM alert_reports ar WHERE ar.alert_id = a.id
                     UNION ALL
                     SELECT sr.trigger_values, sr.added_at, 1, sr.reading_id
                     FROM alert_session_readings sr WHERE sr.alert_id = a.id
                 ) AS t
                 ORDER BY t.added_at DESC, t.version DESC, t.linked_id
                 LIMIT 1), '{{}}') AS trigger_values,
       a.first_seen_at, a.last_seen_at, a.ack_deadline, a.acknowledged_at,
       ack.username AS acknowledged_by, asg.username AS assigned_to, a.resolved_at,
       res.username AS resolved_by, a.resolution_reason, a.dea_notice_due,
       a.dea_form106_due, a.dea_clock_zone,
       CASE WHEN a.dea_notice_due IS NOT NULL AND a.dea_clock_zone IS NULL
            THEN '{NO_ZONE_WARNING}' END AS dea_clock_warning,
       a.dea_notified_on, a.dea_form106_number, a.dea_not_reportable_reason,
       a.override_reason, ovr.username AS overridden_by, a.overridden_at,
       a.revision, a.clinic_id
"""  # noqa: S608 (constant SQL fragments, no input)
# The warning is written into the SQL as a literal.
assert "'" not in NO_ZONE_WARNING
ALERT_JOINS = """
JOIN alert_rules r ON r.id = a.rule_id
JOIN clinics c ON c.id = a.clinic_id
LEFT JOIN users ack ON ack.id = a.acknowledged_by
LEFT JOIN users asg ON asg.id = a.assigned_to
LEFT JOIN users res ON res.id = a.resolved_by
LEFT JOIN users ovr ON ovr.id = a.overridden_by
"""

_FIELDS = frozenset(AlertView.__struct_fields__)


def alert_fields(row: Mapping[str, Any] | asyncpg.Record) -> dict[str, Any]:
    """The fields of AlertView from a row selected with ALERT_COLUMNS (extra columns are
    left out), with ``triggered_by`` put into words."""
    fields = {k: v for k, v in row.items() if k in _FIELDS}
    fields["triggered_by"] = describe(row["trigger_values"])
    return fields
