"""``GET /metrics``: the Prometheus text format, for a scraper holding the metrics token.

Off (404) unless ``SAFETYREPORT_METRICS_TOKEN`` is set; then only a request with
``Authorization: Bearer <that token>`` is answered (401 otherwise). Not a user's
session: the route is public to the sign-in middleware and checks its own token.
Left out of the OpenAPI description (an operator's endpoint, see docs/operations.md).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from litestar import Response, get
from litestar.params import HeaderParameter
from prometheus_client import CONTENT_TYPE_LATEST

from safetyreport.auth.permissions import PUBLIC
from safetyreport.errors import NotAuthenticated, NotFound
from safetyreport.metrics import sampling
from safetyreport.metrics.registry import Snapshot
from safetyreport.request_context import StateDep

Authorization = Annotated[str | None, HeaderParameter(name="Authorization", required=False)]


def check_scraper(token: str | None, authorization: str | None) -> None:
    """404 when metrics are off; 401 unless the bearer token is the metrics token."""
    if token is None:
        raise NotFound("metrics are off (set SAFETYREPORT_METRICS_TOKEN)")
    scheme, _, given = (authorization or "").partition(" ")
    # Compared in constant time: the comparison must not tell how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise NotAuthenticated("send the metrics token: Authorization: Bearer <token>")


@get("/metrics", opt=PUBLIC, include_in_schema=False, media_type=CONTENT_TYPE_LATEST)
async def metrics(app_state: StateDep, authorization: Authorization = None) -> Response[bytes]:
    check_scraper(app_state.settings.metrics_token, authorization)
    snapshot = Snapshot(
        database=await sampling.sample_database(app_state.pool),
        pools={
            "requests": sampling.pool_usage(app_state.pool),
            "exports": sampling.pool_usage(app_state.export_pool),
        },
        tasks=sampling.task_samples(app_state.background.status()),
    )
    return Response(app_state.metrics.render(snapshot), media_type=CONTENT_TYPE_LATEST)
