"""Alert rules: their definitions, validation, scope, storage with versions, and matching.

A rule applies to the clinics listed on it, or to every clinic (a network rule, listed
on none). A clinic override is a rule of its own that names the network rule it
replaces at its clinics: there the override is in force and the network rule is not.
Who may change which rule, and the two-person approval of protected rules, are in
``rule_changes``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from safetyreport import audit
from safetyreport.alerts.conditions import Condition, node_count, parse_condition
from safetyreport.alerts.limits import (
    MAX_ENABLED_PATTERN_RULES_PER_CLINIC,
    MAX_ENABLED_RULES_PER_CLINIC,
    MAX_PATTERN_WINDOW_DAYS,
    MAX_RULE_BYTES,
    MAX_RULE_CLINICS,
)
from safetyreport.auth.users import Principal
from safetyreport.caller import Caller
from safetyreport.db.pool import Conn
from safetyreport.errors import AppError, FieldError, NotFound, ValidationFailed, rule_of
from safetyreport.reports.types import ReportKind
from safetyreport.settings import AlertSettings

Severity = Literal["info", "high", "urgent", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "high": 1, "urgent": 2, "critical": 3}
# The same ranking in SQL, for an alert aliased ``a``: most severe highest.
SEVERITY_RANK_SQL = (
    "(CASE a.severity "
    + " ".join(f"WHEN '{name}' THEN {rank}" for name, rank in SEVERITY_RANK.items())
    + " END)"
)
RuleId = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
ClinicCode = Annotated[str, Meta(min_length=1, max_length=32)]
# Path segments under /api/v1/rules that are routes, not rule ids.
RESERVED_IDS = frozenset({"changes"})


class Pattern(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """At least ``min_count`` matching reports of one group within ``window_days``, or
    with ``count`` "patients", reports of at least ``min_count`` distinct patients."""

    min_count: Annotated[int, Meta(ge=2, le=1000)]
    window_days: Annotated[int, Meta(ge=1, le=MAX_PATTERN_WINDOW_DAYS)]
    count: Literal["reports", "patients"] = "reports"


class Definition(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Condition on one report's fields (and, for patterns, on each report counted).
    when: dict[str, Any]
    # Report kinds the rule looks at; empty means every kind.
    kinds: list[ReportKind] = msgspec.field(default_factory=list)
    pattern: Pattern | None = None
    # New matches attach to the open alert of the same rule and group; "report": every
    # report that matches is an alert of its own (a theft: its own DEA clocks).
    group_by: Literal["clinic", "patient", "report"] = "patient"
    # Theft and loss: carry the DEA due dates (21 CFR 1301.76(b)).
    dea_deadlines: bool = False
    # A hold (the pre-dose hold): dosing waits until a nurse records an override with a
    # reason on the alert. A flag rather than a rule id, so that a clinic's override of
    # the hold, or a hold of its own, is a hold too.
    hold: bool = False


Guidance = Annotated[str, Meta(min_length=1, max_length=1000)]
AckMinutes = Annotated[int, Meta(ge=1, le=1440)]


class RuleInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    severity: Severity
    description: Annotated[str, Meta(min_length=1, max_length=4000)]
    # What to do now, in one or two sentences: shown at the chair with the alert.
    guidance: Guidance
    definition: Definition
    enabled: bool = True
    # Minutes to acknowledge an alert of this rule; absent: the severity's setting.
    ack_minutes: AckMinutes | None = None


class RuleCreate(RuleInput, frozen=True, kw_only=True):
    id: RuleId
    # The clinics (codes) the rule applies to; absent or null: every clinic, a network
    # rule, which only a user granted every clinic may create.
    clinics: Annotated[list[ClinicCode], Meta(min_length=1, max_length=MAX_RULE_CLINICS)] | None = (
        None
    )
    # A clinic override: the network rule this one replaces at its clinics.
    overrides: RuleId | None = None


class RuleView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    version: int
    name: str
    severity: Severity
    description: str
    guidance: str
    # Minutes to acknowledge; null: the severity's setting (SAFETYREPORT_ACK_MINUTES_*).
    ack_minutes: int | None
    enabled: bool
    definition: Definition
    updated_at: datetime
    # The clinics (of yours) the rule applies to; null for a network rule.
    clinics: list[str] | None
    # The network rule this override replaces at its clinics.
    overrides: str | None
    # Cannot be disabled or loosened by an override; changes need a second approval.
    protected: bool


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule ready to evaluate."""

    id: str
    version: int
    severity: str
    definition: Definition
    condition: Condition
    enabled: bool = True
    network: bool = True
    overrides: str | None = None
    protected: bool = False
    nodes: int = 1
    ack_minutes: int | None = None

    def applies_to(self, kind: str) -> bool:
        return not self.definition.kinds or kind in self.definition.kinds


def ack_window(ack_minutes: int | None, severity: str, settings: AlertSettings) -> timedelta | None:
    """How long an alert may wait for an acknowledgement: the rule's minutes when it sets
    them, else the severity's setting (None: it never escalates)."""
    if ack_minutes is not None:
        return timedelta(minutes=ack_minutes)
    return settings.ack_deadlines.get(severity)


def parse_rule_input(raw: Any, *, with_id: bool) -> RuleInput:
    """A validated rule from JSON, or ValidationFailed saying what is wrong."""
    target: type[RuleInput] = RuleCreate if with_id else RuleInput
    size = len(msgspec.json.encode(raw))
    if size > MAX_RULE_BYTES:
        raise ValidationFailed.one(
            "$", "limit", f"a rule is at most {MAX_RULE_BYTES} bytes of JSON (this is {size})"
        )
    minutes = raw.get("ack_minutes") if isinstance(raw, dict) else None
    if isinstance(minutes, float) and minutes.is_integer():
        # 5.0 is the integer 5 in JSON (and in JSON Schema), though msgspec reads a float.
        raw = {**raw, "ack_minutes": int(minutes)}
    try:
        rule = msgspec.convert(raw, target)
    except msgspec.ValidationError as exc:
        message = str(exc)
        raise ValidationFailed(
            [FieldError(_error_path(message), rule_of(message), message)]
        ) from None
    parse_condition(rule.definition.when, "definition.when")
    if rule.definition.group_by == "report" and rule.definition.pattern is not None:
        raise ValidationFailed.one(
            "definition.group_by",
            "pattern",
            "a pattern counts the reports of a clinic or a patient; group_by report has one",
        )
    if isinstance(rule, RuleCreate) and rule.id in RESERVED_IDS:
        raise ValidationFailed.one("id", "reserved", f"{rule.id} is not a rule id")
    return rule


def _error_path(message: str) -> str:
    """The dotted path of the field a msgspec message is about (``definition.when``)."""
    path = message.rsplit("at `$.", 1)[1].rstrip("`") if "at `$." in message else ""
    named = _NAMED_FIELD.search(message)  # missing or unknown fields are quoted, not at
    if named is not None:
        path = f"{path}.{named[1]}" if path else named[1]
    return path or "$"


_NAMED_FIELD = re.compile(r"(?:missing required|contains unknown) field `([^`]+)`")


def compile_rule(row: Any) -> Rule:
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
        enabled=row.get("enabled", True),
        network=row.get("network", True),
        overrides=row.get("overrides_rule_id"),
        protected=row.get("protected", False),
        nodes=node_count(condition),
        ack_minutes=row.get("ack_minutes"),
    )


# --- protected rules: what an override may not do --------------------------------------

_canonical = msgspec.json.Encoder(order="sorted")


def loosening(
    network: Rule | StoredRule, override: RuleInput, *, field_prefix: str = ""
) -> list[FieldError]:
    """How an override of a protected network rule would fire less than the rule; [] if not.

    Not looser means: enabled; severity at least the rule's; a condition that is the
    rule's, or ``{"any": [<the rule's condition>, ...]}`` (it may only add ways to fire);
    the rule's kinds or more; the same pattern; the same grouping, or one alert per report
    (never fewer alerts than the rule); DEA deadlines kept.
    """
    base = network.definition
    mine = override.definition
    name = network.id
    problems: list[tuple[str, str]] = []
    if not override.enabled:
        problems.append(("enabled", "an override of it stays enabled"))
    if SEVERITY_RANK[override.severity] < SEVERITY_RANK[network.severity]:
        problems.append(("severity", f"severity stays {network.severity} or above"))
    if not _adds_ways_to_fire(base.when, mine.when):
        problems.append(
            ("definition.when", "the condition is the rule's, or {'any': [the rule's, ...]}")
        )
    if base.kinds and mine.kinds and not set(base.kinds) <= set(mine.kinds):
        problems.append(("definition.kinds", "the kinds include the rule's"))
    if not base.kinds and mine.kinds:
        problems.append(("definition.kinds", "the rule looks at every kind, so must this"))
    if base.pattern != mine.pattern or mine.group_by not in (base.group_by, "report"):
        problems.append(
            ("definition.pattern", "pattern and group_by stay the rule's (or group_by report)")
        )
    if base.dea_deadlines and not mine.dea_deadlines:
        problems.append(("definition.dea_deadlines", "DEA deadlines stay on"))
    if base.hold and not mine.hold:
        problems.append(("definition.hold", "the hold stays on"))
    if network.ack_minutes is not None and (
        override.ack_minutes is None or override.ack_minutes > network.ack_minutes
    ):
        problems.append(
            ("ack_minutes", f"acknowledgement within {network.ack_minutes} minutes or sooner")
        )
    return [
        FieldError(
            f"{field_prefix}{field}",
            "protected",
            f"{name} is a protected rule and may not be disabled or loosened: {message}",
        )
        for field, message in problems
    ]


def _adds_ways_to_fire(base_when: dict[str, Any], when: dict[str, Any]) -> bool:
    # Compared as canonical JSON: true is not 1, as in the condition language.
    base = _canonical.encode(base_when)
    if _canonical.encode(when) == base:
        return True
    branches = when.get("any") if len(when) == 1 else None
    return (
        isinstance(branches, list)
        and bool(branches)
        and isinstance(branches[0], dict)
        and _canonical.encode(branches[0]) == base
    )


# --- the rules in force at a clinic ----------------------------------------------------


def in_force(candidates: Iterable[Rule]) -> list[Rule]:
    """The enabled rules in force at one clinic, from its candidates.

    Candidates are the enabled network rules and every rule listing the clinic. An
    override replaces its network rule there, enabled or not (a disabled override turns
    the network rule off for its clinics), unless the network rule is protected and the
    override would fire less: then the network rule stays in force.
    """
    rules = list(candidates)
    network = {r.id: r for r in rules if r.network}
    replaced: set[str] = set()
    chosen: list[Rule] = []
    for rule in rules:
        if rule.network:
            continue
        base = network.get(rule.overrides) if rule.overrides else None
        if base is not None:
            if base.protected and _looser_cached(base, rule):
                continue
            replaced.add(base.id)
        if rule.enabled:
            chosen.append(rule)
    chosen.extend(r for r in network.values() if r.id not in replaced and r.enabled)
    return sorted(chosen, key=lambda r: r.id)


_looser: dict[tuple[str, int, str, int], bool] = {}


def _looser_cached(base: Rule, override: Rule) -> bool:
    key = (base.id, base.version, override.id, override.version)
    found = _looser.get(key)
    if found is None:
        if len(_looser) >= 1000:
            _looser.clear()
        as_input = RuleInput(
            name="-",
            severity=override.severity,  # type: ignore[arg-type]
            description="-",
            guidance="-",
            definition=override.definition,
            enabled=override.enabled,
            ack_minutes=override.ack_minutes,
        )
        found = _looser[key] = bool(loosening(base, as_input))
    return found


# Network rules (enabled) and every rule that lists the clinic ($1); with $1 NULL (no
# clinic at all yet), the network rules alone.
# The columns of a candidate rule (see in_force), in this order.
CANDIDATE_COLUMNS = (
    "id",
    "version",
    "severity",
    "enabled",
    "network",
    "overrides_rule_id",
    "protected",
    "ack_minutes",
    "definition",
)


def candidates_sql(clinic_param: str) -> str:
    """The rules that may be in force at the clinic ``clinic_param`` (a parameter such as
    ``$1``), ordered by id; also a CTE of a larger statement (the report's insert)."""
    return f"""
SELECT r.id, r.version, r.severity, r.enabled, r.clinic_ids IS NULL AS network,
       r.overrides_rule_id, r.protected OR coalesce(b.protected, false) AS protected,
       r.ack_minutes, r.definition::text AS definition
FROM alert_rules r LEFT JOIN alert_rules b ON b.id = r.overrides_rule_id
WHERE (r.clinic_ids IS NULL AND r.enabled) OR r.clinic_ids @> ARRAY[{clinic_param}::bigint]
ORDER BY r.id
"""  # noqa: S608 (a parameter's name, no input)


CANDIDATES_SQL = candidates_sql("$1")


async def check_enabled_limits(conn: Conn, clinic_ids: list[int] | None) -> None:
    """422 when a clinic has more enabled rules in force than the limits allow.

    Run after a change is written, in its transaction: an error rolls it back.
    ``clinic_ids`` None: every clinic (a network rule changed).
    """
    targets: list[int | None] = list(clinic_ids) if clinic_ids is not None else []
    if clinic_ids is None:
        targets = [r["id"] for r in await conn.fetch("SELECT id FROM clinics ORDER BY id")]
        targets = targets or [None]
    for clinic_id in targets:
        rows = await conn.fetch(CANDIDATES_SQL, clinic_id)
        rules = in_force(_light_rule(row) for row in rows)
        patterns = sum(1 for r in rules if r.definition.pattern is not None)
        where = await _clinic_label(conn, clinic_id)
        if len(rules) > MAX_ENABLED_RULES_PER_CLINIC:
            raise ValidationFailed.one(
                "enabled",
                "limit",
                f"{where} would have {len(rules)} enabled rules in force; "
                f"at most {MAX_ENABLED_RULES_PER_CLINIC}",
            )
        if patterns > MAX_ENABLED_PATTERN_RULES_PER_CLINIC:
            raise ValidationFailed.one(
                "enabled",
                "limit",
                f"{where} would have {patterns} enabled pattern rules in force; "
                f"at most {MAX_ENABLED_PATTERN_RULES_PER_CLINIC}",
            )


def _light_rule(row: Any) -> Rule:
    return compile_rule({**dict(row), "definition": msgspec.json.decode(row["definition"])})


async def _clinic_label(conn: Conn, clinic_id: int | None) -> str:
    if clinic_id is None:
        return "every clinic"
    code = await conn.fetchval("SELECT code FROM clinics WHERE id = $1", clinic_id)
    return f"clinic {code}"


# --- reading -------------------------------------------------------------------------


def visible_clinics(codes: list[str] | None, principal: Principal) -> list[str] | None:
    """The clinics of a rule's scope the user may know of (None: every clinic)."""
    if codes is None or principal.all_clinics:
        return codes
    return [c for c in codes if c in principal.clinic_ids]


@dataclass(frozen=True, slots=True)
class StoredRule:
    """A rule's current row, with its scope."""

    id: str
    version: int
    name: str
    severity: Severity
    description: str
    guidance: str
    ack_minutes: int | None
    enabled: bool
    definition: Definition
    updated_at: datetime
    clinic_ids: list[int] | None
    clinic_codes: list[str] | None
    overrides: str | None
    protected: bool

    def input(self, **changes: Any) -> RuleInput:
        fields = {
            "name": self.name,
            "severity": self.severity,
            "description": self.description,
            "guidance": self.guidance,
            "definition": self.definition,
            "enabled": self.enabled,
            "ack_minutes": self.ack_minutes,
        }
        return RuleInput(**{**fields, **changes})

    def view(self, principal: Principal | None) -> RuleView:
        clinics = (
            self.clinic_codes
            if principal is None
            else visible_clinics(self.clinic_codes, principal)
        )
        return RuleView(
            id=self.id,
            version=self.version,
            name=self.name,
            severity=self.severity,
            description=self.description,
            guidance=self.guidance,
            ack_minutes=self.ack_minutes,
            enabled=self.enabled,
            definition=self.definition,
            updated_at=self.updated_at,
            clinics=clinics,
            overrides=self.overrides,
            protected=self.protected,
        )


# A rule is visible to a user when it is a network rule or lists one of her clinics ($1;
# NULL for users granted every clinic). Other clinics' rules do not exist for her.
_SELECT_RULES = """
SELECT r.id, r.version, r.name, r.severity, r.description, r.guidance, r.ack_minutes,
       r.enabled, r.definition, r.updated_at, r.clinic_ids, r.overrides_rule_id,
       r.protected OR coalesce(b.protected, false) AS protected,
       CASE WHEN r.clinic_ids IS NOT NULL THEN
           ARRAY(SELECT c.code FROM clinics c WHERE c.id = ANY(r.clinic_ids) ORDER BY c.code)
       END AS clinic_codes
FROM alert_rules r LEFT JOIN alert_rules b ON b.id = r.overrides_rule_id
WHERE ($1::bigint[] IS NULL OR r.clinic_ids IS NULL OR r.clinic_ids && $1::bigint[])
"""


def _stored(row: Any) -> StoredRule:
    return StoredRule(
        id=row["id"],
        version=row["version"],
        name=row["name"],
        severity=row["severity"],
        description=row["description"],
        guidance=row["guidance"],
        ack_minutes=row["ack_minutes"],
        enabled=row["enabled"],
        definition=msgspec.convert(row["definition"], Definition),
        updated_at=row["updated_at"],
        clinic_ids=row["clinic_ids"],
        clinic_codes=row["clinic_codes"],
        overrides=row["overrides_rule_id"],
        protected=row["protected"],
    )


async def list_rules(conn: Conn, principal: Principal) -> list[RuleView]:
    rows = await conn.fetch(f"{_SELECT_RULES} ORDER BY r.id", principal.scope())
    return [_stored(r).view(principal) for r in rows]


async def find_rule(
    conn: Conn, principal: Principal | None, rule_id: str, *, lock: bool = False
) -> StoredRule:
    """The rule if it exists and the principal (None: the system) may see it; else 404."""
    scope = principal.scope() if principal is not None else None
    row = await conn.fetchrow(
        f"{_SELECT_RULES} AND r.id = $2{' FOR UPDATE OF r' if lock else ''}",
        scope,
        rule_id,
    )
    if row is None:
        raise NotFound(f"no rule {rule_id}")
    return _stored(row)


async def get_rule(conn: Conn, principal: Principal, rule_id: str) -> RuleView:
    return (await find_rule(conn, principal, rule_id)).view(principal)


# --- writing -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a rule applies: clinic ids (None: every clinic) and what it overrides."""

    clinic_ids: list[int] | None
    overrides: str | None = None


@dataclass(frozen=True, slots=True)
class Approval:
    """Who proposed a change that needed a second user, and who approved it."""

    change_id: int
    proposed_by: str
    approved_by: str


_SAVE_VERSION = """
INSERT INTO alert_rule_versions
    (rule_id, version, name, severity, description, enabled, definition, changed_by,
     clinic_ids, overrides_rule_id, protected, approved_by, change_id, audited_at,
     guidance, ack_minutes)
SELECT id, version, name, severity, description, enabled, definition, $2,
       clinic_ids, overrides_rule_id, protected, $3, $4, now(), guidance, ack_minutes
FROM alert_rules WHERE id = $1
"""


async def save_rule(
    conn: Conn,
    caller: Caller,
    rule_id: str,
    rule: RuleInput,
    *,
    scope: Scope,
    create: bool,
    approval: Approval | None = None,
) -> StoredRule:
    """Create a rule (version 1) or store a new version of it; audited in the chain of
    every clinic it applies to. Authorization is the caller's; caller's transaction."""
    definition = msgspec.to_builtins(rule.definition)
    if create:
        inserted = await conn.fetchval(
            "INSERT INTO alert_rules (id, version, name, severity, description, enabled,"
            " definition, clinic_ids, overrides_rule_id, guidance, ack_minutes)"
            " VALUES ($1, 1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            " ON CONFLICT (id) DO NOTHING RETURNING id",
            rule_id,
            rule.name,
            rule.severity,
            rule.description,
            rule.enabled,
            definition,
            scope.clinic_ids,
            scope.overrides,
            rule.guidance,
            rule.ack_minutes,
        )
        if inserted is None:
            raise ValidationFailed.one("id", "unique", f"rule {rule_id} already exists")
    else:
        updated = await conn.fetchval(
            "UPDATE alert_rules SET version = version + 1, name = $2, severity = $3,"
            " description = $4, enabled = $5, definition = $6, guidance = $7,"
            " ack_minutes = $8, updated_at = now()"
            " WHERE id = $1 RETURNING version",
            rule_id,
            rule.name,
            rule.severity,
            rule.description,
            rule.enabled,
            definition,
            rule.guidance,
            rule.ack_minutes,
        )
        if updated is None:
            raise NotFound(f"no rule {rule_id}")
    changed_by = approval.proposed_by if approval else caller.principal.username
    await conn.execute(
        _SAVE_VERSION,
        rule_id,
        changed_by,
        approval.approved_by if approval else None,
        approval.change_id if approval else None,
    )
    saved = await find_rule(conn, None, rule_id)
    details: dict[str, Any] = {
        "version": saved.version,
        "rule": msgspec.to_builtins(rule),
        "clinics": saved.clinic_codes,
        "overrides": saved.overrides,
    }
    if approval is not None:
        details.update(
            change_id=approval.change_id,
            proposed_by=approval.proposed_by,
            approved_by=approval.approved_by,
        )
    action = "rule.created" if create else "rule.updated"
    await audit_rule_event(conn, caller, action, rule_id, details, saved.clinic_ids)
    return saved


async def audit_rule_event(
    conn: Conn,
    caller: Caller,
    action: str,
    rule_id: str,
    details: dict[str, Any],
    clinic_ids: list[int] | None,
) -> None:
    """Record the caller's ``action`` on a rule in the chain of every clinic it applies to.

    A network rule (``clinic_ids`` None) affects every clinic: each clinic's chain and the
    global chain. Caller's transaction.
    """
    if clinic_ids is None:
        codes = [r["code"] for r in await conn.fetch("SELECT code FROM clinics")]
        targets: list[str | None] = [None, *codes]
    else:
        rows = await conn.fetch("SELECT code FROM clinics WHERE id = ANY($1::bigint[])", clinic_ids)
        targets = [r["code"] for r in rows]
    event = caller.event(action, object_type="alert_rule", object_id=rule_id, details=details)
    await audit.append_to_clinics(conn, event, targets)
