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
from safetyreport.reports.types import (
    ESKETAMINE_DOSES_MG,
    KIND_NAMES,
    KINDS,
    QUANTITY_CONCERNS,
    QUANTITY_INCIDENTS,
    STOCK_CONCERNS,
    TIME_FIELD,
    WEIGHT_BASED_DRUGS,
    ReportBody,
    StockIncident,
)
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


def _check_time(
    values: dict[str, Any], kind: str, now: datetime, skew: timedelta
) -> list[FieldError]:
    name = TIME_FIELD[kind]
    moment: datetime | None = values.get(name)
    if moment is None:
        return []
    error = utc_time_error(name, moment)
    if error is not None:
        return [error]
    if moment > now + skew:
        return [FieldError(name, "not_in_future", "this time is in the future")]
    return []


def _check_unique(values: dict[str, Any]) -> list[FieldError]:
    return [
        FieldError(name, "unique", "each value may appear only once")
        for name in ("seriousness", "symptoms", "urological_symptoms")
        if name in values and len(set(values[name])) != len(values[name])
    ]


def check_pressure(values: dict[str, Any], failed: set[str]) -> list[FieldError]:
    systolic, diastolic = values.get("systolic"), values.get("diastolic")
    if systolic is not None and diastolic is not None and systolic <= diastolic:
        return [FieldError("systolic", "above_diastolic", "systolic must exceed diastolic")]
    # A pressure is a pair: one number alone is a reading half taken down.
    for given, missing in (("systolic", "diastolic"), ("diastolic", "systolic")):
        if values.get(given) is not None and values.get(missing) is None and missing not in failed:
            return [FieldError(missing, "required", f"required with {given}")]
    return []


def _check_quantities(
    values: dict[str, Any], failed: set[str], *, type_field: str, needing: frozenset[str]
) -> list[FieldError]:
    """``needing`` types need both quantities and the unit; the other types may give
    quantities only with a unit (stock incidents) or not at all (misuse concerns)."""
    kind_of = values.get(type_field)
    if kind_of is None:
        return []
    names = ("expected_quantity", "actual_quantity", "unit")
    if kind_of in needing:
        return [
            FieldError(name, "required", f"required when {type_field} is {kind_of}")
            for name in names
            if values.get(name) is None and name not in failed
        ]
    if type_field == "incident_type":
        quantities = any(values.get(name) is not None for name in names[:2])
        if quantities and values.get("unit") is None and "unit" not in failed:
            return [FieldError("unit", "required", "required with a quantity")]
        return []
    return [
        FieldError(name, "not_applicable", f"only for {', '.join(sorted(needing))}")
        for name in (*names, "lot")
        if values.get(name) is not None
    ]


def _check_concern(values: dict[str, Any], *, stock_concerns_allowed: bool) -> list[FieldError]:
    concern = values.get("concern_type")
    if concern in STOCK_CONCERNS and not stock_concerns_allowed:
        return [
            FieldError(
                "concern_type",
                "use_stock_incident",
                f"{concern} concerns the clinic's stock, not a patient: report it as a"
                " stock_incident",
            )
        ]
    return []


def check_dose(values: dict[str, Any], failed: set[str]) -> list[FieldError]:
    drug, dose = values.get("drug"), values.get("dose_mg")
    errors: list[FieldError] = []
    if drug == "esketamine_nasal" and dose is not None and dose not in ESKETAMINE_DOSES_MG:
        doses = ", ".join(str(d) for d in ESKETAMINE_DOSES_MG)
        errors.append(
            FieldError("dose_mg", "esketamine_dose", f"an esketamine nasal dose is {doses} mg")
        )
    if (
        drug in WEIGHT_BASED_DRUGS
        and dose is not None
        and values.get("weight_kg") is None
        and "weight_kg" not in failed
    ):
        errors.append(
            FieldError("weight_kg", "required", f"required with a dose of {drug} (mg/kg)")
        )
    if values.get("infusion_minutes") is not None and drug != "ketamine_iv":
        errors.append(
            FieldError("infusion_minutes", "not_applicable", "only for ketamine_iv infusions")
        )
    return errors


def _check_outcome(values: dict[str, Any], failed: set[str]) -> list[FieldError]:
    outcome, seriousness = values.get("outcome"), values.get("seriousness") or []
    errors: list[FieldError] = []
    if "death" in seriousness and outcome is not None and outcome != "fatal":
        errors.append(FieldError("outcome", "fatal_with_death", "death needs outcome fatal"))
    if outcome == "fatal" and "seriousness" not in failed and "death" not in seriousness:
        errors.append(
            FieldError("seriousness", "death_with_fatal", "outcome fatal needs death here")
        )
    if values.get("resolved") is True and outcome == "ongoing":
        errors.append(
            FieldError("outcome", "not_ongoing_if_resolved", "a resolved event is not ongoing")
        )
    return errors


# The adverse-event fields that belong to one category each.
_CATEGORY_FIELDS = {
    "cssrs": "suicidality",
    "phq9_item9": "suicidality",
    "rescue_medication": "emergence_reaction",
    "ed_transfer": "emergence_reaction",
    "moaa_s": "vomiting",
    "urological_symptoms": "urological",
}


def _check_category(values: dict[str, Any], failed: set[str]) -> list[FieldError]:
    category = values.get("category")
    if category is None:
        return []
    errors = [
        FieldError(name, "not_applicable", f"only for category {owner}")
        for name, owner in _CATEGORY_FIELDS.items()
        if owner != category and values.get(name) not in (None, [])
    ]

    def missing(*names: str) -> bool:
        return all(values.get(n) in (None, []) and n not in failed for n in names)

    if category == "suicidality" and missing("cssrs", "phq9_item9"):
        errors.append(FieldError("cssrs", "required", "give cssrs, phq9_item9 or both"))
    for name in ("rescue_medication", "ed_transfer", "moaa_s", "urological_symptoms"):
        if _CATEGORY_FIELDS[name] == category and missing(name):
            errors.append(FieldError(name, "required", f"required for category {category}"))
    return errors


def validate_report(
    raw: Any,
    *,
    skew: timedelta,
    now: datetime | None = None,
    stock_concerns_allowed: bool = False,
) -> ReportBody:
    """A typed report from decoded JSON, or ValidationFailed naming every broken rule.

    ``stock_concerns_allowed``: for amending a misuse concern stored with one of the
    stock concern types of old, under the rules it was created with.
    """
    if not isinstance(raw, dict):
        raise ValidationFailed.one("$", "type", "the body must be a JSON object")
    kind = raw.get("kind")
    if kind is None:
        raise ValidationFailed.one("kind", "required", f"kind is one of {', '.join(KIND_NAMES)}")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValidationFailed.one("kind", "enum", f"kind is one of {', '.join(KIND_NAMES)}")
    now = now or datetime.now(UTC)
    whole = _convert_whole(raw, kind)
    if whole is not None:
        # Every field converted: the same values the field-by-field path would check.
        values = {name: getattr(whole, name) for name in raw if name != "kind"}
        errors = _check_across_fields(values, [], kind, now, skew, stock_concerns_allowed)
        if errors:
            raise ValidationFailed(errors)
        body: ReportBody = whole
    else:
        values, errors = _convert_fields(raw, kind)
        errors = _check_across_fields(values, errors, kind, now, skew, stock_concerns_allowed)
        if errors:
            raise ValidationFailed(errors)
        body = msgspec.convert(raw, KINDS[kind])
    if isinstance(body, StockIncident):
        return msgspec.structs.replace(body, discovered_at=body.discovered_at.astimezone(UTC))
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
    values: dict[str, Any],
    errors: list[FieldError],
    kind: str,
    now: datetime,
    skew: timedelta,
    stock_concerns_allowed: bool,
) -> list[FieldError]:
    """``errors`` (of single fields) and those of the rules that span fields, in order."""
    errors = errors + _check_time(values, kind, now, skew)
    errors += _check_unique(values)
    failed = {e.field for e in errors}
    errors += check_pressure(values, failed)
    errors += check_dose(values, failed)
    errors += _check_outcome(values, failed)
    errors += _check_category(values, failed)
    errors += _check_concern(values, stock_concerns_allowed=stock_concerns_allowed)
    failed = {e.field for e in errors}
    if kind == "stock_incident":
        errors += _check_quantities(
            values, failed, type_field="incident_type", needing=QUANTITY_INCIDENTS
        )
    else:
        errors += _check_quantities(
            values, failed, type_field="concern_type", needing=QUANTITY_CONCERNS
        )
    return errors
