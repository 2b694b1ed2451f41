"""Times are stored and shown in UTC; every time from a client must carry an offset.

A clinic's IANA time zone says where its local days (the DEA's business days) fall.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from zoneinfo import available_timezones

import msgspec

from safetyreport.errors import FieldError, ValidationFailed, rule_of

__all__ = ["check_timezone", "parse_time", "require_utc", "utc_time_error"]

# Strict: text in RFC 3339 only. Converting a query string's text as Litestar does for a
# datetime parameter (msgspec's lax mode) would read "0" as seconds since 1970.
_TIME = msgspec.json.Decoder(datetime)


def utc_time_error(field: str, value: datetime) -> FieldError | None:
    """Why ``value`` cannot be stored as a UTC timestamp, or None."""
    if value.tzinfo is None:
        return FieldError(
            field, "offset_required", "give a UTC offset, e.g. 2026-01-02T09:30:00+01:00"
        )
    try:
        value.astimezone(UTC)
    except OverflowError:
        return FieldError(field, "range", "the time falls outside the years 1-9999 in UTC")
    return None


def require_utc(field: str, value: datetime) -> datetime:
    """``value`` in UTC, or ValidationFailed naming ``field``."""
    error = utc_time_error(field, value)
    if error is not None:
        raise ValidationFailed([error])
    return value.astimezone(UTC)


def parse_time(field: str, text: str | None) -> datetime | None:
    """A time given as text (a query parameter) in UTC, None for None, or ValidationFailed
    naming ``field``: RFC 3339 with an offset, e.g. ``2026-01-02T09:30:00+01:00``."""
    if text is None:
        return None
    try:
        value = _TIME.decode(msgspec.json.encode(text))
    except msgspec.ValidationError as exc:
        raise ValidationFailed([FieldError(field, rule_of(str(exc)), str(exc))]) from None
    return require_utc(field, value)


@functools.cache
def _zones() -> frozenset[str]:
    # Without the files beside the zones in a system's zoneinfo that are no place's zone.
    return frozenset(available_timezones()) - {"localtime", "posixrules", "Factory"}


def check_timezone(name: str, field: str = "timezone") -> str:
    """``name`` if it is an IANA time zone (``America/Los_Angeles``), else ValidationFailed."""
    # Only the IANA names: not a path, nor a file such as "localtime" beside them.
    if name not in _zones():
        raise ValidationFailed.one(
            field,
            "timezone",
            f"{name!r} is not an IANA time zone; give one such as America/Los_Angeles",
        )
    return name
