"""The fitness-to-leave criteria: data like the rules (``discharge_criteria``, migration
0019; their sources in docs/clinical-rules.md#fitness-to-leave-esketamine).

Each row names a kind of check and the numbers it checks with; the checks are here. A
criterion timed from the dose applies once a dose is recorded. The hold level of the
blood pressure at discharge is the pre-dose hold rule's, asked through ``above_hold``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec

from safetyreport.db.pool import Conn
from safetyreport.sessions.types import DischargeBody


class DischargeCriterion(msgspec.Struct, frozen=True, kw_only=True):
    """One criterion as stored (and as the flowsheet page shows it)."""

    drug: str
    rule: str
    field: str
    check_kind: str
    params: dict[str, Any]
    label: str
    message: str
    sources: str


_CRITERIA = """
SELECT drug, rule, field, check_kind, params, label, message, sources
FROM discharge_criteria WHERE ($1::text IS NULL OR drug = $1) ORDER BY drug, position
"""
_BP_BETWEEN = """
SELECT EXISTS (SELECT 1 FROM session_observations WHERE session_id = $1
               AND vitals ? 'systolic' AND observed_at BETWEEN $2 AND $3)
"""


async def criteria_for(conn: Conn, drug: str | None = None) -> list[DischargeCriterion]:
    """The criteria of ``drug`` (None: of every drug), in their order."""
    return [DischargeCriterion(**dict(row)) for row in await conn.fetch(_CRITERIA, drug)]


@dataclass(frozen=True, slots=True)
class Discharge:
    """What the criteria look at: the session and the discharge as given."""

    session_id: Any
    drug: str
    dosed_at: datetime | None
    body: DischargeBody


AboveHold = Callable[[int, int], Awaitable[bool]]


async def unmet_criteria(
    conn: Conn, discharge: Discharge, above_hold: AboveHold
) -> list[DischargeCriterion]:
    """The criteria of the session's drug that the discharge does not meet."""
    return [
        criterion
        for criterion in await criteria_for(conn, discharge.drug)
        if await _met(conn, criterion, discharge, above_hold) is False
    ]


async def _met(
    conn: Conn, criterion: DischargeCriterion, discharge: Discharge, above_hold: AboveHold
) -> bool | None:
    """Whether the criterion is met; None where it does not apply (a criterion timed from
    the dose before any dose, the hold level without a pressure)."""
    body, dosed_at, params = discharge.body, discharge.dosed_at, criterion.params
    kind = criterion.check_kind
    if kind == "minutes_since_dose":
        if dosed_at is None:
            return None
        return body.discharged_at - dosed_at >= timedelta(minutes=params["minutes"])
    if kind == "blood_pressure_between":
        if dosed_at is None:
            return None
        met: bool = await conn.fetchval(
            _BP_BETWEEN,
            discharge.session_id,
            dosed_at + timedelta(minutes=params["from_minutes"]),
            dosed_at + timedelta(minutes=params["to_minutes"]),
        )
        return met
    pressure = (body.systolic, body.diastolic)
    if kind == "blood_pressure_at_discharge":
        return None not in pressure
    if kind == "below_hold_level":
        if body.systolic is None or body.diastolic is None:
            return None
        return not await above_hold(body.systolic, body.diastolic)
    if kind == "moaa_s_at_least":
        return body.moaa_s >= int(params["value"])
    if kind == "escort":
        return body.escort
    raise ValueError(f"unknown discharge check {kind!r}")  # the table's CHECK lists them
