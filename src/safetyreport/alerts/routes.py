"""HTTP routes for the alert queue and the alert rules."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, get, post, put
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter, SkipValidation
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_202_ACCEPTED
from msgspec import Meta

from safetyreport.alerts import queue, rule_changes, rules
from safetyreport.alerts.view import Status
from safetyreport.auth.http import require_roles
from safetyreport.auth.permissions import ALERT_READERS, ALERT_WORKERS, REPORT_WRITERS, allow
from safetyreport.caller import Caller
from safetyreport.request_context import CallerDep, DbDep, StateDep

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


class Resolve(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    reason: Reason
    revision: int | None = None
    # A theft or loss alert (one with DEA clocks) needs the date the DEA was notified and
    # the Form 106 number, or a reason it was not reportable; other alerts take none.
    dea_notified_on: date | None = None
    dea_form106_number: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    dea_not_reportable_reason: Reason | None = None


class Note(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    text: Annotated[str, Meta(min_length=1, max_length=4000)]


class AlertController(Controller):
    path = "/api/v1/alerts"
    tags = ["alerts"]
    guards = [require_roles]
    opt = allow(ALERT_READERS)

    @get("/")
    async def list(
        self,
        db: DbDep,
        caller: CallerDep,
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
        return await queue.list_alerts(db, caller, filters)

    @get("/{alert_id:uuid}")
    async def read(
        self, db: DbDep, caller: CallerDep, alert_id: FromPath[uuid.UUID]
    ) -> queue.AlertDetail:
        """One alert with its reports and its history."""
        return await queue.read_alert(db, caller, alert_id)

    @get("/{alert_id:uuid}/assignees", opt=allow(ALERT_WORKERS))
    async def assignees(
        self, db: DbDep, caller: CallerDep, alert_id: FromPath[uuid.UUID]
    ) -> queue.AssigneeList:
        """Who the alert may be assigned to: the enabled safety officers and admins who can
        see its clinic, by username."""
        return await queue.assignees(db, caller, alert_id)

    @post("/{alert_id:uuid}/acknowledge", status_code=HTTP_200_OK, opt=allow(ALERT_WORKERS))
    async def acknowledge(
        self,
        db: DbDep,
        caller: CallerDep,
        app_state: StateDep,
        alert_id: FromPath[uuid.UUID],
        data: JSONBody[Acknowledge],
    ) -> queue.AlertDetail:
        """Acknowledge an open alert: it stops escalating."""
        return await queue.acknowledge(
            db, caller, alert_id, revision=data.revision, settings=app_state.settings.alerts
        )

    @post("/{alert_id:uuid}/assign", status_code=HTTP_200_OK, opt=allow(ALERT_WORKERS))
    async def assign(
        self,
        db: DbDep,
        caller: CallerDep,
        app_state: StateDep,
        alert_id: FromPath[uuid.UUID],
        data: JSONBody[Assign],
    ) -> queue.AlertDetail:
        """Assign an unresolved alert to a safety officer or admin of its clinic."""
        return await queue.assign(
            db,
            caller,
            alert_id,
            data.user,
            revision=data.revision,
            settings=app_state.settings.alerts,
        )

    @post("/{alert_id:uuid}/resolve", status_code=HTTP_200_OK, opt=allow(ALERT_WORKERS))
    async def resolve(
        self,
        db: DbDep,
        caller: CallerDep,
        app_state: StateDep,
        alert_id: FromPath[uuid.UUID],
        data: JSONBody[Resolve],
    ) -> queue.AlertDetail:
        """Resolve an alert; a reason is required. A theft or loss alert also needs the
        date the DEA was notified and the Form 106 number, or a reason it was not
        reportable."""
        return await queue.resolve(
            db,
            caller,
            alert_id,
            data.reason,
            revision=data.revision,
            settings=app_state.settings.alerts,
            dea_resolution=queue.DeaResolution(
                notified_on=data.dea_notified_on,
                form106_number=data.dea_form106_number,
                not_reportable_reason=data.dea_not_reportable_reason,
            ),
        )

    @post("/{alert_id:uuid}/reopen", status_code=HTTP_200_OK, opt=allow(ALERT_WORKERS))
    async def reopen(
        self,
        db: DbDep,
        caller: CallerDep,
        app_state: StateDep,
        alert_id: FromPath[uuid.UUID],
        data: JSONBody[WithReason],
    ) -> queue.AlertDetail:
        """Reopen a resolved alert; a reason is required and the deadline starts again."""
        return await queue.reopen(
            db,
            caller,
            alert_id,
            data.reason,
            revision=data.revision,
            settings=app_state.settings.alerts,
        )

    @post("/{alert_id:uuid}/override", status_code=HTTP_200_OK, opt=allow(REPORT_WRITERS))
    async def override(
        self,
        db: DbDep,
        caller: CallerDep,
        app_state: StateDep,
        alert_id: FromPath[uuid.UUID],
        data: JSONBody[WithReason],
    ) -> queue.AlertDetail:
        """Dose despite a hold (the pre-dose hold), saying why: by a nurse or safety officer
        of the alert's clinic. 409 for an alert that is not a hold, or already overridden."""
        return await queue.override(
            db,
            caller,
            alert_id,
            data.reason,
            revision=data.revision,
            settings=app_state.settings.alerts,
        )

    @post("/{alert_id:uuid}/notes", status_code=HTTP_201_CREATED, opt=allow(ALERT_WORKERS))
    async def note(
        self,
        db: DbDep,
        caller: CallerDep,
        app_state: StateDep,
        alert_id: FromPath[uuid.UUID],
        data: JSONBody[Note],
    ) -> queue.AlertDetail:
        """Add a note to the alert's history."""
        return await queue.add_note(
            db, caller, alert_id, data.text, settings=app_state.settings.alerts
        )


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
    async def list(self, db: DbDep, caller: CallerDep) -> dict[str, Any]:
        """The rules of your clinics and the network rules, current version."""
        items = await rules.list_rules(db, caller.principal)
        return {"items": msgspec.to_builtins(items), "next_cursor": None}

    @get("/changes")
    async def list_changes(
        self, db: DbDep, caller: CallerDep, status: FromQuery[rule_changes.Status | None] = None
    ) -> dict[str, Any]:
        """Changes to protected rules (of your clinics, and network ones), oldest first."""
        items = await rule_changes.list_changes(db, caller.principal, status)
        return {"items": msgspec.to_builtins(items), "next_cursor": None}

    @get("/changes/{change_id:int}")
    async def read_change(
        self, db: DbDep, caller: CallerDep, change_id: FromPath[int]
    ) -> rule_changes.ChangeView:
        return await rule_changes.get_change(db, caller.principal, change_id)

    @post("/changes/{change_id:int}/approve", status_code=HTTP_200_OK, opt=allow(ALERT_WORKERS))
    async def approve(
        self, db: DbDep, caller: CallerDep, change_id: FromPath[int]
    ) -> rules.RuleView:
        """Apply a change to a protected rule: by a second user with the same rights."""
        saved = await rule_changes.approve(db, caller, change_id)
        return saved.view(caller.principal)

    @post("/changes/{change_id:int}/reject", status_code=HTTP_200_OK, opt=allow(ALERT_WORKERS))
    async def reject(
        self, db: DbDep, caller: CallerDep, change_id: FromPath[int]
    ) -> rule_changes.ChangeView:
        """Close a change to a protected rule without applying it."""
        return await rule_changes.reject(db, caller, change_id)

    @get("/{rule_id:str}")
    async def read(self, db: DbDep, caller: CallerDep, rule_id: FromPath[str]) -> rules.RuleView:
        return await rules.get_rule(db, caller.principal, rule_id)

    @post("/", opt=allow(ALERT_WORKERS), responses=PENDING)
    async def create(
        self, db: DbDep, caller: CallerDep, data: SkipValidation[JSONBody[rules.RuleCreate]]
    ) -> Response[rules.RuleView | rule_changes.ChangeView]:
        """Create a rule (version 1); an invalid rule answers 422 saying what is wrong.

        ``clinics`` lists where it applies (absent: every clinic, which only a user granted
        every clinic may create); ``overrides`` names the network rule it replaces there.
        An override of a protected rule is proposed (202) until a second user approves it.
        """
        rule = rules.parse_rule_input(data, with_id=True)
        assert isinstance(rule, rules.RuleCreate)
        return _written(caller, await rule_changes.create(db, caller, rule), HTTP_201_CREATED)

    @put("/{rule_id:str}", opt=allow(ALERT_WORKERS), responses=PENDING)
    async def update(
        self,
        db: DbDep,
        caller: CallerDep,
        rule_id: FromPath[str],
        data: SkipValidation[JSONBody[rules.RuleInput]],
    ) -> Response[rules.RuleView | rule_changes.ChangeView]:
        """Replace a rule's definition: a new version; alerts keep the version that fired.

        A protected rule's change is proposed (202) until a second user approves it.
        """
        rule = rules.parse_rule_input(data, with_id=False)
        return _written(caller, await rule_changes.update(db, caller, rule_id, rule), HTTP_200_OK)

    @post(
        "/{rule_id:str}/disable",
        status_code=HTTP_200_OK,
        opt=allow(ALERT_WORKERS),
        responses=PENDING,
    )
    async def disable(
        self, db: DbDep, caller: CallerDep, rule_id: FromPath[str]
    ) -> Response[rules.RuleView | rule_changes.ChangeView]:
        """Stop a rule from firing (a new version with enabled false); proposed (202) for a
        protected rule, refused (422) for an override of one."""
        return _written(caller, await rule_changes.update(db, caller, rule_id, None), HTTP_200_OK)


def _written(
    caller: Caller, outcome: rule_changes.Outcome, status: int
) -> Response[rules.RuleView | rule_changes.ChangeView]:
    """The rule as saved (``status``), or the change waiting for approval (202)."""
    if outcome.change is not None:
        return Response(outcome.change, status_code=HTTP_202_ACCEPTED)
    assert outcome.rule is not None
    return Response(outcome.rule.view(caller.principal), status_code=status)
