"""Validating the bodies of treatment sessions, naming every field that breaks a rule
(as reports/validation.py does for reports, with its pressure and dose checks)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from safetyreport.errors import FieldError, ValidationFailed, rule_of
from safetyreport.reports.validation import check_dose, check_pressure
from safetyreport.sessions.types import (
    VITALS,
    DischargeBody,
    DoseBody,
    ObservationBody,
    SessionCreate,
)
from safetyreport.times import utc_time_error


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _nested(annotation: Any) -> type[msgspec.Struct] | None:
    return (
        annotation
        if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct)
        else None
    )


def _fields(
    raw: Any, struct: type[msgspec.Struct], prefix: str = ""
) -> tuple[dict[str, Any], list[FieldError]]:
    """Each field converted on its own: the values that passed and an error per failure."""
    if not isinstance(raw, dict):
        return {}, [FieldError(prefix.rstrip(".") or "$", "type", "must be a JSON object")]
    fields = msgspec.structs.fields(struct)
    known = {f.encode_name for f in fields}
    errors = [
        FieldError(f"{prefix}{name}", "unknown_field", f"{name} is not a field here")
        for name in raw
        if name not in known
    ]
    values: dict[str, Any] = {}
    for field in fields:
        name = field.encode_name
        if name not in raw:
            if field.required:
                errors.append(FieldError(f"{prefix}{name}", "required", "this field is required"))
            continue
        inner = _nested(field.type)
        if inner is not None:
            nested, nested_errors = _fields(raw[name], inner, f"{prefix}{name}.")
            errors += nested_errors
            values[name] = nested  # what converted, for the checks across its fields
            continue
        if _has_nul(raw[name]):
            errors.append(FieldError(f"{prefix}{name}", "no_nul", "text may not contain NUL"))
            continue
        try:
            values[name] = msgspec.convert(raw[name], field.type)
        except msgspec.ValidationError as exc:
            errors.append(FieldError(f"{prefix}{name}", rule_of(str(exc)), str(exc)))
    return values, errors


def _time_errors(
    values: dict[str, Any], names: tuple[str, ...], now: datetime, skew: timedelta
) -> list[FieldError]:
    errors: list[FieldError] = []
    for name in names:
        moment: datetime | None = values.get(name)
        if moment is None:
            continue
        error = utc_time_error(name, moment)
        if error is not None:
            errors.append(error)
        elif moment > now + skew:
            errors.append(FieldError(name, "not_in_future", "this time is in the future"))
    return errors


def validate_session(raw: Any) -> SessionCreate:
    values, errors = _fields(raw, SessionCreate)
    failed = {e.field for e in errors}
    checklist = values.get("checklist") or {}
    errors += [
        FieldError(f"checklist.{e.field}", e.rule, e.message)
        for e in check_pressure(checklist, {f.removeprefix("checklist.") for f in failed})
    ]
    if errors:
        raise ValidationFailed(errors)
    return msgspec.convert(raw, SessionCreate)


def validate_dose(raw: Any, drug: str, weight_kg: float | None, *, skew: timedelta) -> DoseBody:
    """The dose, checked against the session's drug and weight as a report's dose is."""
    values, errors = _fields(raw, DoseBody)
    errors += _time_errors(values, ("dosed_at",), datetime.now(UTC), skew)
    failed = {e.field for e in errors}
    errors += check_dose({**values, "drug": drug, "weight_kg": weight_kg}, failed)
    if errors:
        raise ValidationFailed(errors)
    body = msgspec.convert(raw, DoseBody)
    return msgspec.structs.replace(body, dosed_at=body.dosed_at.astimezone(UTC))


def validate_observation(raw: Any, *, skew: timedelta) -> ObservationBody:
    values, errors = _fields(raw, ObservationBody)
    errors += _time_errors(values, ("observed_at",), datetime.now(UTC), skew)
    failed = {e.field for e in errors}
    errors += check_pressure(values, failed)
    if not failed and not any(values.get(name) is not None for name in VITALS):
        errors.append(FieldError("$", "no_vitals", f"give at least one of {', '.join(VITALS)}"))
    if errors:
        raise ValidationFailed(errors)
    body = msgspec.convert(raw, ObservationBody)
    return msgspec.structs.replace(body, observed_at=body.observed_at.astimezone(UTC))


def validate_discharge(raw: Any, *, skew: timedelta) -> DischargeBody:
    values, errors = _fields(raw, DischargeBody)
    errors += _time_errors(values, ("discharged_at",), datetime.now(UTC), skew)
    failed = {e.field for e in errors}
    errors += check_pressure(values, failed)
    if errors:
        raise ValidationFailed(errors)
    body = msgspec.convert(raw, DischargeBody)
    return msgspec.structs.replace(body, discharged_at=body.discharged_at.astimezone(UTC))
