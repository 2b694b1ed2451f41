"""Times are stored and shown in UTC; every time from a client must carry an offset."""

from __future__ import annotations

from datetime import UTC, datetime

from safetyreport.errors import FieldError, ValidationFailed

__all__ = ["require_utc", "utc_time_error"]


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
