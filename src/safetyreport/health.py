"""Liveness, database reachability, and the state of the background tasks."""

from __future__ import annotations

import asyncio

import msgspec
from litestar import Response, get
from litestar.openapi.datastructures import ResponseSpec

from safetyreport.auth.permissions import PUBLIC
from safetyreport.background import TaskStatus
from safetyreport.db.pool import connection
from safetyreport.request_context import StateDep


class Health(msgspec.Struct, frozen=True):
    status: str
    database: str
    # Each background task: whether it runs, its last success and its last error.
    tasks: dict[str, TaskStatus]


@get(
    "/health",
    opt=PUBLIC,
    tags=["health"],
    responses={503: ResponseSpec(Health, description="The database does not answer")},
)
async def health(app_state: StateDep) -> Response[Health]:
    """200 when the service and its database answer; 503 when the database does not.

    The background tasks are shown, not judged: a task retrying through an outage is
    what the database field already says.
    """
    tasks = app_state.background.status()
    try:
        async with asyncio.timeout(2), connection(app_state.pool) as conn:
            await conn.fetchval("SELECT 1")
    except Exception:  # any failure (refused, timeout, auth) means: not reachable now
        return Response(Health("degraded", "unreachable", tasks), status_code=503)
    return Response(Health("ok", "ok", tasks))
