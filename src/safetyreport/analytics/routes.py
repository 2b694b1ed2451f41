"""HTTP routes for safety signals: thin wrappers that parse, authorize and call the
service (analytics/rates.py)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from litestar import Controller, Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, QueryParameter

from safetyreport.analytics import rates as service
from safetyreport.analytics import rollups
from safetyreport.auth.http import require_roles
from safetyreport.auth.permissions import ALERT_READERS, allow
from safetyreport.request_context import CallerDep, DbDep

GROUP = "the dimensions to keep, repeated: clinic, drug, route, dose_band"
Text = Annotated[str | None, QueryParameter(min_length=1, max_length=100)]


class AnalyticsController(Controller):
    path = "/api/v1/analytics"
    tags = ["safety signals"]
    guards = [require_roles]
    opt = allow(ALERT_READERS)

    @get(
        "/rates",
        responses={
            200: ResponseSpec(
                service.Rates, description="The rates (JSON), or the same rows as CSV"
            )
        },
    )
    async def rates(
        self,
        db: DbDep,
        caller: CallerDep,
        grain: FromQuery[service.Grain] = "month",
        start: FromQuery[date | None] = None,
        end: FromQuery[date | None] = None,
        clinic: Text = None,
        drug: Text = None,
        route: Text = None,
        dose_band: Text = None,
        event_type: Text = None,
        group: Annotated[
            list[service.Dimension] | None,
            QueryParameter(description="repeat: clinic, drug, route, dose_band"),
        ] = None,
        format: FromQuery[Literal["json", "csv"]] = "json",
    ) -> Response[bytes]:
        """Events per 100 treatment sessions of your clinics by ``grain`` (month or week,
        UTC) from ``start`` to before ``end`` (default: the last 12 months or 13 weeks),
        grouped by ``group`` (default every dimension; those left out are summed), for
        each event type (``kind:``, ``category:``, ``rule:``), with the sessions, the
        sessions with the event, the Wilson 95% interval and the reports linked to no
        session beside them. ``format=csv`` gives the same rows as CSV. Audited in the
        chain of each clinic counted."""
        default_start, default_end = service.default_range(grain)
        filters = service.RateFilters(
            grain=grain,
            start=start or default_start,
            end=end or default_end,
            clinic=clinic,
            drug=drug,
            route=route,
            dose_band=dose_band,
            event_type=event_type,
            group=tuple(group) if group else service.DIMENSIONS,
        )
        clinics = caller.principal.visible_clinics(clinic)
        await rollups.refresh(db, clinics)
        answer = await service.rates(db, caller, filters, clinics)
        if format == "csv":
            return Response(service.to_csv(answer).encode(), media_type="text/csv")
        return Response(service.encode(answer), media_type="application/json")
