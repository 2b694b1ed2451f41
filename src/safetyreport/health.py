"""Liveness, database reachability, and the state of the background tasks (``/health``);
whether this process can write now (``/health/ready``, for a load balancer)."""

from __future__ import annotations

import asyncio

import msgspec
from litestar import Response, get
from litestar.openapi.datastructures import ResponseSpec

from safetyreport.auth.permissions import PUBLIC
from safetyreport.background import TaskStatus
from safetyreport.db.pool import connection
from safetyreport.db.role import Role, role_of
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


# A load balancer asks often and wants an answer fast: a server that cannot answer
# within this is not ready.
READY_TIMEOUT_SECONDS = 2.0
READY_RETRY_AFTER_SECONDS = 2


class Readiness(msgspec.Struct, frozen=True):
    # "ready" or "not ready".
    status: str
    # The server a pooled connection reaches: primary, replica or unreachable.
    database: Role


@get(
    "/health/ready",
    opt=PUBLIC,
    tags=["health"],
    responses={
        503: ResponseSpec(
            Readiness, description="This process cannot write now (no primary); retry later"
        )
    },
)
async def ready(app_state: StateDep) -> Response[Readiness]:
    """200 when this process can write now: a pooled connection answers within 2 seconds
    and reaches a primary (``pg_is_in_recovery()`` is false). 503 with ``Retry-After``
    otherwise: the database is unreachable, or the server is a replica (a failover is
    under way). For load balancers; ``/health`` is the cheaper liveness check.
    """
    role = await role_of(app_state.pool, READY_TIMEOUT_SECONDS)
    if role != "primary":
        return Response(
            Readiness("not ready", role),
            status_code=503,
            headers={"Retry-After": str(READY_RETRY_AFTER_SECONDS)},
        )
    return Response(Readiness("ready", role))
