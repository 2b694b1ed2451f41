"""HTTP routes for reports: thin wrappers that parse, authorize and call the service."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import (
    FromPath,
    FromQuery,
    HeaderParameter,
    JSONBody,
    QueryParameter,
    SkipValidation,
)
from litestar.response import Stream

from safetyreport.auth.http import require_roles
from safetyreport.auth.permissions import REPORT_READERS, REPORT_WRITERS, allow
from safetyreport.db.pool import Conn
from safetyreport.errors import PROBLEM_JSON, ClientError, Problem, exception_to_response
from safetyreport.idempotency import StoredResponse, request_hash, write_once
from safetyreport.limits import BUSY
from safetyreport.reports import export, fhir, service
from safetyreport.reports.types import PATIENT_REF_PATTERN, ReportBody, ReportKind
from safetyreport.reports.validation import validate_report
from safetyreport.request_context import CallerDep, DbDep, SinceQuery, StateDep, UntilQuery
from safetyreport.sessions import fhir as session_fhir
from safetyreport.streaming import download, download_operation
from safetyreport.times import parse_time

MAX_REPORT_BYTES = 64 * 1024
_JSON = "application/json"


def _json_response(stored: StoredResponse) -> Response[bytes]:
    headers = {"Idempotency-Replayed": "true"} if stored.replayed else {}
    return Response(stored.body, status_code=stored.status, media_type=_JSON, headers=headers)


def _fingerprint(request: Request[Any, Any, Any], canonical_body: bytes) -> bytes:
    """What makes a retry the same request: its method, its path and its body."""
    return request_hash(request.method, request.url.path, canonical_body)


PatientRefFilter = Annotated[str | None, QueryParameter(pattern=PATIENT_REF_PATTERN)]


IdempotencyKey = Annotated[str | None, HeaderParameter(name="Idempotency-Key", required=False)]


_EXPORT_OPERATION = download_operation(
    {
        encoding.media_type: Schema(
            type=OpenAPIType.OBJECT if encoding.media_type == fhir.FHIR_JSON else OpenAPIType.STRING
        )
        for encoding in export.ENCODINGS.values()
    }
)


class ReportController(Controller):
    path = "/api/v1/reports"
    tags = ["reports"]
    guards = [require_roles]
    opt = allow(REPORT_READERS)

    @post(
        "/",
        opt=allow(REPORT_WRITERS),
        request_max_body_size=MAX_REPORT_BYTES,
        responses={201: ResponseSpec(service.ReportView, description="The stored report")},
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        db: DbDep,
        caller: CallerDep,
        app_state: StateDep,
        data: SkipValidation[JSONBody[ReportBody]],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[bytes]:
        """Submit a report (body tagged by ``kind``). Needs an ``Idempotency-Key`` header."""
        if not idempotency_key:
            raise ClientError("send an Idempotency-Key header (one new key per report)")
        # The schema documents ReportBody; validate_report names every broken rule.
        settings = app_state.settings
        body = validate_report(data, skew=settings.reports.clock_skew)
        canonical_body = service.canonical_json(body)

        async def action(conn: Conn) -> tuple[int, bytes]:
            view = await service.insert_report(conn, caller, body, settings.alerts)
            return 201, service.encode(view)

        stored = await write_once(
            db,
            action,
            user_id=caller.principal.id,
            key=idempotency_key,
            fingerprint=_fingerprint(request, canonical_body),
            ttl=settings.reports.idempotency_ttl,
        )
        return _json_response(stored)

    @get("/")
    async def list(
        self,
        db: DbDep,
        caller: CallerDep,
        kind: FromQuery[ReportKind | None] = None,
        clinic: FromQuery[str | None] = None,
        patient_ref: PatientRefFilter = None,
        since: SinceQuery = None,
        until: UntilQuery = None,
        cursor: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    ) -> service.ReportPage:
        """Reports of your clinics, newest first, a page at a time."""
        filters = service.ReportFilters(
            kind=kind,
            clinic=clinic,
            patient_ref=patient_ref,
            since=parse_time("since", since),
            until=parse_time("until", until),
            cursor=cursor,
            limit=limit,
        )
        return await service.list_reports(db, caller, filters)

    @get("/{report_id:uuid}")
    async def read(
        self, db: DbDep, caller: CallerDep, report_id: FromPath[uuid.UUID]
    ) -> service.ReportView:
        """One report: its current version and every earlier one."""
        return await service.read_report(db, caller, report_id)

    @get(
        "/{report_id:uuid}/fhir",
        media_type=fhir.FHIR_JSON,
        responses={
            200: ResponseSpec(
                dict[str, Any],
                description="An HL7 FHIR R5 AdverseEvent resource",
                media_type=fhir.FHIR_JSON,
            ),
            409: ResponseSpec(
                Problem,
                description="The report is a stock incident: no patient, no AdverseEvent",
                media_type=PROBLEM_JSON,
            ),
        },
    )
    async def read_fhir(
        self,
        request: Request[Any, Any, Any],
        db: DbDep,
        caller: CallerDep,
        report_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        """One report's current version as an HL7 FHIR R5 AdverseEvent; audited as a read.
        A report of a treatment session refers to the session's Encounter,
        MedicationAdministration and Observations (``GET /api/v1/sessions/{id}/fhir``).

        A stock incident concerns no patient and has no AdverseEvent: 409.
        """
        view = await service.read_report(db, caller, report_id)
        try:
            fhir.patient_body(view)  # a stock incident: 409 before anything else
            session = await session_fhir.report_links(
                db, caller.principal, view.body.get("session_id")
            )
            resource = fhir.adverse_event(view, session)
        except fhir.NoAdverseEvent as refused:
            # Answered, not raised, so that the read's audit entry commits: the answer
            # tells the caller the report exists and what it is.
            return exception_to_response(request, refused)
        return Response(fhir.encode(resource), media_type=fhir.FHIR_JSON)

    @get("/export", operation_class=_EXPORT_OPERATION, responses=BUSY)
    async def export_reports(
        self,
        caller: CallerDep,
        app_state: StateDep,
        # Named as sent, so that an error names the parameter the client knows.
        format: Annotated[export.ExportFormat, QueryParameter(description="csv, ndjson or fhir")],
        kind: FromQuery[ReportKind | None] = None,
        clinic: FromQuery[str | None] = None,
        patient_ref: PatientRefFilter = None,
        since: SinceQuery = None,
        until: UntilQuery = None,
    ) -> Stream:
        """Every report of your clinics that matches, oldest first, streamed.

        ``format``: ``csv`` (a header row, then one row per report; text that a
        spreadsheet would run as a formula starts with ``'``), ``ndjson`` (one report per
        line, as the list shows it) or ``fhir`` (a FHIR R5 Bundle of AdverseEvents).
        Audited when it starts and when it ends. At most a few exports run at once per
        user and per service process (429 with Retry-After beyond them).
        """
        filters = export.ExportFilters(
            kind=kind,
            clinic=clinic,
            patient_ref=patient_ref,
            since=parse_time("since", since),
            until=parse_time("until", until),
        )
        # The export streams on connections of its own, from the exports' pool, taken
        # when the body is sent (a request's ``db`` would be gone by then).
        slot = app_state.exports.claim(caller.principal.id)  # 429 beyond the caps
        try:
            started = await export.start_export(app_state.export_pool, caller, filters, format)
        except BaseException:
            slot.release()
            raise
        return download(
            export.stream_export(app_state.export_pool, started),
            media_type=started.media_type,
            filename=started.filename,
            export_id=str(started.export_id),
            send_timeout=app_state.settings.capacity.export_send_timeout.total_seconds(),
            on_close=slot.release,
        )

    @post(
        "/{report_id:uuid}/amendments",
        opt=allow(REPORT_WRITERS),
        request_max_body_size=MAX_REPORT_BYTES,
        responses={201: ResponseSpec(service.ReportView, description="The amended report")},
    )
    async def amend(
        self,
        request: Request[Any, Any, Any],
        db: DbDep,
        caller: CallerDep,
        app_state: StateDep,
        report_id: FromPath[uuid.UUID],
        data: SkipValidation[JSONBody[dict[str, Any]]],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[bytes]:
        """Amend a report: ``{"reason": ..., <changed fields>}`` makes a new version.

        An ``Idempotency-Key`` is optional here; with one, a retry is applied once.
        """
        settings = app_state.settings

        async def action(conn: Conn) -> tuple[int, bytes]:
            view = await service.amend_report(
                conn, caller, report_id, data, settings.reports, settings.alerts
            )
            return 201, service.encode(view)

        stored = await write_once(
            db,
            action,
            user_id=caller.principal.id,
            key=idempotency_key,
            fingerprint=_fingerprint(request, service.canonical_json(data)),
            ttl=settings.reports.idempotency_ttl,
        )
        return _json_response(stored)
