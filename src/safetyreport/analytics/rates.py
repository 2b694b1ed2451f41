"""Event rates per 100 treatment sessions with their 95% confidence intervals (issue 16).

Read from the rollups (migration 0020) after recounting the dirty periods of the
clinics asked for (rollups.refresh). A row is one period and one group (the dimensions
asked for in ``group``: clinic, drug, route, dose band; the others summed) and one event
type: its sessions, the sessions with at least one event of that type, the rate per 100
sessions with the Wilson score interval, and beside them the reports of that type linked
to no session. Every event type seen in the answer's range (or the one asked for) has a
row in every group with sessions, zero events included.
"""

from __future__ import annotations

import csv
import io
import math
from datetime import UTC, date, datetime
from typing import Literal

import asyncpg
import msgspec

from safetyreport.caller import Caller
from safetyreport.csvsafe import neutralise
from safetyreport.db.pool import Conn
from safetyreport.errors import ValidationFailed

Grain = Literal["month", "week"]
Dimension = Literal["clinic", "drug", "route", "dose_band"]
DIMENSIONS: tuple[Dimension, ...] = ("clinic", "drug", "route", "dose_band")
# The two-sided 95% normal quantile.
Z95 = 1.959963984540054
INTERVAL = "Wilson score interval, 95%"


class RateFilters(msgspec.Struct, frozen=True, kw_only=True):
    grain: Grain = "month"
    # Periods starting on or after ``start`` and before ``end`` (UTC dates).
    start: date
    end: date
    clinic: str | None = None
    drug: str | None = None
    route: str | None = None
    dose_band: str | None = None
    event_type: str | None = None
    group: tuple[Dimension, ...] = DIMENSIONS


class RateRow(msgspec.Struct, frozen=True, kw_only=True):
    period_start: date
    # Null where the answer is not grouped by it (summed over it).
    clinic: str | None
    drug: str | None
    route: str | None
    dose_band: str | None
    event_type: str
    sessions: int
    sessions_with_event: int
    # Null without sessions.
    rate_per_100: float | None
    ci95_low_per_100: float | None
    ci95_high_per_100: float | None
    # Reports of this type and group linked to no session: beside the rate, never in it.
    unlinked_reports: int


class Rates(msgspec.Struct, frozen=True, kw_only=True):
    grain: Grain
    start: date
    end: date
    group: tuple[Dimension, ...]
    interval: str
    rows: list[RateRow]


def wilson_interval(events: int, sessions: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion ``events / sessions`` (None without
    sessions): good for the rare events and small clinics of this use, where the normal
    approximation's interval leaves [0, 1] or is empty at zero events."""
    if sessions <= 0:
        return None
    p = events / sessions
    z2 = z * z
    denominator = 1 + z2 / sessions
    centre = (p + z2 / (2 * sessions)) / denominator
    half = z * math.sqrt(p * (1 - p) / sessions + z2 / (4 * sessions * sessions)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def default_range(grain: Grain, today: date | None = None) -> tuple[date, date]:
    """The last 12 months (or 13 weeks), the current period included."""
    today = today or datetime.now(UTC).date()
    if grain == "month":
        start = date(today.year - 1, today.month, 1)
        end = date(today.year + (today.month == 12), today.month % 12 + 1, 1)
        return start, end
    monday = date.fromordinal(today.toordinal() - today.weekday())
    return date.fromordinal(monday.toordinal() - 12 * 7), date.fromordinal(monday.toordinal() + 7)


# The columns of a group (SQL), by dimension; route follows from the drug.
_KEY_SQL: dict[Dimension, str] = {
    "clinic": "clinic_id",
    "drug": "drug",
    "route": "analytics_route(drug) AS route",
    "dose_band": "dose_band",
}
_KEY_NAME: dict[Dimension, str] = {
    "clinic": "clinic_id",
    "drug": "drug",
    "route": "route",
    "dose_band": "dose_band",
}
_WHERE = """
grain = $1 AND period_start >= $2 AND period_start < $3
AND ($4::bigint[] IS NULL OR clinic_id = ANY($4::bigint[]))
AND ($5::text IS NULL OR drug = $5) AND ($6::text IS NULL OR analytics_route(drug) = $6)
AND ($7::text IS NULL OR dose_band = $7)
"""


def _sql(group: tuple[Dimension, ...]) -> str:
    """The rates query for one grouping (dimensions from a fixed list, no input)."""
    keys = ["period_start", *(_KEY_SQL[d] for d in group)]
    names = ["period_start", *(_KEY_NAME[d] for d in group)]
    select, by = ", ".join(keys), ", ".join(names)
    return f"""
WITH s AS (
    SELECT {select}, sum(sessions)::integer AS sessions
    FROM analytics_sessions WHERE {_WHERE} GROUP BY {by}
), e AS (
    SELECT {select}, event_type, sum(sessions_with_event)::integer AS n
    FROM analytics_events WHERE {_WHERE} AND ($8::text IS NULL OR event_type = $8)
    GROUP BY {by}, event_type
), u AS (
    SELECT {select}, event_type, sum(reports)::integer AS n
    FROM analytics_unlinked WHERE {_WHERE} AND ($8::text IS NULL OR event_type = $8)
    GROUP BY {by}, event_type
), types AS (
    SELECT event_type FROM e UNION SELECT event_type FROM u
    UNION SELECT $8::text WHERE $8::text IS NOT NULL
), grid AS (
    SELECT s.*, types.event_type FROM s CROSS JOIN types
)
SELECT {by}, event_type, coalesce(grid.sessions, 0) AS sessions,
       coalesce(e.n, 0) AS events, coalesce(u.n, 0) AS unlinked
FROM grid
LEFT JOIN e USING ({by}, event_type)
FULL JOIN u USING ({by}, event_type)
ORDER BY {by}, event_type
"""  # noqa: S608 (dimension names from a fixed list)


async def rates(
    conn: Conn, caller: Caller, filters: RateFilters, clinics: list[int] | None
) -> Rates:
    """The rates of ``clinics`` (None: every clinic), audited in each clinic's chain."""
    if filters.start >= filters.end:
        raise ValidationFailed.one("end", "after_start", "end must come after start")
    group = tuple(d for d in DIMENSIONS if d in filters.group)
    codes = {cid: code for code, cid in caller.principal.clinic_ids.items()}
    if clinics is None:
        codes.update({r["id"]: r["code"] for r in await conn.fetch("SELECT id, code FROM clinics")})
    records = await conn.fetch(
        _sql(group),
        filters.grain,
        filters.start,
        filters.end,
        clinics,
        filters.drug,
        filters.route,
        filters.dose_band,
        filters.event_type,
    )
    rows = [_row(r, group, codes) for r in records]
    # Grouped by clinic, the rows name the clinics counted; summed over them, ask.
    read = (
        sorted({r["clinic_id"] for r in records if r["clinic_id"] is not None})
        if "clinic" in group
        else await _clinics_read(conn, filters, clinics)
    )
    await caller.audit_each_clinic(
        conn,
        [codes[c] for c in read if c in codes],
        "analytics.rates_read",
        object_type="analytics",
        details_for=lambda _clinic: msgspec.to_builtins(filters),
    )
    return Rates(
        grain=filters.grain,
        start=filters.start,
        end=filters.end,
        group=group,
        interval=INTERVAL,
        rows=rows,
    )


_CLINICS_READ = f"""
SELECT clinic_id FROM analytics_sessions WHERE {_WHERE}
UNION SELECT clinic_id FROM analytics_unlinked WHERE {_WHERE}
ORDER BY 1
"""  # noqa: S608 (constant SQL fragments, no input)


async def _clinics_read(conn: Conn, filters: RateFilters, clinics: list[int] | None) -> list[int]:
    """The clinics whose counts the answer holds (their chains record the read)."""
    found: list[int] = [
        r["clinic_id"]
        for r in await conn.fetch(
            _CLINICS_READ,
            filters.grain,
            filters.start,
            filters.end,
            clinics,
            filters.drug,
            filters.route,
            filters.dose_band,
        )
    ]
    return found


def _row(r: asyncpg.Record, group: tuple[Dimension, ...], codes: dict[int, str]) -> RateRow:
    sessions: int = r["sessions"]
    events: int = r["events"]
    interval = wilson_interval(events, sessions)
    return RateRow(
        period_start=r["period_start"],
        clinic=codes.get(r["clinic_id"]) if "clinic" in group else None,
        drug=r["drug"] if "drug" in group else None,
        route=r["route"] if "route" in group else None,
        dose_band=r["dose_band"] if "dose_band" in group else None,
        event_type=r["event_type"],
        sessions=sessions,
        sessions_with_event=events,
        rate_per_100=None if sessions == 0 else round(100 * events / sessions, 4),
        ci95_low_per_100=None if interval is None else round(100 * interval[0], 4),
        ci95_high_per_100=None if interval is None else round(100 * interval[1], 4),
        unlinked_reports=r["unlinked"],
    )


_encoder = msgspec.json.Encoder()


def encode(answer: Rates) -> bytes:
    return _encoder.encode(answer)


CSV_COLUMNS = tuple(f.encode_name for f in msgspec.structs.fields(RateRow))


def to_csv(answer: Rates) -> str:
    """The same rows as the JSON, one line each under a header (text cells made safe for
    spreadsheets); empty cells for nulls."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in answer.rows:
        values = msgspec.to_builtins(row)
        writer.writerow(
            [
                ""
                if values[c] is None
                else neutralise(str(values[c]))
                if isinstance(values[c], str)
                else values[c]
                for c in CSV_COLUMNS
            ]
        )
    return out.getvalue()
