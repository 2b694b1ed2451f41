"""HTTP routes for safety signals: thin wrappers that parse, authorize and call the
services (analytics/rates.py, charts.py, signals.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from typing import Annotated, Literal

import msgspec
from litestar import Controller, Response, get, post
from litestar.di import Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, QueryParameter

from safetyreport.analytics import charts, rollups, signals
from safetyreport.analytics import rates as service
from safetyreport.auth.http import require_roles
from safetyreport.auth.permissions import ADMINS, ALERT_READERS, allow
from safetyreport.db.pool import Conn
from safetyreport.request_context import CallerDep, DbDep, StateDep, provide_db

EventType = Annotated[
    str,
    QueryParameter(min_length=1, max_length=100, description="kind:..., category:... or rule:..."),
]
GROUP = "the dimensions to keep, repeated: clinic, drug, route, dose_band"
Text = Annotated[str | None, QueryParameter(min_length=1, max_length=100)]


async def provide_fresh_db(app_state: StateDep) -> AsyncIterator[Conn]:
    """The request's transaction (as ``db`` everywhere), begun once the dirty periods of
    the rollups are recounted in a transaction of their own (see analytics.rollups)."""
    await rollups.refresh(app_state.pool)
    async for conn in provide_db(app_state):
        yield conn


class AnalyticsController(Controller):
    path = "/api/v1/analytics"
    tags = ["safety signals"]
    guards = [require_roles]
    opt = allow(ALERT_READERS)
    # Every answer here reads the rollups: fresh ones.
    dependencies = {"db": Provide(provide_fresh_db)}

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
        answer = await service.rates(db, caller, filters, clinics)
        if format == "csv":
            return Response(service.to_csv(answer).encode(), media_type="text/csv")
        return Response(service.encode(answer), media_type="application/json")

    @get(
        "/control-chart",
        responses={200: ResponseSpec(charts.ControlChart, description="The p-chart")},
    )
    async def control_chart(
        self,
        db: DbDep,
        caller: CallerDep,
        app_state: StateDep,
        event_type: EventType,
        grain: FromQuery[service.Grain] = "month",
        start: FromQuery[date | None] = None,
        end: FromQuery[date | None] = None,
        clinic: Text = None,
        drug: Text = None,
        route: Text = None,
        dose_band: Text = None,
    ) -> Response[bytes]:
        """The p-chart of one event type: the network's pooled rate of each period (all
        clinics) as the centre line, and each of your clinics' periods with its sessions,
        events, rate and 3-sigma limits from its own sessions (per 100); ``signal`` where
        the rate is above the upper limit with at least the minimum sessions. Range and
        filters as the rates. Audited in the chain of each clinic shown."""
        default_start, default_end = service.default_range(grain)
        filters = charts.ChartFilters(
            event_type=event_type,
            grain=grain,
            start=start or default_start,
            end=end or default_end,
            clinic=clinic,
            drug=drug,
            route=route,
            dose_band=dose_band,
        )
        clinics = caller.principal.visible_clinics(clinic)
        chart = await charts.control_chart(
            db, caller, filters, clinics, app_state.settings.alerts.signal_min_sessions
        )
        return Response(msgspec.json.encode(chart), media_type="application/json")

    @get("/funnel", responses={200: ResponseSpec(charts.Funnel, description="The funnel plot")})
    async def funnel(
        self,
        db: DbDep,
        caller: CallerDep,
        event_type: EventType,
        grain: FromQuery[service.Grain] = "month",
        period_start: FromQuery[date | None] = None,
        clinic: Text = None,
        drug: Text = None,
        route: Text = None,
        dose_band: Text = None,
    ) -> Response[bytes]:
        """The funnel plot of one event type in one period (the month or week holding
        ``period_start``; default the last complete one): each of your clinics' sessions
        and rate with its 95% and 99.8% limits around the network's pooled rate (of the
        same drug, route and dose band when given), and a curve of the limits over the
        sessions for drawing (per 100). Audited in the chain of each clinic shown."""
        clinics = caller.principal.visible_clinics(clinic)
        answer = await charts.funnel(
            db,
            caller,
            event_type,
            grain,
            period_start or charts.last_complete(grain),
            clinics,
            drug=drug,
            route=route,
            dose_band=dose_band,
        )
        return Response(msgspec.json.encode(answer), media_type="application/json")

    @post(
        "/signals/run",
        opt=allow(ADMINS),
        status_code=200,
        responses={200: ResponseSpec(signals.SignalRun, description="What the run raised")},
    )
    async def run_signals(
        self, db: DbDep, caller: CallerDep, app_state: StateDep
    ) -> Response[bytes]:
        """Run the safety-signal check now (admins): the last complete month and week,
        each signal raised once ever as by the periodic check (every clinic's). Answers
        the signals it raised at your clinics and how many in all; audited as
        ``analytics.signals_run`` in the global chain."""
        run = await signals.run_signals(
            db, app_state.settings.alerts, actor=caller.principal.actor()
        )
        await caller.audit(
            db,
            "analytics.signals_run",
            object_type="analytics",
            details={
                "periods": run.periods,
                "raised": [
                    {
                        "clinic": s.clinic,
                        "event_type": s.event_type,
                        "grain": s.grain,
                        "period_start": s.period_start.isoformat(),
                        "alert_id": str(s.alert_id),
                    }
                    for s in run.raised
                ],
            },
        )
        # Every clinic's signals are raised; the answer names the caller's only.
        scope = caller.principal.scope()
        run = signals.shown_to(run, None if scope is None else set(caller.principal.clinic_ids))
        return Response(msgspec.json.encode(run), media_type="application/json")
