"""The safety-signal check: a clinic's event rate above its control limit raises an alert.

Every service process runs it (``signals_task``) every ``signal_interval``; an admin
runs it now with ``POST /api/v1/analytics/signals/run``. Each run, in one transaction:

1. recounts the dirty rollups of every clinic (rollups.refresh, in a transaction of its
   own before the check's; the admin's run gets them fresh as every analytics route);
2. for the last complete month and the last complete ISO week (UTC), and each event type
   seen in them, takes the network's pooled rate p̄ and each clinic's sessions n and
   events, as the p-chart does (charts.py): a clinic whose rate is above
   UCL = p̄ + 3 √(p̄ (1 - p̄) / n) with at least ``signal_min_sessions`` sessions is a
   signal;
3. locks the chains of the clinics with a signal (before any alert row, as escalation
   does), then claims each signal's row in ``signal_alerts`` (primary key: clinic, event
   type, grain, period; ``ON CONFLICT DO NOTHING``) and, only if it inserted it, raises
   ``rate-above-control-limit`` for the clinic through the alert code path
   (evaluate.raise_unlinked: event, audit entry, notifications) with the rate, the
   limit, the counts and the chart's links in the event's details.

A second run, or a second process at the same moment (it waits on the first's
uncommitted row and then inserts nothing), raises nothing again: each signal is raised
once ever. A clinic that disabled the rule gets no alert; its row is kept (checked).
"""

from __future__ import annotations

import logging
import uuid
from datetime import date
from typing import Any
from urllib.parse import urlencode

import asyncpg
import msgspec

from safetyreport import audit
from safetyreport.alerts.evaluate import raise_unlinked
from safetyreport.analytics import rollups
from safetyreport.analytics.charts import SIGMA, last_complete, limits
from safetyreport.analytics.rates import Grain
from safetyreport.background import PeriodicOnPool
from safetyreport.db.pool import Conn, transaction
from safetyreport.settings import AlertSettings

_log = logging.getLogger(__name__)

SIGNALS_TASK = "safety-signals"
SYSTEM_SIGNALS = audit.Actor(name="system:safety-signals")
RULE_ID = "rate-above-control-limit"
GRAINS: tuple[Grain, ...] = ("month", "week")
# The dashboard page (built later) and the API answer of a clinic's chart.
CHART_PAGE = "/analytics"
CHART_API = "/api/v1/analytics/control-chart"


class Signal(msgspec.Struct, frozen=True, kw_only=True):
    clinic: str
    event_type: str
    grain: Grain
    period_start: date
    sessions: int
    events: int
    rate_per_100: float
    centre_per_100: float
    ucl_per_100: float
    # The alert raised (None: the rule is disabled at the clinic).
    alert_id: uuid.UUID | None = None


class SignalRun(msgspec.Struct, frozen=True, kw_only=True):
    """What a run looked at and raised."""

    periods: list[dict[str, Any]]
    min_sessions: int
    raised: list[Signal]
    # How many were raised in all (every clinic's, shown or not).
    raised_total: int


# Each clinic's sessions and sessions with each event type in one period; with the
# network's totals of the period ($1 grain, $2 period).
_COUNTS = """
WITH s AS (
    SELECT clinic_id, sum(sessions)::integer AS n
    FROM analytics_sessions WHERE grain = $1 AND period_start = $2 GROUP BY 1
), e AS (
    SELECT clinic_id, event_type, sum(sessions_with_event)::integer AS x
    FROM analytics_events WHERE grain = $1 AND period_start = $2 GROUP BY 1, 2
)
SELECT e.clinic_id, c.code AS clinic, e.event_type, s.n AS sessions, e.x AS events,
       (SELECT sum(n) FROM s)::integer AS network_sessions,
       sum(e.x) OVER (PARTITION BY e.event_type)::integer AS network_events
FROM e JOIN s USING (clinic_id) JOIN clinics c ON c.id = e.clinic_id
ORDER BY c.code, e.event_type
"""
_RAISED = """
SELECT clinic_id, event_type FROM signal_alerts WHERE grain = $1 AND period_start = $2
"""
_CLAIM = """
INSERT INTO signal_alerts (clinic_id, event_type, grain, period_start, sessions, events)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT DO NOTHING
RETURNING clinic_id
"""
_LINK = """
UPDATE signal_alerts SET alert_id = $5
WHERE clinic_id = $1 AND event_type = $2 AND grain = $3 AND period_start = $4
"""


def _per_100(value: float) -> float:
    return round(100 * value, 4)


async def find_signals(
    conn: Conn, grain: Grain, period: date, min_sessions: int
) -> list[tuple[int, Signal]]:
    """The signals of one period (clinic id, signal), from the rollups as they are."""
    found = []
    for r in await conn.fetch(_COUNTS, grain, period):
        p_bar = r["network_events"] / r["network_sessions"]
        n, x = r["sessions"], r["events"]
        _low, ucl = limits(p_bar, n, SIGMA)
        if x / n > ucl and n >= min_sessions:
            found.append(
                (
                    r["clinic_id"],
                    Signal(
                        clinic=r["clinic"],
                        event_type=r["event_type"],
                        grain=grain,
                        period_start=period,
                        sessions=n,
                        events=x,
                        rate_per_100=_per_100(x / n),
                        centre_per_100=_per_100(p_bar),
                        ucl_per_100=_per_100(ucl),
                    ),
                )
            )
    return found


def chart_links(signal: Signal) -> tuple[str, str]:
    """The dashboard page's link and the API's, for the clinic's chart of the event."""
    page = {"event_type": signal.event_type, "clinic": signal.clinic, "grain": signal.grain}
    api = {**page, "start": signal.period_start.isoformat()}
    return f"{CHART_PAGE}?{urlencode(page)}", f"{CHART_API}?{urlencode(api)}"


async def run_signals(
    conn: Conn,
    settings: AlertSettings,
    *,
    actor: audit.Actor = SYSTEM_SIGNALS,
    today: date | None = None,
) -> SignalRun:
    """Find and raise the signals of the last complete month and week, in the caller's
    transaction; each once ever."""
    min_sessions = settings.signal_min_sessions
    periods = [(grain, last_complete(grain, today)) for grain in GRAINS]
    candidates: list[tuple[int, Signal]] = []
    for grain, period in periods:
        raised = {
            (r["clinic_id"], r["event_type"]) for r in await conn.fetch(_RAISED, grain, period)
        }
        candidates += [
            (cid, s)
            for cid, s in await find_signals(conn, grain, period, min_sessions)
            if (cid, s.event_type) not in raised
        ]
    done: list[Signal] = []
    if candidates:
        # Chains before any alert row, as escalation and users' writes take them.
        chains: list[str | None] = [*sorted({s.clinic for _, s in candidates})]
        await audit.lock_chains(conn, chains)
        for clinic_id, signal in candidates:
            claimed = await conn.fetchval(
                _CLAIM,
                clinic_id,
                signal.event_type,
                signal.grain,
                signal.period_start,
                signal.sessions,
                signal.events,
            )
            if claimed is None:
                continue  # raised by another run meanwhile
            page, api = chart_links(signal)
            alert_id = await raise_unlinked(
                conn,
                clinic_id=clinic_id,
                rule_id=RULE_ID,
                group_key=f"{signal.event_type} {signal.grain} {signal.period_start.isoformat()}",
                details={
                    "event_type": signal.event_type,
                    "grain": signal.grain,
                    "period_start": signal.period_start.isoformat(),
                    "sessions": signal.sessions,
                    "events": signal.events,
                    "rate_per_100": signal.rate_per_100,
                    "centre_per_100": signal.centre_per_100,
                    "ucl_per_100": signal.ucl_per_100,
                    "min_sessions": min_sessions,
                    "chart": page,
                    "chart_api": api,
                },
                actor=actor,
                settings=settings,
            )
            if alert_id is not None:
                await conn.execute(
                    _LINK,
                    clinic_id,
                    signal.event_type,
                    signal.grain,
                    signal.period_start,
                    alert_id,
                )
            done.append(msgspec.structs.replace(signal, alert_id=alert_id))
    if done:
        _log.info("safety signals: %d raised", len(done), extra={"signals_raised": len(done)})
    return SignalRun(
        periods=[{"grain": g, "period_start": p.isoformat()} for g, p in periods],
        min_sessions=min_sessions,
        raised=done,
        raised_total=len(done),
    )


def shown_to(run: SignalRun, clinics: set[str] | None) -> SignalRun:
    """The run as a user of ``clinics`` (codes; None: every clinic) may see it: the
    signals of their clinics, and how many were raised in all."""
    if clinics is None:
        return run
    shown = [s for s in run.raised if s.clinic in clinics]
    return msgspec.structs.replace(run, raised=shown)


def signals_task(settings: AlertSettings) -> PeriodicOnPool:
    """Run the signal check every ``signal_interval``: the rollups recounted in a
    transaction of their own, then the check in another."""

    async def check(pool: asyncpg.Pool) -> int:
        await rollups.refresh(pool)
        async with transaction(pool) as conn:
            return len((await run_signals(conn, settings)).raised)

    return PeriodicOnPool(SIGNALS_TASK, settings.signal_interval, check)
