"""The DEA clocks of a theft or loss of a controlled substance (21 CFR 1301.76(b)).

The written notice is due by the end of the next business day after the discovery, and
DEA Form 106 by the end of the 45th day after it, both counted in the clinic's time zone.
Business days skip Saturdays, Sundays and US federal holidays (as observed), from the
maintained ``holidays`` library. A clinic whose zone was never set is counted in UTC,
and its clocks say so.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

import holidays

from safetyreport.db.pool import Conn

FORM_106_DAYS = 45
# The last second of a day: a due time that reads as that day wherever it is shown.
END_OF_DAY = time(23, 59, 59)
# Shown on the DEA clocks of a clinic that has no time zone (see view.ALERT_COLUMNS).
NO_ZONE_WARNING = (
    "the clinic has no time zone, so these DEA due times were counted in UTC and may be"
    " a day off locally; set it with: safetyreport clinic set-timezone CODE ZONE"
)


@functools.lru_cache(maxsize=64)
def _federal_holidays(year: int) -> frozenset[date]:
    # The federal holidays of the United States (no state's), with observed days: a
    # holiday on a Saturday is observed on the Friday before, on a Sunday the Monday after.
    return frozenset(holidays.country_holidays("US", years=year, observed=True))


def is_business_day(day: date) -> bool:
    return day.weekday() < 5 and day not in _federal_holidays(day.year)


def next_business_day(day: date) -> date:
    later = day + timedelta(days=1)
    while not is_business_day(later):
        later += timedelta(days=1)
    return later


def _end_of(day: date, zone: tzinfo) -> datetime:
    return datetime.combine(day, END_OF_DAY, tzinfo=zone).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Clocks:
    """When the DEA notice and Form 106 are due (UTC), and the zone they were counted in
    (None: the clinic had none, so UTC)."""

    notice_due: datetime
    form106_due: datetime
    zone: str | None


def clocks(discovered_at: datetime, zone_name: str | None) -> Clocks:
    """The DEA clocks of a discovery at ``discovered_at`` in the zone ``zone_name``."""
    zone: tzinfo = ZoneInfo(zone_name) if zone_name else UTC
    discovered_on = discovered_at.astimezone(zone).date()
    return Clocks(
        notice_due=_end_of(next_business_day(discovered_on), zone),
        form106_due=_end_of(discovered_on + timedelta(days=FORM_106_DAYS), zone),
        zone=zone_name,
    )


async def clinic_clocks(conn: Conn, clinic_id: int, discovered_at: datetime) -> Clocks:
    """The DEA clocks of a discovery at a clinic, in the clinic's time zone."""
    zone_name: str | None = await conn.fetchval(
        "SELECT timezone FROM clinics WHERE id = $1", clinic_id
    )
    return clocks(discovered_at, zone_name)


def today_in(zone_name: str | None) -> date:
    """Today's date in the zone (UTC without one)."""
    return datetime.now(ZoneInfo(zone_name) if zone_name else UTC).date()
