"""Alert rules: their definitions, validation, storage with versions, and matching."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from safetyreport import audit
from safetyreport.alerts.conditions import Condition, parse_condition
from safetyreport.db.pool import Conn
from safetyreport.errors import AppError, FieldError, NotFound, ValidationFailed, rule_of

Severity = Literal["info", "high", "urgent", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "high": 1, "urgent": 2, "critical": 3}
# The same ranking in SQL, for an alert aliased ``a``: most severe highest.
SEVERITY_RANK_SQL = (
    "(CASE a.severity "
    + " ".join(f"WHEN '{name}' THEN {rank}" for name, rank in SEVERITY_RANK.items())
    + " END)"
)
Kind = Literal["blood_pressure", "dissociation", "misuse_concern"]
RuleId = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]


class Pattern(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """At least ``min_count`` matching reports of one group within ``window_days``."""

    min_count: Annotated[int, Meta(ge=2, le=1000)]
    window_days: Annotated[int, Meta(ge=1, le=366)]


class Definition(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Condition on one report's fields (and, for patterns, on each report counted).
    when: dict[str, Any]
    # Report kinds the rule looks at; empty means every kind.
    kinds: list[Kind] = msgspec.field(default_factory=list)
    pattern: Pattern | None = None
    # New matches attach to the open alert of the same rule and group.
    group_by: Literal["clinic", "patient"] = "patient"
    # Theft and loss: carry the DEA due dates (21 CFR 1301.76(b)).
    dea_deadlines: bool = False


class RuleInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    severity: Severity
    description: Annotated[str, Meta(min_length=1, max_length=4000)]
    definition: Definition
    enabled: bool = True


class RuleCreate(RuleInput, frozen=True, kw_only=True):
    id: RuleId


class RuleView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    version: int
    name: str
    severity: Severity
    description: str
    enabled: bool
    definition: Definition
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule ready to evaluate."""

    id: str
    version: int
    severity: str
    definition: Definition
    condition: Condition

    def applies_to(self, kind: str) -> bool:
        return not self.definition.kinds or kind in self.definition.kinds


def parse_rule_input(raw: Any, *, with_id: bool) -> RuleInput:
    """A validated rule from JSON, or ValidationFailed saying what is wrong."""
    target: type[RuleInput] = RuleCreate if with_id else RuleInput
    try:
        rule = msgspec.convert(raw, target)
    except msgspec.ValidationError as exc:
        message = str(exc)
        raise ValidationFailed(
            [FieldError(_error_path(message), rule_of(message), message)]
        ) from None
    parse_condition(rule.definition.when, "definition.when")
    return rule


def _error_path(message: str) -> str:
    """The dotted path of the field a msgspec message is about (``definition.when``)."""
    path = message.rsplit("at `$.", 1)[1].rstrip("`") if "at `$." in message else ""
    named = _NAMED_FIELD.search(message)  # missing or unknown fields are quoted, not at
    if named is not None:
        path = f"{path}.{named[1]}" if path else named[1]
    return path or "$"


_NAMED_FIELD = re.compile(r"(?:missing required|contains unknown) field `([^`]+)`")
_RULE_COLUMNS = "id, version, name, severity, description, enabled, definition, updated_at"


def _view(row: Any) -> RuleView:
    return RuleView(**{**dict(row), "definition": msgspec.convert(row["definition"], Definition)})


async def enabled_rules(conn: Conn) -> list[Rule]:
    rows = await conn.fetch(
        "SELECT id, version, severity, definition FROM alert_rules WHERE enabled ORDER BY id"
    )
    return [_compile(row) for row in rows]


def _compile(row: Any) -> Rule:
    """A stored rule ready to run; a stored rule that does not parse is a server fault."""
    try:
        definition = msgspec.convert(row["definition"], Definition)
        condition = parse_condition(definition.when)
    except (msgspec.ValidationError, ValidationFailed) as exc:
        raise AppError(
            f"alert rule {row['id']} version {row['version']} is invalid: {exc}"
        ) from exc
    return Rule(
        id=row["id"],
        version=row["version"],
        severity=row["severity"],
        definition=definition,
        condition=condition,
    )


async def list_rules(conn: Conn) -> list[RuleView]:
    rows = await conn.fetch(f"SELECT {_RULE_COLUMNS} FROM alert_rules ORDER BY id")  # noqa: S608
    return [_view(r) for r in rows]


async def get_rule(conn: Conn, rule_id: str) -> RuleView:
    row = await conn.fetchrow(
        f"SELECT {_RULE_COLUMNS} FROM alert_rules WHERE id = $1",  # noqa: S608
        rule_id,
    )
    if row is None:
        raise NotFound(f"no rule {rule_id}")
    return _view(row)


_SAVE_VERSION = """
INSERT INTO alert_rule_versions
    (rule_id, version, name, severity, description, enabled, definition, changed_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""


async def save_rule(
    conn: Conn, rule_id: str, rule: RuleInput, actor: audit.Actor, *, create: bool
) -> RuleView:
    """Create a rule (version 1) or store a new version of it; audited. Caller's transaction."""
    definition = msgspec.to_builtins(rule.definition)
    if create:
        version = 1
        inserted = await conn.fetchval(
            "INSERT INTO alert_rules (id, version, name, severity, description, enabled,"
            " definition) VALUES ($1, 1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (id) DO NOTHING RETURNING id",
            rule_id,
            rule.name,
            rule.severity,
            rule.description,
            rule.enabled,
            definition,
        )
        if inserted is None:
            raise ValidationFailed.one("id", "unique", f"rule {rule_id} already exists")
    else:
        version = await conn.fetchval(
            "UPDATE alert_rules SET version = version + 1, name = $2, severity = $3,"
            " description = $4, enabled = $5, definition = $6, updated_at = now()"
            " WHERE id = $1 RETURNING version",
            rule_id,
            rule.name,
            rule.severity,
            rule.description,
            rule.enabled,
            definition,
        )
        if version is None:
            raise NotFound(f"no rule {rule_id}")
    await conn.execute(
        _SAVE_VERSION,
        rule_id,
        version,
        rule.name,
        rule.severity,
        rule.description,
        rule.enabled,
        definition,
        actor.name,
    )
    await audit.append(
        conn,
        audit.AuditEvent(
            actor=actor,
            action="rule.created" if create else "rule.updated",
            object_type="alert_rule",
            object_id=rule_id,
            details={"version": version, "rule": msgspec.to_builtins(rule)},
        ),
    )
    return await get_rule(conn, rule_id)


async def disable_rule(conn: Conn, rule_id: str, actor: audit.Actor) -> RuleView:
    """A new version of the rule with enabled false; the caller owns the transaction.

    The rule is locked first, so a concurrent update is kept, not overwritten.
    """
    locked = await conn.fetchval("SELECT 1 FROM alert_rules WHERE id = $1 FOR UPDATE", rule_id)
    if locked is None:
        raise NotFound(f"no rule {rule_id}")
    current = await get_rule(conn, rule_id)
    disabled = RuleInput(
        name=current.name,
        severity=current.severity,
        description=current.description,
        definition=current.definition,
        enabled=False,
    )
    return await save_rule(conn, rule_id, disabled, actor, create=False)
