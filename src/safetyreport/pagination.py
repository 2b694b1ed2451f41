"""Opaque cursors for keyset pagination, shared by every list endpoint."""

from __future__ import annotations

import base64
import binascii
from typing import Any, TypeVar

import msgspec

from safetyreport.errors import ValidationFailed

T = TypeVar("T")
_encoder = msgspec.json.Encoder()


def encode_cursor(*values: Any) -> str:
    """The sort key of a page's last item, as an opaque URL-safe string."""
    return base64.urlsafe_b64encode(_encoder.encode(list(values))).decode().rstrip("=")


def decode_cursor(cursor: str, shape: type[T]) -> T:
    """The sort key in ``cursor``, or ValidationFailed naming ``cursor``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return msgspec.json.decode(raw, type=shape)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise ValidationFailed.one(
            "cursor", "format", "use next_cursor from a previous page"
        ) from None
