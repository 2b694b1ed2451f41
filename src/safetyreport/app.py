"""The app factory: routes, middleware, errors, OpenAPI and the pool's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from types import FrameType
from typing import Any

import asyncpg
from litestar import Litestar, Response
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from safetyreport import __version__
from safetyreport.alerts.broker import LISTENER_TASK, AlertBroker
from safetyreport.alerts.escalation import escalation_task
from safetyreport.alerts.notification_routes import NotificationController
from safetyreport.alerts.on_call_routes import OnCallController, PageController
from safetyreport.alerts.paging import paging_task
from safetyreport.alerts.routes import AlertController, RuleController
from safetyreport.alerts.stream_routes import AlertStreamController
from safetyreport.alerts.webhooks import delivering
from safetyreport.analytics.routes import AnalyticsController
from safetyreport.analytics.signals import signals_task
from safetyreport.audit.checkpoints import checkpoint_task
from safetyreport.audit.routes import AuditController
from safetyreport.audit.signing import Signer, load_signer
from safetyreport.auth.http import TokenAuthenticationMiddleware
from safetyreport.auth.ratelimit import anonymous_rate_limit
from safetyreport.auth.routes import AuthController
from safetyreport.background import BackgroundRunner, LongLived, Periodic, Task
from safetyreport.body_deadline import body_deadline_middleware
from safetyreport.db.embedded import app_url, owner_url
from safetyreport.db.migrations import load_migrations
from safetyreport.db.pool import Conn, connection, create_pool
from safetyreport.errors import EXCEPTION_HANDLERS, ServiceUnavailable, document_problems
from safetyreport.front_door import front_door
from safetyreport.health import health, ready
from safetyreport.idempotency import purge_expired
from safetyreport.input_guard import reject_unstorable_input
from safetyreport.logs import configure_logging, request_logging_middleware
from safetyreport.metrics import routes as metrics_routes
from safetyreport.metrics.facts import counting_into
from safetyreport.metrics.http import counting_requests
from safetyreport.metrics.registry import Metrics
from safetyreport.patients.routes import PatientController
from safetyreport.rems.checks import session_checks_task
from safetyreport.rems.routes import RemsFormController
from safetyreport.reports.routes import ReportController
from safetyreport.request_context import DEPENDENCIES
from safetyreport.sessions.routes import SessionController
from safetyreport.settings import Settings
from safetyreport.state import AppState
from safetyreport.web import WebController, WebSessionController, static_router, template_config
from safetyreport.web.api_reference import ApiReferencePlugin, api_reference_router

_log = logging.getLogger(__name__)
PURGE_TASK = "idempotency purge"
PURGE_INTERVAL = timedelta(hours=1)


async def check_schema(conn: Conn) -> None:
    """Refuse to serve on a database the migrations have not reached (run migrate first)."""
    latest = max(m.version for m in load_migrations())
    try:
        current = await conn.fetchval("SELECT max(version) FROM schema_migrations")
    except asyncpg.UndefinedTableError:
        current = None
    if current != latest:
        raise ServiceUnavailable(
            f"the database schema is at {current}, the service needs {latest}: "
            "run 'safetyreport migrate'"
        )


def background_tasks(settings: Settings, signer: Signer, broker: AlertBroker) -> list[Task]:
    """What every service process does in the background (webhook delivery aside, see
    ``webhooks.delivering``).

    Each unit is claimed in the database, so several service processes on one database
    never do it twice.
    """
    return [
        Periodic(PURGE_TASK, PURGE_INTERVAL, purge_expired),
        escalation_task(settings.alerts),
        session_checks_task(settings.alerts),
        signals_task(settings.alerts),
        checkpoint_task(signer, settings.audit.checkpoint_interval),
        LongLived(LISTENER_TASK, broker.listen),
    ]


def _end_streams_on_shutdown_signal(broker: AlertBroker) -> None:
    """End open alert streams as soon as the server is told to stop.

    uvicorn waits for open responses (up to its graceful timeout) before the lifespan
    ends, and an event stream never ends by itself. The handler runs before uvicorn's
    own, which it then calls; clients reconnect elsewhere with Last-Event-ID.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signals reach only the main thread (not the case under test clients)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)

        def handler(sig: int, frame: FrameType | None, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(broker.close_subscriptions)
            if callable(previous):
                previous(sig, frame)

        signal.signal(signum, handler)


async def never_cached_unless_said(response: Response[Any]) -> Response[Any]:
    """Answers hold patient data: no browser or proxy keeps one (without this, a browser's
    back button showed a stale alert queue from its HTTP cache). Static files and the
    service worker's script say otherwise for themselves."""
    if "cache-control" not in {name.lower() for name in response.headers}:
        response.headers["Cache-Control"] = "no-store"
    return response


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        signer = await asyncio.to_thread(load_signer, settings)
        url = app_url(settings, await asyncio.to_thread(owner_url, settings))
        acquire_timeout = settings.capacity.acquire_timeout.total_seconds()
        # Closed in reverse order: the background tasks stop before what they use.
        async with contextlib.AsyncExitStack() as resources:
            pool = await create_pool(
                url, max_size=settings.database.pool_max_size, acquire_timeout=acquire_timeout
            )
            resources.push_async_callback(pool.close)
            export_pool = await create_pool(
                url,
                min_size=0,
                max_size=settings.capacity.exports_total,
                acquire_timeout=acquire_timeout,
            )
            resources.push_async_callback(export_pool.close)
            async with connection(pool) as conn:
                await check_schema(conn)
            broker = AlertBroker(url)
            resources.callback(broker.close_subscriptions)
            runner = BackgroundRunner(pool)
            for task in background_tasks(settings, signer, broker):
                runner.add(task)
            delivery = await resources.enter_async_context(delivering(settings.alerts))
            if delivery is not None:
                runner.add(delivery)
            pager = paging_task(settings.paging, settings.alerts)
            if pager is not None:
                runner.add(pager)
            resources.push_async_callback(runner.stop)
            # The tasks count what they commit into this app's metrics.
            counting_into(metrics.count)
            runner.start()
            if not await broker.wait_listening():
                _log.warning("serving without the alert listener for now; it keeps retrying")
            _end_streams_on_shutdown_signal(broker)
            app.state.safetyreport = AppState(
                settings=settings,
                pool=pool,
                broker=broker,
                signer=signer,
                export_pool=export_pool,
                background=runner,
                metrics=metrics,
            )
            yield

    configure_logging(settings.log_level)
    templates = template_config()
    app = Litestar(
        route_handlers=[
            health,
            ready,
            metrics_routes.metrics,
            AuthController,
            ReportController,
            SessionController,
            RemsFormController,
            AnalyticsController,
            PatientController,
            AuditController,
            AlertStreamController,
            AlertController,
            RuleController,
            NotificationController,
            OnCallController,
            PageController,
            WebController,
            WebSessionController,
            static_router(),
        ],
        template_config=templates,
        dependencies=DEPENDENCIES,
        lifespan=[lifespan],
        middleware=[
            request_logging_middleware,
            body_deadline_middleware(settings.request_body_timeout),
            DefineMiddleware(TokenAuthenticationMiddleware, exclude=["^/schema"]),
        ],
        before_request=reject_unstorable_input,
        exception_handlers=EXCEPTION_HANDLERS,
        # Requests that need no sign-in: a token bucket per address (see auth.ratelimit).
        guards=[anonymous_rate_limit(settings.auth)],
        request_max_body_size=256 * 1024,
        after_request=never_cached_unless_said,
        openapi_config=OpenAPIConfig(
            title="safetyreport",
            version=__version__,
            path="/schema",
            # Our own server-rendered reference (no script from a CDN), or a 404 when off.
            render_plugins=[
                ApiReferencePlugin(templates.engine_instance, enabled=settings.api_reference),
                JsonRenderPlugin(),
            ],
            openapi_router=api_reference_router("/schema"),
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(type="http", scheme="bearer", description="token")
                }
            ),
            use_handler_docstrings=True,
        ),
        debug=False,
        logging_config=None,
    )
    # Every operation needs the bearer token, except those open to anyone.
    document_problems(app, security=[{"bearer": []}])
    # Outside routing, so unknown paths and /schema get the Host check and nosniff too.
    app.asgi_handler = front_door(
        counting_requests(app.asgi_handler, metrics), settings.allowed_hosts
    )
    return app
