"""Validating a report body and naming every field that breaks a rule.

msgspec stops at the first error, so each field is converted on its own; rules
that span fields then run on whichever of their fields converted. The report is
built only when nothing failed, so nothing half-valid is ever stored.

Most reports are valid: they are converted whole first (one msgspec call), and only
a body that fails that is taken apart field by field to name every error.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from safetyreport.errors import FieldError, ValidationFailed, rule_of
from safetyreport.reports.types import KINDS, QUANTITY_CONCERNS, ReportBody
from safetyreport.times import utc_time_error


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


# Each kind's fields, resolved once: msgspec.structs.fields evaluates the annotations
# on every call.
_FIELDS = {kind: msgspec.structs.fields(struct) for kind, struct in KINDS.items()}
_KNOWN = {kind: {f.encode_name for f in fields} | {"kind"} for kind, fields in _FIELDS.items()}


def _convert_fields(raw: dict[str, Any], kind: str) -> tuple[dict[str, Any], list[FieldError]]:
    """Each field converted on its own: the values that passed, and an error per failure."""
    fields = _FIELDS[kind]
    known = _KNOWN[kind]
    errors = [
        FieldError(name, "unknown_field", f"{name} is not a field of a {kind} report")
        for name in raw
        if name not in known
    ]
    values: dict[str, Any] = {}
    for field in fields:
        name = field.encode_name
        if name not in raw:
            if field.required:
                errors.append(FieldError(name, "required", "this field is required"))
            continue
        if _has_nul(raw[name]):
            errors.append(FieldError(name, "no_nul", "text may not contain NUL characters"))
            continue
        try:
            values[name] = msgspec.convert(raw[name], field.type)
        except msgspec.ValidationError as exc:
            errors.append(FieldError(name, rule_of(str(exc)), str(exc)))
    return values, errors


def _check_time(values: dict[str, Any], now: datetime, skew: timedelta) -> list[FieldError]:
    occurred_at: datetime | None = values.get("occurred_at")
    if occurred_at is None:
        return []
    error = utc_time_error("occurred_at", occurred_at)
    if error is not None:
        return [error]
    if occurred_at > now + skew:
        return [FieldError("occurred_at", "not_in_future", "occurred_at is in the future")]
    return []


def _check_unique(values: dict[str, Any]) -> list[FieldError]:
    return [
        FieldError(name, "unique", "each value may appear only once")
        for name in ("seriousness", "symptoms")
        if name in values and len(set(values[name])) != len(values[name])
    ]


def _check_pressure(values: dict[str, Any]) -> list[FieldError]:
    systolic, diastolic = values.get("systolic"), values.get("diastolic")
    if systolic is not None and diastolic is not None and systolic <= diastolic:
        return [FieldError("systolic", "above_diastolic", "systolic must exceed diastolic")]
    return []


def _check_quantities(values: dict[str, Any], failed: set[str]) -> list[FieldError]:
    concern = values.get("concern_type")
    if concern is None:
        return []
    names = ("expected_quantity", "actual_quantity", "unit")
    if concern in QUANTITY_CONCERNS:
        return [
            FieldError(name, "required", f"required when concern_type is {concern}")
            for name in names
            if values.get(name) is None and name not in failed
        ]
    return [
        FieldError(name, "not_applicable", f"only for {', '.join(sorted(QUANTITY_CONCERNS))}")
        for name in (*names, "lot")
        if values.get(name) is not None
    ]


def validate_report(raw: Any, *, skew: timedelta, now: datetime | None = None) -> ReportBody:
    """A typed report from decoded JSON, or ValidationFailed naming every broken rule."""
    if not isinstance(raw, dict):
        raise ValidationFailed.one("$", "type", "the body must be a JSON object")
    kind = raw.get("kind")
    if kind is None:
        raise ValidationFailed.one("kind", "required", f"kind is one of {', '.join(KINDS)}")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValidationFailed.one("kind", "enum", f"kind is one of {', '.join(KINDS)}")
    now = now or datetime.now(UTC)
    whole = _convert_whole(raw, kind)
    if whole is not None:
        # Every field converted: the same values the field-by-field path would check.
        values = {name: getattr(whole, name) for name in raw if name != "kind"}
        errors = _check_across_fields(values, [], now, skew)
        if errors:
            raise ValidationFailed(errors)
        body: ReportBody = whole
    else:
        values, errors = _convert_fields(raw, kind)
        errors = _check_across_fields(values, errors, now, skew)
        if errors:
            raise ValidationFailed(errors)
        body = msgspec.convert(raw, KINDS[kind])
    return msgspec.structs.replace(body, occurred_at=body.occurred_at.astimezone(UTC))


def _convert_whole(raw: dict[str, Any], kind: str) -> ReportBody | None:
    """The report converted in one go, or None if any field (or NUL) would fail alone."""
    if _has_nul(raw):
        return None
    try:
        body: ReportBody = msgspec.convert(raw, KINDS[kind])
    except msgspec.ValidationError:
        return None
    return body


def _check_across_fields(
    values: dict[str, Any], errors: list[FieldError], now: datetime, skew: timedelta
) -> list[FieldError]:
    """``errors`` (of single fields) and those of the rules that span fields, in order."""
    errors = errors + _check_time(values, now, skew)
    errors += _check_unique(values)
    errors += _check_pressure(values)
    errors += _check_quantities(values, {e.field for e in errors})
    return errors
