"""What an amendment body says: why, and the fields it changes. Reports and treatment
sessions (and their observations) are amended alike: ``{"reason": ..., <fields>}``."""

from __future__ import annotations

from typing import Any

from safetyreport.errors import FieldError, ValidationFailed

MAX_REASON = 1000
# How an amendment's reason is documented (and checked, with the text stripped).
REASON_PATTERN = r"\S"


def reason_and_changes(
    raw: Any, *, noun: str, fixed: frozenset[str] = frozenset()
) -> tuple[str, dict[str, Any]]:
    """The amendment's reason (stripped) and its changed fields; 422 when the body is not
    an object, has no reason, names a ``fixed`` field or changes nothing."""
    if not isinstance(raw, dict):
        raise ValidationFailed.one("$", "type", "the body must be a JSON object")
    changes = dict(raw)
    reason = changes.pop("reason", None)
    if reason is None:
        raise ValidationFailed.one("reason", "required", f"say why the {noun} changes")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
        raise ValidationFailed.one(
            "reason", "length", f"a reason is 1-{MAX_REASON} characters of text"
        )
    if "\x00" in reason:
        raise ValidationFailed.one("reason", "no_nul", "text may not contain NUL")
    named = sorted(fixed & changes.keys())
    if named:
        raise ValidationFailed([FieldError(f, "fixed", f"{f} cannot be amended") for f in named])
    if not changes:
        raise ValidationFailed.one("$", "no_change", "name at least one field to change")
    return reason.strip(), changes


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each field whose value differs, ``{"from": ..., "to": ...}``, for the audit entry."""
    return {
        name: {"from": before.get(name), "to": after.get(name)}
        for name in sorted(before.keys() | after.keys())
        if before.get(name) != after.get(name)
    }
