"""The alerts a report raised or joined, as the answer to the report shows them at the
chair: what fired, how severe, and what to do now."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import msgspec

from safetyreport.alerts.evaluate import Outcome
from safetyreport.alerts.rules import SEVERITY_RANK, Definition
from safetyreport.alerts.view import Status
from safetyreport.db.pool import Conn


class RaisedAlert(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    # The rule's id.
    rule: str
    severity: str
    # The rule's name.
    title: str
    status: Status
    # What to do now (the rule's guidance).
    guidance: str
    # A hold (the pre-dose hold): dosing waits until an override with a reason is recorded.
    hold: bool
    # The reason of the override recorded on a hold; null while it holds (and otherwise).
    override_reason: str | None


_RAISED = """
SELECT a.id, a.rule_id AS rule, a.severity, r.name AS title, a.status, r.guidance,
       r.definition, a.override_reason
FROM alerts a JOIN alert_rules r ON r.id = a.rule_id
WHERE a.id = ANY($1::uuid[])
"""


async def raised_alerts(conn: Conn, outcome: Outcome) -> list[RaisedAlert]:
    """Every alert of ``outcome`` (opened or joined), most severe first, then in the order
    the rules raised them. In the report's transaction, so it shows the alerts as they
    commit."""
    order = list(dict.fromkeys([*outcome.opened, *outcome.attached]))
    if not order:
        return []
    if all(i in outcome.recorded for i in order):
        # As each alert's event recorded it: nothing changed them since, in this transaction.
        alerts = [_recorded(*outcome.recorded[i]) for i in order]
    else:
        rows = {r["id"]: r for r in await conn.fetch(_RAISED, order)}
        alerts = [_raised(rows[i]) for i in order if i in rows]
    position = {a.id: n for n, a in enumerate(alerts)}
    return sorted(alerts, key=lambda a: (-SEVERITY_RANK[a.severity], position[a.id]))


def _recorded(alert: Mapping[str, Any], hold: bool) -> RaisedAlert:
    """From an alert as its event recorded it (events.record_alert) and its rule in force."""
    return RaisedAlert(
        id=alert["id"],
        rule=alert["rule_id"],
        severity=alert["severity"],
        title=alert["rule_name"],
        status=alert["status"],
        guidance=alert["guidance"],
        hold=hold,
        override_reason=alert["override_reason"],
    )


def _raised(row: Any) -> RaisedAlert:
    fields = dict(row)
    # Whether the rule in force is a hold, as the override (queue.override) judges it: the
    # rule's current definition, read as evaluate reads it.
    definition = msgspec.convert(fields.pop("definition"), Definition)
    return RaisedAlert(**fields, hold=definition.hold)
