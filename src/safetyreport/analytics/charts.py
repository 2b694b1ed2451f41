"""Control charts and funnel plots of event rates (issue 16, docs/safety-signals.md).

Both read the rollups (migration 0020; the caller refreshes them first) of every clinic
of the network, because their centre line is the network's pooled rate of the period,
p̄ = Σ events / Σ sessions over all clinics, whichever clinics the caller sees (the
pooled numbers reveal no clinic); the points shown are the caller's clinics only.

- The p-chart: for one event type, each (clinic, period) point with its sessions n, its
  events, its rate and the 3-sigma limits from its own denominator,
  p̄ ± 3 √(p̄ (1 - p̄) / n), cut to [0, 1]. ``above``: the rate is above the upper limit;
  ``signal``: above, with at least the minimum sessions (settings).
- The funnel plot: for one period and event type, each clinic's (sessions, rate) with
  its limits at 95% (z = 1.959964) and 99.8% (z = 3.090232), and a curve of the limits
  over n for drawing.

Rates and limits are per 100 sessions in the answers, like the rates.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, date, datetime
from typing import Any

import msgspec

from safetyreport.analytics.rates import Grain
from safetyreport.caller import Caller
from safetyreport.db.pool import Conn
from safetyreport.errors import ValidationFailed

SIGMA = 3.0
# Two-sided normal quantiles of the funnel's limits: 95% and 99.8%.
Z95 = 1.959964
Z998 = 3.090232
CURVE_POINTS = 40


class ChartFilters(msgspec.Struct, frozen=True, kw_only=True):
    event_type: str
    grain: Grain = "month"
    start: date
    end: date
    clinic: str | None = None
    drug: str | None = None
    route: str | None = None
    dose_band: str | None = None


class CentreLine(msgspec.Struct, frozen=True, kw_only=True):
    """The network's pooled rate of one period (all clinics)."""

    period_start: date
    sessions: int
    events: int
    centre_per_100: float


class ChartPoint(msgspec.Struct, frozen=True, kw_only=True):
    period_start: date
    clinic: str
    sessions: int
    events: int
    rate_per_100: float
    centre_per_100: float
    lcl_per_100: float
    ucl_per_100: float
    above: bool
    signal: bool


class ControlChart(msgspec.Struct, frozen=True, kw_only=True):
    event_type: str
    grain: Grain
    start: date
    end: date
    sigma: float
    min_sessions: int
    centre: list[CentreLine]
    points: list[ChartPoint]


class FunnelClinic(msgspec.Struct, frozen=True, kw_only=True):
    clinic: str
    sessions: int
    events: int
    rate_per_100: float
    lower95_per_100: float
    upper95_per_100: float
    lower998_per_100: float
    upper998_per_100: float
    # Where the rate lies: "inside", "above_95", "above_998", "below_95", "below_998".
    position: str


class FunnelLimit(msgspec.Struct, frozen=True, kw_only=True):
    sessions: int
    lower95_per_100: float
    upper95_per_100: float
    lower998_per_100: float
    upper998_per_100: float


class Funnel(msgspec.Struct, frozen=True, kw_only=True):
    event_type: str
    grain: Grain
    period_start: date
    sessions: int
    events: int
    centre_per_100: float | None
    clinics: list[FunnelClinic]
    curve: list[FunnelLimit]


def limits(p: float, n: int, z: float) -> tuple[float, float]:
    """The limits p ± z √(p (1 - p) / n), cut to [0, 1]."""
    half = z * math.sqrt(p * (1 - p) / n)
    return max(0.0, p - half), min(1.0, p + half)


def period_of(grain: Grain, day: date) -> date:
    """The first day of the month or ISO week (Monday) holding ``day``."""
    if grain == "month":
        return day.replace(day=1)
    return date.fromordinal(day.toordinal() - day.weekday())


def last_complete(grain: Grain, today: date | None = None) -> date:
    """The start of the last complete month or week (UTC)."""
    current = period_of(grain, today or datetime.now(UTC).date())
    return period_of(grain, date.fromordinal(current.toordinal() - 1))


def _per_100(value: float) -> float:
    return round(100 * value, 4)


# Every clinic's sessions and events of one event type, by period ($1 grain, $2-$3 the
# range, $4-$6 drug, route, dose band, $7 the event type).
_COUNTS = """
WITH s AS (
    SELECT period_start, clinic_id, sum(sessions)::integer AS n
    FROM analytics_sessions
    WHERE grain = $1 AND period_start >= $2 AND period_start < $3
      AND ($4::text IS NULL OR drug = $4) AND ($5::text IS NULL OR analytics_route(drug) = $5)
      AND ($6::text IS NULL OR dose_band = $6)
    GROUP BY 1, 2
), e AS (
    SELECT period_start, clinic_id, sum(sessions_with_event)::integer AS n
    FROM analytics_events
    WHERE grain = $1 AND period_start >= $2 AND period_start < $3 AND event_type = $7
      AND ($4::text IS NULL OR drug = $4) AND ($5::text IS NULL OR analytics_route(drug) = $5)
      AND ($6::text IS NULL OR dose_band = $6)
    GROUP BY 1, 2
)
SELECT s.period_start, s.clinic_id, c.code AS clinic, s.n AS sessions,
       coalesce(e.n, 0) AS events
FROM s JOIN clinics c ON c.id = s.clinic_id
LEFT JOIN e USING (period_start, clinic_id)
ORDER BY s.period_start, c.code
"""


async def _counts(conn: Conn, filters: ChartFilters) -> list[Any]:
    return await conn.fetch(
        _COUNTS,
        filters.grain,
        filters.start,
        filters.end,
        filters.drug,
        filters.route,
        filters.dose_band,
        filters.event_type,
    )


async def compute_chart(
    conn: Conn, filters: ChartFilters, clinics: list[int] | None, min_sessions: int
) -> ControlChart:
    """The p-chart of ``clinics`` (None: every clinic) against the network's centre line;
    no audit (the route and the signal check record their own)."""
    if filters.start >= filters.end:
        raise ValidationFailed.one("end", "after_start", "end must come after start")
    rows = await _counts(conn, filters)
    pooled: dict[date, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        pooled[r["period_start"]][0] += r["sessions"]
        pooled[r["period_start"]][1] += r["events"]
    centre = [
        CentreLine(
            period_start=period,
            sessions=n,
            events=x,
            centre_per_100=_per_100(x / n),
        )
        for period, (n, x) in sorted(pooled.items())
    ]
    points = []
    for r in rows:
        if clinics is not None and r["clinic_id"] not in clinics:
            continue
        n_all, x_all = pooled[r["period_start"]]
        p_bar = x_all / n_all
        n, x = r["sessions"], r["events"]
        low, high = limits(p_bar, n, SIGMA)
        rate = x / n
        above = rate > high
        points.append(
            ChartPoint(
                period_start=r["period_start"],
                clinic=r["clinic"],
                sessions=n,
                events=x,
                rate_per_100=_per_100(rate),
                centre_per_100=_per_100(p_bar),
                lcl_per_100=_per_100(low),
                ucl_per_100=_per_100(high),
                above=above,
                signal=above and n >= min_sessions,
            )
        )
    return ControlChart(
        event_type=filters.event_type,
        grain=filters.grain,
        start=filters.start,
        end=filters.end,
        sigma=SIGMA,
        min_sessions=min_sessions,
        centre=centre,
        points=points,
    )


async def control_chart(
    conn: Conn,
    caller: Caller,
    filters: ChartFilters,
    clinics: list[int] | None,
    min_sessions: int,
) -> ControlChart:
    """The p-chart, audited in the chain of each clinic whose points it shows."""
    chart = await compute_chart(conn, filters, clinics, min_sessions)
    shown = sorted({p.clinic for p in chart.points})
    await caller.audit_each_clinic(
        conn,
        shown,
        "analytics.control_chart_read",
        object_type="analytics",
        details_for=lambda _clinic: msgspec.to_builtins(filters),
    )
    return chart


def _position(rate: float, l95: float, u95: float, l998: float, u998: float) -> str:
    if rate > u998:
        return "above_998"
    if rate > u95:
        return "above_95"
    if rate < l998:
        return "below_998"
    if rate < l95:
        return "below_95"
    return "inside"


def curve_sessions(largest: int, points: int = CURVE_POINTS) -> list[int]:
    """Denominators from 1 to ``largest``, spaced evenly on a log scale (the funnel
    narrows fastest at small n), each once, ``largest`` included."""
    if largest < 1:
        return []
    if largest == 1:
        return [1]
    step = math.log(largest) / (points - 1)
    return sorted({round(math.exp(step * k)) for k in range(points)} | {1, largest})


async def funnel(
    conn: Conn,
    caller: Caller,
    event_type: str,
    grain: Grain,
    period_start: date,
    clinics: list[int] | None,
    *,
    drug: str | None = None,
    route: str | None = None,
    dose_band: str | None = None,
) -> Funnel:
    """The funnel plot of one period (the one holding ``period_start``) of the caller's
    clinics against the network's pooled rate, audited in each shown clinic's chain."""
    period = period_of(grain, period_start)
    filters = ChartFilters(
        event_type=event_type,
        grain=grain,
        start=period,
        end=date.fromordinal(period.toordinal() + 1),
        drug=drug,
        route=route,
        dose_band=dose_band,
    )
    rows = await _counts(conn, filters)
    n_all = sum(r["sessions"] for r in rows)
    x_all = sum(r["events"] for r in rows)
    p_bar = x_all / n_all if n_all else None
    shown = [r for r in rows if clinics is None or r["clinic_id"] in clinics]
    points = []
    curve = []
    if p_bar is not None:
        for r in shown:
            n, x = r["sessions"], r["events"]
            l95, u95 = limits(p_bar, n, Z95)
            l998, u998 = limits(p_bar, n, Z998)
            rate = x / n
            points.append(
                FunnelClinic(
                    clinic=r["clinic"],
                    sessions=n,
                    events=x,
                    rate_per_100=_per_100(rate),
                    lower95_per_100=_per_100(l95),
                    upper95_per_100=_per_100(u95),
                    lower998_per_100=_per_100(l998),
                    upper998_per_100=_per_100(u998),
                    position=_position(rate, l95, u95, l998, u998),
                )
            )
        for n in curve_sessions(max((r["sessions"] for r in shown), default=0)):
            l95, u95 = limits(p_bar, n, Z95)
            l998, u998 = limits(p_bar, n, Z998)
            curve.append(
                FunnelLimit(
                    sessions=n,
                    lower95_per_100=_per_100(l95),
                    upper95_per_100=_per_100(u95),
                    lower998_per_100=_per_100(l998),
                    upper998_per_100=_per_100(u998),
                )
            )
    await caller.audit_each_clinic(
        conn,
        [p.clinic for p in points],
        "analytics.funnel_read",
        object_type="analytics",
        details_for=lambda _clinic: {
            "event_type": event_type,
            "grain": grain,
            "period_start": period.isoformat(),
        },
    )
    return Funnel(
        event_type=event_type,
        grain=grain,
        period_start=period,
        sessions=n_all,
        events=x_all,
        centre_per_100=None if p_bar is None else _per_100(p_bar),
        clinics=points,
        curve=curve,
    )
