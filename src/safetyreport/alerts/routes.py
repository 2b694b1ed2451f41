"""HTTP routes for the alert queue and the alert rules."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter, SkipValidation
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED
from msgspec import Meta

from safetyreport.alerts import queue, rules
from safetyreport.auth.http import ROLES_OPT, principal_of, require_roles
from safetyreport.db.pool import Conn
from safetyreport.state import app_state, client_address

ACTORS = ("safety_officer", "admin")
READERS = ("safety_officer", "admin", "auditor")
Reason = Annotated[str, Meta(min_length=1, max_length=2000)]


class Acknowledge(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # The revision you saw; a different current revision answers 409.
    revision: int | None = None


class Assign(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    user: Annotated[str, Meta(min_length=1, max_length=64)]
    revision: int | None = None


class WithReason(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reason: Reason
    revision: int | None = None


class Note(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    text: Annotated[str, Meta(min_length=1, max_length=4000)]


async def _act(
    request: Request[Any, Any, Any],
    alert_id: uuid.UUID,
    action: str,
    *,
    revision: int | None = None,
    value: Any = None,
    details: dict[str, Any] | None = None,
    assignee: str | None = None,
) -> queue.AlertDetail:
    state = app_state(request)
    principal = principal_of(request)
    async with state.pool.acquire() as conn, conn.transaction():
        if assignee is not None:
            clinic_id = await conn.fetchval("SELECT clinic_id FROM alerts WHERE id = $1", alert_id)
            if clinic_id is not None and principal.can_see(clinic_id):
                value = await queue.assignee_id(conn, assignee, clinic_id)
        return await queue.transition(
            conn,
            principal,
            alert_id,
            action,
            expected_revision=revision,
            value=value,
            details=details or {},
            addr=client_address(request),
            settings=state.settings.alerts,
        )


class AlertController(Controller):
    path = "/api/v1/alerts"
    tags = ["alerts"]
    guards = [require_roles]
    opt = {ROLES_OPT: READERS}

    @get("/")
    async def list(
        self,
        request: Request[Any, Any, Any],
        status: FromQuery[queue.Status | None] = None,
        severity: FromQuery[rules.Severity | None] = None,
        clinic: FromQuery[str | None] = None,
        rule: FromQuery[str | None] = None,
        assigned_to: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    ) -> queue.AlertPage:
        """Alerts of your clinics, most severe first, then oldest first."""
        filters = queue.AlertFilters(
            status=status,
            severity=severity,
            clinic=clinic,
            rule=rule,
            assigned_to=assigned_to,
            cursor=cursor,
            limit=limit,
        )
        state = app_state(request)
        return await queue.list_alerts(
            state.pool, principal_of(request), filters, client_address(request)
        )

    @get("/{alert_id:uuid}")
    async def read(
        self, request: Request[Any, Any, Any], alert_id: FromPath[uuid.UUID]
    ) -> queue.AlertDetail:
        """One alert with its reports and its history."""
        return await queue.read_alert(
            app_state(request).pool, principal_of(request), alert_id, client_address(request)
        )

    @post("/{alert_id:uuid}/acknowledge", status_code=HTTP_200_OK, opt={ROLES_OPT: ACTORS})
    async def acknowledge(
        self,
        request: Request[Any, Any, Any],
        alert_id: FromPath[uuid.UUID],
        data: JSONBody[Acknowledge],
    ) -> queue.AlertDetail:
        """Acknowledge an open alert: it stops escalating."""
        return await _act(request, alert_id, "acknowledged", revision=data.revision)

    @post("/{alert_id:uuid}/assign", status_code=HTTP_200_OK, opt={ROLES_OPT: ACTORS})
    async def assign(
        self, request: Request[Any, Any, Any], alert_id: FromPath[uuid.UUID], data: JSONBody[Assign]
    ) -> queue.AlertDetail:
        """Assign an unresolved alert to a safety officer or admin of its clinic."""
        return await _act(
            request,
            alert_id,
            "assigned",
            revision=data.revision,
            details={"user": data.user},
            assignee=data.user,
        )

    @post("/{alert_id:uuid}/resolve", status_code=HTTP_200_OK, opt={ROLES_OPT: ACTORS})
    async def resolve(
        self,
        request: Request[Any, Any, Any],
        alert_id: FromPath[uuid.UUID],
        data: JSONBody[WithReason],
    ) -> queue.AlertDetail:
        """Resolve an alert; a reason is required."""
        return await _act(
            request,
            alert_id,
            "resolved",
            revision=data.revision,
            value=data.reason,
            details={"reason": data.reason},
        )

    @post("/{alert_id:uuid}/reopen", status_code=HTTP_200_OK, opt={ROLES_OPT: ACTORS})
    async def reopen(
        self,
        request: Request[Any, Any, Any],
        alert_id: FromPath[uuid.UUID],
        data: JSONBody[WithReason],
    ) -> queue.AlertDetail:
        """Reopen a resolved alert; a reason is required and the deadline starts again."""
        return await _act(
            request, alert_id, "reopened", revision=data.revision, details={"reason": data.reason}
        )

    @post("/{alert_id:uuid}/notes", status_code=HTTP_201_CREATED, opt={ROLES_OPT: ACTORS})
    async def note(
        self, request: Request[Any, Any, Any], alert_id: FromPath[uuid.UUID], data: JSONBody[Note]
    ) -> queue.AlertDetail:
        """Add a note to the alert's history."""
        return await _act(request, alert_id, "noted", details={"text": data.text})


class RuleController(Controller):
    path = "/api/v1/rules"
    tags = ["rules"]
    guards = [require_roles]
    opt = {ROLES_OPT: READERS}

    @get("/")
    async def list(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """Every rule, current version."""
        async with app_state(request).pool.acquire() as conn:
            items = await rules.list_rules(conn)
        return {"items": msgspec.to_builtins(items), "next_cursor": None}

    @get("/{rule_id:str}")
    async def read(self, request: Request[Any, Any, Any], rule_id: FromPath[str]) -> rules.RuleView:
        async with app_state(request).pool.acquire() as conn:
            return await rules.get_rule(conn, rule_id)

    @post("/", opt={ROLES_OPT: ACTORS})
    async def create(
        self, request: Request[Any, Any, Any], data: SkipValidation[JSONBody[rules.RuleCreate]]
    ) -> rules.RuleView:
        """Create a rule (version 1); an invalid rule answers 422 saying what is wrong."""
        rule = rules.parse_rule_input(data, with_id=True)
        assert isinstance(rule, rules.RuleCreate)
        return await _save(request, rule.id, rule, create=True)

    @put("/{rule_id:str}", opt={ROLES_OPT: ACTORS})
    async def update(
        self,
        request: Request[Any, Any, Any],
        rule_id: FromPath[str],
        data: SkipValidation[JSONBody[rules.RuleInput]],
    ) -> rules.RuleView:
        """Replace a rule's definition: a new version; alerts keep the version that fired."""
        return await _save(request, rule_id, rules.parse_rule_input(data, with_id=False))

    @post("/{rule_id:str}/disable", status_code=HTTP_200_OK, opt={ROLES_OPT: ACTORS})
    async def disable(
        self, request: Request[Any, Any, Any], rule_id: FromPath[str]
    ) -> rules.RuleView:
        """Stop a rule from firing (a new version with enabled false)."""
        async with app_state(request).pool.acquire() as conn, conn.transaction():
            return await rules.disable_rule(conn, rule_id, principal_of(request).actor())


async def _save(
    request: Request[Any, Any, Any], rule_id: str, rule: rules.RuleInput, *, create: bool = False
) -> rules.RuleView:
    state = app_state(request)
    conn: Conn
    async with state.pool.acquire() as conn, conn.transaction():
        return await rules.save_rule(
            conn, rule_id, rule, principal_of(request).actor(), create=create
        )
