"""HTTP routes for treatment sessions: thin wrappers that parse, authorize and call the
service. Writes take an ``Idempotency-Key`` as reports do (idempotency.write_once)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import (
    FromPath,
    FromQuery,
    HeaderParameter,
    JSONBody,
    QueryParameter,
    SkipValidation,
)

from safetyreport.auth.http import require_roles
from safetyreport.auth.permissions import REPORT_READERS, REPORT_WRITERS, allow
from safetyreport.caller import Caller
from safetyreport.db.pool import Conn
from safetyreport.errors import ClientError
from safetyreport.idempotency import StoredResponse, request_hash, write_once
from safetyreport.reports.fhir import FHIR_JSON, encode
from safetyreport.reports.types import PATIENT_REF_PATTERN
from safetyreport.request_context import CallerDep, DbDep, StateDep
from safetyreport.sessions import fhir as session_fhir
from safetyreport.sessions import service
from safetyreport.sessions.types import (
    DischargeBody,
    DoseBody,
    ObservationAmendment,
    ObservationBody,
    SessionAmendment,
    SessionCreate,
)
from safetyreport.sessions.validation import (
    validate_discharge,
    validate_dose,
    validate_observation,
    validate_session,
)
from safetyreport.state import AppState

MAX_SESSION_BYTES = 64 * 1024
_JSON = "application/json"
IdempotencyKey = Annotated[str | None, HeaderParameter(name="Idempotency-Key", required=False)]
PatientRefFilter = Annotated[str | None, QueryParameter(pattern=PATIENT_REF_PATTERN)]


async def _once(
    request: Request[Any, Any, Any],
    db: Conn,
    caller: Caller,
    app_state: AppState,
    key: str | None,
    raw: Any,
    action: Callable[[Conn], Awaitable[tuple[int, bytes]]],
) -> Response[bytes]:
    """Run the write once per Idempotency-Key (a retry replays the first answer)."""
    if not key:
        raise ClientError("send an Idempotency-Key header (one new key per request)")
    stored: StoredResponse = await write_once(
        db,
        action,
        user_id=caller.principal.id,
        key=key,
        fingerprint=request_hash(request.method, request.url.path, service.canonical_json(raw)),
        ttl=app_state.settings.reports.idempotency_ttl,
    )
    headers = {"Idempotency-Replayed": "true"} if stored.replayed else {}
    return Response(stored.body, status_code=stored.status, media_type=_JSON, headers=headers)


class SessionController(Controller):
    path = "/api/v1/sessions"
    tags = ["treatment sessions"]
    guards = [require_roles]
    opt = allow(REPORT_READERS)

    @post(
        "/",
        opt=allow(REPORT_WRITERS),
        request_max_body_size=MAX_SESSION_BYTES,
        responses={201: ResponseSpec(service.SessionView, description="The opened session")},
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        db: DbDep,
        caller: CallerDep,
        app_state: StateDep,
        data: SkipValidation[JSONBody[SessionCreate]],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[bytes]:
        """Open a treatment session with its pre-dose checklist; the checklist's blood
        pressure runs through the rules as a pre-dose reading (``alerts``). Needs an
        ``Idempotency-Key``; a client-made ``id`` is accepted once."""
        settings = app_state.settings
        body = validate_session(data)

        async def action(conn: Conn) -> tuple[int, bytes]:
            view = await service.open_session(conn, caller, body, settings.alerts)
            return 201, service.encode(view)

        return await _once(request, db, caller, app_state, idempotency_key, body, action)

    @post(
        "/{session_id:uuid}/dose",
        opt=allow(REPORT_WRITERS),
        request_max_body_size=MAX_SESSION_BYTES,
        responses={201: ResponseSpec(service.SessionView, description="The dosed session")},
    )
    async def dose(
        self,
        request: Request[Any, Any, Any],
        db: DbDep,
        caller: CallerDep,
        app_state: StateDep,
        session_id: FromPath[uuid.UUID],
        data: SkipValidation[JSONBody[DoseBody]],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[bytes]:
        """Record the dose; refused (422 on ``override_reason``) while a hold is open on
        the patient, unless an ``override_reason`` is given."""
        settings = app_state.settings

        async def action(conn: Conn) -> tuple[int, bytes]:
            row = await service.session_for_write(conn, caller, session_id)
            body = validate_dose(data, row.drug, row.weight_kg, skew=settings.reports.clock_skew)
            view = await service.record_dose(conn, caller, session_id, body, settings.alerts)
            return 201, service.encode(view)

        return await _once(request, db, caller, app_state, idempotency_key, data, action)

    @post(
        "/{session_id:uuid}/observations",
        opt=allow(REPORT_WRITERS),
        request_max_body_size=MAX_SESSION_BYTES,
        responses={
            201: ResponseSpec(service.ObservationView, description="The stored observation")
        },
    )
    async def observe(
        self,
        request: Request[Any, Any, Any],
        db: DbDep,
        caller: CallerDep,
        app_state: StateDep,
        session_id: FromPath[uuid.UUID],
        data: SkipValidation[JSONBody[ObservationBody]],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[bytes]:
        """A timed observation; the single-reading rules run on it as on a report."""
        settings = app_state.settings
        body = validate_observation(data, skew=settings.reports.clock_skew)

        async def action(conn: Conn) -> tuple[int, bytes]:
            view = await service.add_observation(conn, caller, session_id, body, settings.alerts)
            return 201, service.encode(view)

        return await _once(request, db, caller, app_state, idempotency_key, body, action)

    @post(
        "/{session_id:uuid}/discharge",
        opt=allow(REPORT_WRITERS),
        status_code=200,
        request_max_body_size=MAX_SESSION_BYTES,
        responses={200: ResponseSpec(service.SessionView, description="The closed session")},
    )
    async def discharge(
        self,
        request: Request[Any, Any, Any],
        db: DbDep,
        caller: CallerDep,
        app_state: StateDep,
        session_id: FromPath[uuid.UUID],
        data: SkipValidation[JSONBody[DischargeBody]],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[bytes]:
        """Close the session. For esketamine, 422 names each unmet fitness-to-leave
        criterion unless an ``override_reason`` is given (audited; a high alert)."""
        settings = app_state.settings
        body = validate_discharge(data, skew=settings.reports.clock_skew)

        async def action(conn: Conn) -> tuple[int, bytes]:
            view = await service.discharge(conn, caller, session_id, body, settings.alerts)
            return 200, service.encode(view)

        return await _once(request, db, caller, app_state, idempotency_key, body, action)

    @post(
        "/{session_id:uuid}/amendments",
        opt=allow(REPORT_WRITERS),
        request_max_body_size=MAX_SESSION_BYTES,
        responses={201: ResponseSpec(service.SessionView, description="The amended session")},
    )
    async def amend(
        self,
        request: Request[Any, Any, Any],
        db: DbDep,
        caller: CallerDep,
        app_state: StateDep,
        session_id: FromPath[uuid.UUID],
        data: SkipValidation[JSONBody[SessionAmendment]],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[bytes]:
        """Correct the session: ``{"reason": ..., <changed fields>}`` (its weight, age
        band, prescriber, network ref, checklist, or its dose: ``dose_mg``, ``dosed_at``,
        ``lot``, ``infusion_minutes``) makes a new version; the rules of the checklist or
        the dose run again on the corrected values (``alerts``)."""
        settings = app_state.settings

        async def action(conn: Conn) -> tuple[int, bytes]:
            view = await service.amend_session(
                conn, caller, session_id, data, settings.alerts, skew=settings.reports.clock_skew
            )
            return 201, service.encode(view)

        return await _once(request, db, caller, app_state, idempotency_key, data, action)

    @post(
        "/{session_id:uuid}/observations/{observation_id:uuid}/amendments",
        opt=allow(REPORT_WRITERS),
        request_max_body_size=MAX_SESSION_BYTES,
        responses={
            201: ResponseSpec(service.ObservationView, description="The amended observation")
        },
    )
    async def amend_observation(
        self,
        request: Request[Any, Any, Any],
        db: DbDep,
        caller: CallerDep,
        app_state: StateDep,
        session_id: FromPath[uuid.UUID],
        observation_id: FromPath[uuid.UUID],
        data: SkipValidation[JSONBody[ObservationAmendment]],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[bytes]:
        """Correct an observation: ``{"reason": ..., <changed fields>}`` (``observed_at``
        or any vital sign) makes a new version; its rules run again (``alerts``)."""
        settings = app_state.settings

        async def action(conn: Conn) -> tuple[int, bytes]:
            view = await service.amend_observation(
                conn,
                caller,
                session_id,
                observation_id,
                data,
                settings.alerts,
                skew=settings.reports.clock_skew,
            )
            return 201, service.encode(view)

        return await _once(request, db, caller, app_state, idempotency_key, data, action)

    @get("/")
    async def list(
        self,
        db: DbDep,
        caller: CallerDep,
        clinic: FromQuery[str | None] = None,
        patient_ref: PatientRefFilter = None,
        cursor: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    ) -> service.SessionPage:
        """Treatment sessions of your clinics, newest first, a page at a time."""
        filters = service.SessionFilters(
            clinic=clinic, patient_ref=patient_ref, cursor=cursor, limit=limit
        )
        return await service.list_sessions(db, caller, filters)

    @get("/{session_id:uuid}")
    async def read(
        self, db: DbDep, caller: CallerDep, session_id: FromPath[uuid.UUID]
    ) -> service.SessionView:
        """One session with its observations; audited as a read."""
        return await service.read_session(db, caller, session_id)

    @get(
        "/{session_id:uuid}/fhir",
        media_type=FHIR_JSON,
        responses={
            200: ResponseSpec(
                dict[str, Any],
                description="An HL7 FHIR R5 Bundle (collection): the session's Encounter,"
                " MedicationAdministration and Observations",
                media_type=FHIR_JSON,
            )
        },
    )
    async def read_fhir(
        self, db: DbDep, caller: CallerDep, session_id: FromPath[uuid.UUID]
    ) -> Response[bytes]:
        """The session as an HL7 FHIR R5 Bundle of type ``collection``: an Encounter, a
        MedicationAdministration for the dose and an Observation per reading; audited as
        a read."""
        view = await service.read_session(db, caller, session_id)
        return Response(encode(session_fhir.bundle(view)), media_type=FHIR_JSON)
