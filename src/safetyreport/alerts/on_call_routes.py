"""``/api/v1/clinics/{clinic}/on-call`` (the roster) and ``/api/v1/pages`` (the paging
ledger), for admins."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, get, put
from litestar.params import FromPath, JSONBody, QueryParameter

from safetyreport.alerts import on_call
from safetyreport.alerts.on_call import OnCallRoster, OnCallUpdate, PageList, PageStatus
from safetyreport.auth.http import require_roles
from safetyreport.auth.permissions import ADMINS, allow
from safetyreport.request_context import CallerDep, DbDep


class OnCallController(Controller):
    path = "/api/v1/clinics/{clinic:str}/on-call"
    tags = ["on call"]
    guards = [require_roles]
    opt = allow(ADMINS)

    @get("/")
    async def read_on_call(
        self, db: DbDep, caller: CallerDep, clinic: FromPath[str]
    ) -> OnCallRoster:
        """The clinic's on-call roster, first paged first (admins of the clinic)."""
        return await on_call.read_roster(db, caller, clinic)

    @put("/")
    async def replace_on_call(
        self, db: DbDep, caller: CallerDep, clinic: FromPath[str], data: JSONBody[OnCallUpdate]
    ) -> OnCallRoster:
        """Replace the clinic's roster with this ordered list (admins of the clinic)."""
        return await on_call.replace_roster(db, caller, clinic, data)


class PageController(Controller):
    path = "/api/v1/pages"
    tags = ["on call"]
    guards = [require_roles]
    opt = allow(ADMINS)

    @get("/")
    async def list_pages(
        self,
        db: DbDep,
        caller: CallerDep,
        clinic: Annotated[str | None, QueryParameter()] = None,
        status: Annotated[PageStatus | None, QueryParameter()] = None,
        alert: Annotated[uuid.UUID | None, QueryParameter()] = None,
        cursor: Annotated[str | None, QueryParameter()] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    ) -> PageList:
        """Pages sent to on-call staff, newest first, each with its attempts (admins)."""
        return await on_call.list_pages(
            db, caller, clinic=clinic, status=status, alert=alert, cursor=cursor, limit=limit
        )
