"""HTTP routes for the alert queue and the alert rules."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post, put
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter, SkipValidation
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_202_ACCEPTED
from msgspec import Meta

from safetyreport.alerts import queue, rule_changes, rules
from safetyreport.alerts.view import Status
from safetyreport.auth.http import principal_of, require_roles
from safetyreport.auth.permissions import ALERT_READERS, ALERT_WORKERS, allow
from safetyreport.auth.users import Principal
from safetyreport.db.pool import Conn
from safetyreport.state import app_state, client_address

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
    opt = allow(ALERT_READERS)

    @get("/")
    async def list(
        self,
        request: Request[Any, Any, Any],
        status: FromQuery[Status | None] = None,
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

    @post("/{alert_id:uuid}/acknowledge", status_code=HTTP_200_OK, opt=allow(ALERT_WORKERS))
    async def acknowledge(
        self,
        request: Request[Any, Any, Any],
        alert_id: FromPath[uuid.UUID],
        data: JSONBody[Acknowledge],
    ) -> queue.AlertDetail:
        """Acknowledge an open alert: it stops escalating."""
        return await _act(request, alert_id, "acknowledged", revision=data.revision)

    @post("/{alert_id:uuid}/assign", status_code=HTTP_200_OK, opt=allow(ALERT_WORKERS))
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

    @post("/{alert_id:uuid}/resolve", status_code=HTTP_200_OK, opt=allow(ALERT_WORKERS))
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

    @post("/{alert_id:uuid}/reopen", status_code=HTTP_200_OK, opt=allow(ALERT_WORKERS))
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

    @post("/{alert_id:uuid}/notes", status_code=HTTP_201_CREATED, opt=allow(ALERT_WORKERS))
    async def note(
        self, request: Request[Any, Any, Any], alert_id: FromPath[uuid.UUID], data: JSONBody[Note]
    ) -> queue.AlertDetail:
        """Add a note to the alert's history."""
        return await _act(request, alert_id, "noted", details={"text": data.text})


PENDING = {
    HTTP_202_ACCEPTED: ResponseSpec(
        rule_changes.ChangeView,
        description="A change to a protected rule, waiting for a second user's approval",
    )
}


class RuleController(Controller):
    path = "/api/v1/rules"
    tags = ["rules"]
    guards = [require_roles]
    opt = allow(ALERT_READERS)

    @get("/")
    async def list(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """The rules of your clinics and the network rules, current version."""
        principal = principal_of(request)
        async with app_state(request).pool.acquire() as conn:
            items = await rules.list_rules(conn, principal)
        return {"items": msgspec.to_builtins(items), "next_cursor": None}

    @get("/changes")
    async def list_changes(
        self, request: Request[Any, Any, Any], status: FromQuery[rule_changes.Status | None] = None
    ) -> dict[str, Any]:
        """Changes to protected rules (of your clinics, and network ones), oldest first."""
        principal = principal_of(request)
        async with app_state(request).pool.acquire() as conn:
            items = await rule_changes.list_changes(conn, principal, status)
        return {"items": msgspec.to_builtins(items), "next_cursor": None}

    @get("/changes/{change_id:int}")
    async def read_change(
        self, request: Request[Any, Any, Any], change_id: FromPath[int]
    ) -> rule_changes.ChangeView:
        async with app_state(request).pool.acquire() as conn:
            return await rule_changes.get_change(conn, principal_of(request), change_id)

    @post("/changes/{change_id:int}/approve", status_code=HTTP_200_OK, opt=allow(ALERT_WORKERS))
    async def approve(
        self, request: Request[Any, Any, Any], change_id: FromPath[int]
    ) -> rules.RuleView:
        """Apply a change to a protected rule: by a second user with the same rights."""
        principal = principal_of(request)
        async with app_state(request).pool.acquire() as conn:
            saved = await rule_changes.approve(conn, principal, change_id)
        return saved.view(principal)

    @post("/changes/{change_id:int}/reject", status_code=HTTP_200_OK, opt=allow(ALERT_WORKERS))
    async def reject(
        self, request: Request[Any, Any, Any], change_id: FromPath[int]
    ) -> rule_changes.ChangeView:
        """Close a change to a protected rule without applying it."""
        async with app_state(request).pool.acquire() as conn:
            return await rule_changes.reject(conn, principal_of(request), change_id)

    @get("/{rule_id:str}")
    async def read(self, request: Request[Any, Any, Any], rule_id: FromPath[str]) -> rules.RuleView:
        async with app_state(request).pool.acquire() as conn:
            return await rules.get_rule(conn, principal_of(request), rule_id)

    @post("/", opt=allow(ALERT_WORKERS), responses=PENDING)
    async def create(
        self, request: Request[Any, Any, Any], data: SkipValidation[JSONBody[rules.RuleCreate]]
    ) -> Response[rules.RuleView | rule_changes.ChangeView]:
        """Create a rule (version 1); an invalid rule answers 422 saying what is wrong.

        ``clinics`` lists where it applies (absent: every clinic, which only a user granted
        every clinic may create); ``overrides`` names the network rule it replaces there.
        An override of a protected rule is proposed (202) until a second user approves it.
        """
        rule = rules.parse_rule_input(data, with_id=True)
        assert isinstance(rule, rules.RuleCreate)
        return await _write(request, lambda conn, who: rule_changes.create(conn, who, rule), 201)

    @put("/{rule_id:str}", opt=allow(ALERT_WORKERS), responses=PENDING)
    async def update(
        self,
        request: Request[Any, Any, Any],
        rule_id: FromPath[str],
        data: SkipValidation[JSONBody[rules.RuleInput]],
    ) -> Response[rules.RuleView | rule_changes.ChangeView]:
        """Replace a rule's definition: a new version; alerts keep the version that fired.

        A protected rule's change is proposed (202) until a second user approves it.
        """
        rule = rules.parse_rule_input(data, with_id=False)
        return await _write(
            request, lambda conn, who: rule_changes.update(conn, who, rule_id, rule), 200
        )

    @post(
        "/{rule_id:str}/disable",
        status_code=HTTP_200_OK,
        opt=allow(ALERT_WORKERS),
        responses=PENDING,
    )
    async def disable(
        self, request: Request[Any, Any, Any], rule_id: FromPath[str]
    ) -> Response[rules.RuleView | rule_changes.ChangeView]:
        """Stop a rule from firing (a new version with enabled false); proposed (202) for a
        protected rule, refused (422) for an override of one."""
        return await _write(
            request, lambda conn, who: rule_changes.update(conn, who, rule_id, None), 200
        )


async def _write(
    request: Request[Any, Any, Any],
    write: Callable[[Conn, Principal], Awaitable[rule_changes.Outcome]],
    status: int,
) -> Response[rules.RuleView | rule_changes.ChangeView]:
    principal = principal_of(request)
    conn: Conn
    async with app_state(request).pool.acquire() as conn:
        outcome = await write(conn, principal)
    if outcome.change is not None:
        return Response(outcome.change, status_code=HTTP_202_ACCEPTED)
    assert outcome.rule is not None
    return Response(outcome.rule.view(principal), status_code=status)
