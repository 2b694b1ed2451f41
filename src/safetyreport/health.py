"""Liveness and database reachability."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.openapi.datastructures import ResponseSpec

from safetyreport.auth.permissions import PUBLIC
from safetyreport.state import app_state


class Health(msgspec.Struct, frozen=True):
    status: str
    database: str


@get(
    "/health",
    opt=PUBLIC,
    tags=["health"],
    responses={503: ResponseSpec(Health, description="The database does not answer")},
)
async def health(request: Request[Any, Any, Any]) -> Response[Health]:
    """200 when the service and its database answer; 503 when the database does not."""
    try:
        async with asyncio.timeout(2):
            await app_state(request).pool.fetchval("SELECT 1")
    except Exception:  # any failure (refused, timeout, auth) means: not reachable now
        return Response(Health("degraded", "unreachable"), status_code=503)
    return Response(Health("ok", "ok"))
