"""The alerts a report raised or joined, as the answer to the report shows them at the
chair: what fired, how severe, and what to do now."""

from __future__ import annotations

import uuid

import msgspec

from safetyreport.alerts.evaluate import Outcome
from safetyreport.alerts.rules import SEVERITY_RANK
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


_RAISED = """
SELECT a.id, a.rule_id AS rule, a.severity, r.name AS title, a.status, r.guidance
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
    rows = {r["id"]: r for r in await conn.fetch(_RAISED, order)}
    alerts = [RaisedAlert(**dict(rows[i])) for i in order if i in rows]
    position = {a.id: n for n, a in enumerate(alerts)}
    return sorted(alerts, key=lambda a: (-SEVERITY_RANK[a.severity], position[a.id]))
