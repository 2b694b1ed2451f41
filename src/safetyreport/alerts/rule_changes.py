"""Changing alert rules: who may change which rule, and the two-person approval of
protected rules.

- A network rule (every clinic) is created and changed only by a user granted every
  clinic. A clinic adjusts it for her clinics with an override.
- A clinic rule or override is changed only by a user who belongs to every clinic it
  lists. Rules of clinics she does not belong to do not exist for her (404).
- A protected rule (and an override of one) cannot be disabled or loosened by an
  override, and a change to it is only proposed (202): it takes effect when a second
  user with the same rights approves it. The proposer cannot approve her own change.

Rule writes take one transaction-level advisory lock, so limits are checked against
what the change will really join, and two writers never interleave.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import msgspec

from safetyreport.alerts import rules
from safetyreport.alerts.rules import RuleCreate, RuleInput, Scope, StoredRule
from safetyreport.auth.users import Principal
from safetyreport.caller import Caller
from safetyreport.db.pool import Conn
from safetyreport.errors import Conflict, Forbidden, NotFound, ValidationFailed

RULE_WRITE_LOCK_KEY = 7_201_604_312
Action = Literal["create", "update", "disable"]
Status = Literal["pending", "approved", "rejected"]


class ChangeView(msgspec.Struct, frozen=True, kw_only=True):
    """A change to a protected rule, waiting for (or past) a second user's decision."""

    id: int
    rule_id: str
    action: Action
    base_version: int | None
    clinics: list[str] | None
    overrides: str | None
    proposal: RuleInput
    status: Status
    proposed_by: str
    proposed_at: datetime
    decided_by: str | None
    decided_at: datetime | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a write did: the rule as saved, or the change now waiting for approval."""

    rule: rules.StoredRule | None = None
    change: ChangeView | None = None


async def _lock(conn: Conn) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", RULE_WRITE_LOCK_KEY)


def _own_clinic_ids(principal: Principal) -> set[int]:
    return set(principal.clinic_ids.values())


def check_may_change(principal: Principal, clinic_ids: list[int] | None, rule_id: str) -> None:
    """403 unless the principal may change a rule of this scope (she can already see it)."""
    if clinic_ids is None:
        if not principal.all_clinics:
            raise Forbidden(
                f"{rule_id} is a network rule: only a user granted every clinic may change "
                "it; adjust it for your clinics with an override"
            )
    elif not principal.all_clinics and not set(clinic_ids) <= _own_clinic_ids(principal):
        raise Forbidden(f"{rule_id} also applies to clinics you do not belong to")


def _scope_of(principal: Principal, rule: RuleCreate) -> list[int] | None:
    """The clinic ids a new rule names; 422 for a clinic the user does not belong to
    (indistinguishable from one that does not exist)."""
    if rule.clinics is None:
        if rule.overrides is not None:
            raise ValidationFailed.one("clinics", "required", "an override names its clinics")
        return None
    ids: list[int] = []
    for i, code in enumerate(rule.clinics):
        clinic_id = principal.clinic_ids.get(code)
        if clinic_id is None:
            raise ValidationFailed.one(f"clinics[{i}]", "unknown", f"no clinic {code}")
        if clinic_id not in ids:
            ids.append(clinic_id)
    return sorted(ids)


async def _network_rule(conn: Conn, principal: Principal, rule_id: str) -> StoredRule:
    try:
        base = await rules.find_rule(conn, principal, rule_id, lock=True)
    except NotFound:
        base = None
    if base is None or base.clinic_ids is not None:
        raise ValidationFailed.one("overrides", "unknown", f"no network rule {rule_id}")
    return base


async def _validate(conn: Conn, principal: Principal | None, scope: Scope, rule: RuleInput) -> bool:
    """Check an override against the protected rule it replaces; whether it is protected."""
    if scope.overrides is None:
        return False
    base = await rules.find_rule(conn, principal, scope.overrides, lock=True)
    if not base.protected:
        return False
    problems = rules.loosening(base, rule)
    if problems:
        raise ValidationFailed(problems)
    return True


async def create(conn: Conn, caller: Caller, rule: RuleCreate) -> Outcome:
    """Create a rule, or propose it when it overrides a protected rule. Caller's
    transaction."""
    principal = caller.principal
    await _lock(conn)
    clinic_ids = _scope_of(principal, rule)
    check_may_change(principal, clinic_ids, rule.id)
    if rule.overrides is not None:
        await _network_rule(conn, principal, rule.overrides)
        await _check_one_override(conn, rule.overrides, clinic_ids or [])
    scope = Scope(clinic_ids, rule.overrides)
    as_input = _input_of(rule)
    protected = await _validate(conn, principal, scope, as_input)
    if await conn.fetchval("SELECT 1 FROM alert_rules WHERE id = $1", rule.id):
        raise ValidationFailed.one("id", "unique", f"rule {rule.id} already exists")
    if protected:
        return Outcome(
            change=await _propose(conn, caller, "create", rule.id, None, scope, as_input)
        )
    saved = await rules.save_rule(conn, caller, rule.id, as_input, scope=scope, create=True)
    await rules.check_enabled_limits(conn, clinic_ids)
    return Outcome(rule=saved)


def _input_of(rule: RuleCreate) -> RuleInput:
    return RuleInput(
        name=rule.name,
        severity=rule.severity,
        description=rule.description,
        guidance=rule.guidance,
        definition=rule.definition,
        enabled=rule.enabled,
        ack_minutes=rule.ack_minutes,
    )


async def _check_one_override(conn: Conn, network_id: str, clinic_ids: list[int]) -> None:
    existing = await conn.fetchrow(
        "SELECT id FROM alert_rules WHERE overrides_rule_id = $1 AND clinic_ids && $2::bigint[]"
        " LIMIT 1",
        network_id,
        clinic_ids,
    )
    if existing is not None:
        raise ValidationFailed.one(
            "overrides",
            "unique",
            f"{network_id} already has an override at one of these clinics ({existing['id']}):"
            " change that one",
        )


async def update(conn: Conn, caller: Caller, rule_id: str, rule: RuleInput | None) -> Outcome:
    """Replace a rule's definition (None: disable it, as it is), or propose that for a
    protected rule. Caller's transaction; the rule is locked first, so a concurrent update
    is kept, not overwritten."""
    principal = caller.principal
    action: Action = "update" if rule is not None else "disable"
    await _lock(conn)
    current = await rules.find_rule(conn, principal, rule_id, lock=True)
    check_may_change(principal, current.clinic_ids, rule_id)
    if rule is None:
        rule = current.input(enabled=False)
    scope = Scope(current.clinic_ids, current.overrides)
    await _validate(conn, principal, scope, rule)
    if current.protected:
        change = await _propose(conn, caller, action, rule_id, current.version, scope, rule)
        return Outcome(change=change)
    saved = await rules.save_rule(conn, caller, rule_id, rule, scope=scope, create=False)
    await rules.check_enabled_limits(conn, current.clinic_ids)
    return Outcome(rule=saved)


# --- pending changes -----------------------------------------------------------------

_CHANGE_COLUMNS = """
SELECT ch.id, ch.rule_id, ch.action, ch.base_version, ch.clinic_ids, ch.overrides_rule_id,
       ch.proposal, ch.status, ch.proposed_by, ch.proposed_by_name, ch.proposed_at,
       ch.decided_by_name, ch.decided_at,
       CASE WHEN ch.clinic_ids IS NOT NULL THEN
           ARRAY(SELECT c.code FROM clinics c WHERE c.id = ANY(ch.clinic_ids) ORDER BY c.code)
       END AS clinic_codes
FROM alert_rule_changes ch
WHERE ($1::bigint[] IS NULL OR ch.clinic_ids IS NULL OR ch.clinic_ids && $1::bigint[])
"""


def _change_view(row: Any, principal: Principal) -> ChangeView:
    clinics = rules.visible_clinics(row["clinic_codes"], principal)
    return ChangeView(
        id=row["id"],
        rule_id=row["rule_id"],
        action=row["action"],
        base_version=row["base_version"],
        clinics=clinics,
        overrides=row["overrides_rule_id"],
        proposal=msgspec.convert(row["proposal"], RuleInput),
        status=row["status"],
        proposed_by=row["proposed_by_name"],
        proposed_at=row["proposed_at"],
        decided_by=row["decided_by_name"],
        decided_at=row["decided_at"],
    )


async def _propose(
    conn: Conn,
    caller: Caller,
    action: Action,
    rule_id: str,
    base_version: int | None,
    scope: Scope,
    rule: RuleInput,
) -> ChangeView:
    change_id: int = await conn.fetchval(
        "INSERT INTO alert_rule_changes (rule_id, action, base_version, clinic_ids,"
        " overrides_rule_id, proposal, proposed_by, proposed_by_name)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        rule_id,
        action,
        base_version,
        scope.clinic_ids,
        scope.overrides,
        msgspec.to_builtins(rule),
        caller.principal.id,
        caller.principal.username,
    )
    details = {
        "change_id": change_id,
        "change": action,
        "base_version": base_version,
        "overrides": scope.overrides,
        "rule": msgspec.to_builtins(rule),
    }
    await rules.audit_rule_event(
        conn, caller, "rule.change_proposed", rule_id, details, scope.clinic_ids
    )
    return await get_change(conn, caller.principal, change_id)


async def list_changes(conn: Conn, principal: Principal, status: Status | None) -> list[ChangeView]:
    rows = await conn.fetch(
        f"{_CHANGE_COLUMNS} AND ($2::text IS NULL OR ch.status = $2) ORDER BY ch.id",
        principal.scope(),
        status,
    )
    return [_change_view(r, principal) for r in rows]


async def get_change(
    conn: Conn, principal: Principal, change_id: int, *, lock: bool = False
) -> ChangeView:
    row = await _change_row(conn, principal, change_id, lock=lock)
    return _change_view(row, principal)


async def _change_row(conn: Conn, principal: Principal, change_id: int, *, lock: bool) -> Any:
    if not 0 < change_id < 2**63:  # beyond bigint: no such change (not a database error)
        raise NotFound(f"no rule change {change_id}")
    row = await conn.fetchrow(
        f"{_CHANGE_COLUMNS} AND ch.id = $2{' FOR UPDATE OF ch' if lock else ''}",
        principal.scope(),
        change_id,
    )
    if row is None:
        raise NotFound(f"no rule change {change_id}")
    return row


async def _pending_for_decision(conn: Conn, principal: Principal, change_id: int) -> Any:
    row = await _change_row(conn, principal, change_id, lock=True)
    check_may_change(principal, row["clinic_ids"], row["rule_id"])
    if row["status"] != "pending":
        raise Conflict(f"rule change {change_id} is already {row['status']}")
    return row


async def approve(conn: Conn, caller: Caller, change_id: int) -> StoredRule:
    """Apply a pending change, as a second user with the same rights. Caller's transaction."""
    principal = caller.principal
    await _lock(conn)
    row = await _pending_for_decision(conn, principal, change_id)
    if row["proposed_by"] == principal.id:
        raise Forbidden("a change to a protected rule needs a second user's approval")
    rule = msgspec.convert(row["proposal"], RuleInput)
    scope = Scope(row["clinic_ids"], row["overrides_rule_id"])
    create = row["action"] == "create"
    if not create:
        current = await rules.find_rule(conn, principal, row["rule_id"], lock=True)
        if current.version != row["base_version"]:
            raise Conflict(
                f"{row['rule_id']} changed since this was proposed (version "
                f"{row['base_version']}, now {current.version}): reject it and propose again"
            )
    elif scope.overrides is not None:
        await _check_one_override(conn, scope.overrides, scope.clinic_ids or [])
    await _validate(conn, principal, scope, rule)
    approval = rules.Approval(change_id, row["proposed_by_name"], principal.username)
    saved = await rules.save_rule(
        conn, caller, row["rule_id"], rule, scope=scope, create=create, approval=approval
    )
    await rules.check_enabled_limits(conn, scope.clinic_ids)
    await _decide(conn, principal, change_id, "approved")
    return saved


async def reject(conn: Conn, caller: Caller, change_id: int) -> ChangeView:
    """Close a pending change without applying it (the proposer may withdraw her own).
    Caller's transaction."""
    principal = caller.principal
    row = await _pending_for_decision(conn, principal, change_id)
    await _decide(conn, principal, change_id, "rejected")
    details = {"change_id": change_id, "proposed_by": row["proposed_by_name"]}
    await rules.audit_rule_event(
        conn, caller, "rule.change_rejected", row["rule_id"], details, row["clinic_ids"]
    )
    return await get_change(conn, principal, change_id)


async def _decide(conn: Conn, principal: Principal, change_id: int, status: Status) -> None:
    await conn.execute(
        "UPDATE alert_rule_changes SET status = $2, decided_by = $3, decided_by_name = $4,"
        " decided_at = now() WHERE id = $1",
        change_id,
        status,
        principal.id,
        principal.username,
    )
