"""Opaque cursors for keyset pagination, shared by every list endpoint."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any, TypeVar

import msgspec

from safetyreport.errors import ValidationFailed
from safetyreport.times import utc_time_error

T = TypeVar("T")
_encoder = msgspec.json.Encoder()


def encode_cursor(*values: Any) -> str:
    """The sort key of a page's last item, as an opaque URL-safe string."""
    return base64.urlsafe_b64encode(_encoder.encode(list(values))).decode().rstrip("=")


# PostgreSQL's bigint: a larger number in a cursor would fail in the query, not here.
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1


def decode_cursor(cursor: str, shape: type[T]) -> T:
    """The sort key in ``cursor``, or ValidationFailed naming ``cursor``.

    Every value must be one the database can compare: integers within bigint, times
    with a UTC offset, text without NUL characters.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = msgspec.json.decode(raw, type=shape)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise ValidationFailed.one(
            "cursor", "format", "use next_cursor from a previous page"
        ) from None
    for value in decoded if isinstance(decoded, tuple) else (decoded,):
        _check_value(value)
    return decoded


def _check_value(value: object) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int) and not BIGINT_MIN <= value <= BIGINT_MAX:
        raise ValidationFailed.one("cursor", "range", "use next_cursor from a previous page")
    if isinstance(value, datetime):
        error = utc_time_error("cursor", value)
        if error is not None:
            raise ValidationFailed([error])
    if isinstance(value, str) and "\x00" in value:
        raise ValidationFailed.one("cursor", "format", "use next_cursor from a previous page")
