"""HTTP routes for REMS Patient Monitoring Forms: thin wrappers that parse, authorize
and call the service."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter, SkipValidation

from safetyreport.auth.http import require_roles
from safetyreport.auth.permissions import REPORT_READERS, REPORT_WRITERS, allow
from safetyreport.rems import service
from safetyreport.request_context import CallerDep, DbDep

MAX_SUBMISSION_BYTES = 4 * 1024


class RemsFormController(Controller):
    path = "/api/v1/rems/forms"
    tags = ["REMS forms"]
    guards = [require_roles]
    opt = allow(REPORT_READERS)

    @get("/")
    async def list(
        self,
        db: DbDep,
        caller: CallerDep,
        status: FromQuery[service.Status | None] = None,
        clinic: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    ) -> service.FormPage:
        """REMS Patient Monitoring Forms of your clinics (``status`` due, overdue or
        submitted), the earliest due first, a page at a time; audited as a read."""
        filters = service.FormFilters(status=status, clinic=clinic, cursor=cursor, limit=limit)
        return await service.list_forms(db, caller, filters)

    @get("/{form_id:uuid}")
    async def read(
        self, db: DbDep, caller: CallerDep, form_id: FromPath[uuid.UUID]
    ) -> service.FormView:
        """One form with its content prefilled from the session; audited as a read."""
        return await service.read_form(db, caller, form_id)

    @post(
        "/{form_id:uuid}/submission",
        opt=allow(REPORT_WRITERS),
        status_code=201,
        request_max_body_size=MAX_SUBMISSION_BYTES,
    )
    async def submission(
        self,
        db: DbDep,
        caller: CallerDep,
        form_id: FromPath[uuid.UUID],
        data: SkipValidation[JSONBody[service.SubmissionBody]],
    ) -> service.FormView:
        """Record the form's submission to the REMS with its ``confirmation_number``
        (audited); 409 if recorded already."""
        raw: Any = data
        body = service.validate_submission(raw)
        return await service.submit(db, caller, form_id, body)
