"""The condition language of alert rules, parsed from JSON and evaluated on report facts.

    {"all": [c, ...]}   every condition holds        {"any": [c, ...]}  at least one holds
    {"not": c}          c does not hold
    {"field": "systolic", "op": ">=", "value": 180}
        op: == != > >= < <=       compare a field with a number, string or boolean
            in, not_in            the field's value is (not) one of a list
            any_of                a list field shares at least one item with a list
            not_empty, empty      a list field has items / has none (or is absent)

A field that is absent or null makes every comparison false (and ``empty`` true), so
rules written for one kind of report never fire on another by accident.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from safetyreport.alerts.limits import (
    MAX_CONDITION_DEPTH,
    MAX_CONDITION_NODES,
    MAX_LIST_VALUES,
    MAX_TEXT_CHARS,
)
from safetyreport.errors import FieldError, ValidationFailed

Op = Literal["==", "!=", ">", ">=", "<", "<=", "in", "not_in", "any_of", "not_empty", "empty"]
_OPS: frozenset[str] = frozenset(Op.__args__)  # type: ignore[attr-defined]
_UNARY = frozenset({"not_empty", "empty"})
_LIST_VALUE = frozenset({"in", "not_in", "any_of"})
Scalar: TypeAlias = int | float | str | bool
MAX_DEPTH = MAX_CONDITION_DEPTH


@dataclass(frozen=True, slots=True)
class Compare:
    field: str
    op: str
    value: Any = None
    # A list value compiled for lookups in constant time: (kind, value) pairs, and the
    # kinds present. Derived from value, so not part of equality.
    members: frozenset[tuple[str, Any]] = dataclasses.field(
        default=frozenset(), compare=False, repr=False
    )
    kinds: frozenset[str] = dataclasses.field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.op in _LIST_VALUE and isinstance(self.value, tuple | list):
            object.__setattr__(self, "members", frozenset((_kind(v), v) for v in self.value))
            object.__setattr__(self, "kinds", frozenset(_kind(v) for v in self.value))

    def holds(self, facts: Mapping[str, Any]) -> bool:
        actual = facts.get(self.field)
        if self.op == "empty":
            return _is_empty(actual)
        if self.op == "not_empty":
            return not _is_empty(actual)
        if actual is None:
            return False
        if self.op in _LIST_VALUE:
            return self._in_list(actual)
        return _compare(actual, self.op, self.value)

    def _in_list(self, actual: Any) -> bool:
        """in, not_in and any_of by set lookups: the work does not grow with the list."""
        if self.op == "any_of":
            return isinstance(actual, list) and any(
                _is_scalar(item) and (_kind(item), item) in self.members for item in actual
            )
        kind = _kind(actual)
        if kind == "other":
            return False
        found = (kind, actual) in self.members
        # A value of another kind than every listed one is a mismatch: false either way.
        return found if self.op == "in" else kind in self.kinds and not found


@dataclass(frozen=True, slots=True)
class All:
    conditions: tuple[Condition, ...]

    def holds(self, facts: Mapping[str, Any]) -> bool:
        return all(c.holds(facts) for c in self.conditions)


@dataclass(frozen=True, slots=True)
class AnyOf:
    conditions: tuple[Condition, ...]

    def holds(self, facts: Mapping[str, Any]) -> bool:
        return any(c.holds(facts) for c in self.conditions)


@dataclass(frozen=True, slots=True)
class Not:
    condition: Condition

    def holds(self, facts: Mapping[str, Any]) -> bool:
        return not self.condition.holds(facts)


Condition: TypeAlias = Compare | All | AnyOf | Not


def _is_empty(value: Any) -> bool:
    """Absent, null, an empty list or empty text; 0 and false are values, not emptiness."""
    return value is None or (isinstance(value, list | str) and len(value) == 0)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if _is_number(value):
        return "number"
    return "text" if isinstance(value, str) else "other"


def _equal(actual: Any, value: Any) -> bool:
    """Equality within one kind of value: true is not 1, "180" is not 180."""
    return _kind(actual) == _kind(value) and bool(actual == value)


def _compare(actual: Any, op: str, value: Any) -> bool:
    if op == "==":
        return _equal(actual, value)
    if op == "!=":
        return _kind(actual) == _kind(value) and not _equal(actual, value)
    if not _orderable(actual, value):
        return False
    if op == ">":
        return bool(actual > value)
    if op == ">=":
        return bool(actual >= value)
    if op == "<":
        return bool(actual < value)
    return bool(actual <= value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _orderable(actual: Any, value: Any) -> bool:
    """Only numbers with numbers and text with text are ordered."""
    both_text = isinstance(actual, str) and isinstance(value, str)
    return both_text or (_is_number(actual) and _is_number(value))


def parse_condition(raw: Any, path: str = "when") -> Condition:
    """A condition from its JSON form, or ValidationFailed naming the path that is wrong."""
    return _parse(raw, path, 0, [0])


def node_count(condition: Condition) -> int:
    """How many nodes a condition has: the most work one evaluation of it does."""
    if isinstance(condition, Compare):
        return 1
    if isinstance(condition, Not):
        return 1 + node_count(condition.condition)
    return 1 + sum(node_count(c) for c in condition.conditions)


def _parse(raw: Any, path: str, depth: int, nodes: list[int]) -> Condition:
    nodes[0] += 1
    if nodes[0] > MAX_CONDITION_NODES:
        raise ValidationFailed.one(
            path, "limit", f"a condition has at most {MAX_CONDITION_NODES} nodes"
        )
    if depth > MAX_DEPTH:
        raise ValidationFailed.one(path, "depth", f"conditions nest at most {MAX_DEPTH} deep")
    if not isinstance(raw, dict):
        raise ValidationFailed.one(path, "type", "a condition is a JSON object")
    if "field" in raw or "op" in raw:
        return _parse_compare(raw, path)
    if len(raw) != 1:
        raise ValidationFailed.one(path, "shape", "use one of all, any, not, or field/op/value")
    ((key, inner),) = raw.items()
    if key == "not":
        return Not(_parse(inner, f"{path}.not", depth + 1, nodes))
    if key in ("all", "any"):
        if not isinstance(inner, list) or not inner:
            raise ValidationFailed.one(f"{path}.{key}", "type", "a non-empty list of conditions")
        parts = tuple(
            _parse(c, f"{path}.{key}[{i}]", depth + 1, nodes) for i, c in enumerate(inner)
        )
        return All(parts) if key == "all" else AnyOf(parts)
    raise ValidationFailed.one(path, "shape", f"unknown condition {key!r}")


def _parse_compare(raw: dict[str, Any], path: str) -> Compare:
    errors: list[FieldError] = []
    field, op, value = raw.get("field"), raw.get("op"), raw.get("value")
    unknown = sorted(set(raw) - {"field", "op", "value"})
    if unknown:
        errors.append(FieldError(path, "unknown_field", f"unknown keys {unknown}"))
    if not isinstance(field, str) or not field:
        errors.append(FieldError(f"{path}.field", "required", "name a report field"))
    elif len(field) > MAX_TEXT_CHARS:
        errors.append(_too_long(f"{path}.field"))
    if not isinstance(op, str) or op not in _OPS:
        errors.append(FieldError(f"{path}.op", "enum", f"op is one of {sorted(_OPS)}"))
    elif op in _UNARY:
        if "value" in raw:
            errors.append(FieldError(f"{path}.value", "not_applicable", f"{op} takes no value"))
    elif op in _LIST_VALUE:
        if not isinstance(value, list) or not value or not all(_is_scalar(v) for v in value):
            errors.append(FieldError(f"{path}.value", "type", f"{op} needs a list of values"))
        elif len(value) > MAX_LIST_VALUES:
            errors.append(
                FieldError(f"{path}.value", "limit", f"a list has at most {MAX_LIST_VALUES} values")
            )
        elif any(_too_long_text(v) for v in value):
            errors.append(_too_long(f"{path}.value"))
    elif not _is_scalar(value):
        errors.append(FieldError(f"{path}.value", "type", f"{op} needs a number, text or boolean"))
    elif _too_long_text(value):
        errors.append(_too_long(f"{path}.value"))
    if errors:
        raise ValidationFailed(errors)
    assert isinstance(field, str)
    assert isinstance(op, str)
    return Compare(field, op, tuple(value) if isinstance(value, list) else value)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, Scalar)


def _too_long_text(value: Any) -> bool:
    return isinstance(value, str) and len(value) > MAX_TEXT_CHARS


def _too_long(path: str) -> FieldError:
    return FieldError(path, "limit", f"text in a condition has at most {MAX_TEXT_CHARS} characters")
