"""Counting HTTP requests by route template, and giving each request the app's metrics.

It wraps the whole app (``Litestar.asgi_handler``, as ``front_door`` does), so requests
that match no route are counted too, as ``unmatched``: a raw path would put report ids
and patient references in labels, and let any client create new series (so would an
invented method: it is counted as ``other``).
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from safetyreport.metrics.facts import counting_into
from safetyreport.metrics.registry import Metrics
from safetyreport.observed import run_observed

UNMATCHED = "unmatched"
# Any other method a client invents is "other": labels take values from fixed sets only.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def counting_requests(app: ASGIApp, metrics: Metrics) -> ASGIApp:
    async def counted(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        counting_into(metrics.count)  # what this request's transaction commits

        def count(status: int, seconds: float) -> None:
            # Set by Litestar's router once the path matched a route; the template only.
            route = scope.get("path_template") or UNMATCHED
            method = scope["method"] if scope["method"] in METHODS else "other"
            metrics.request(method, route, status, seconds)

        await run_observed(app, scope, receive, send, count)

    return counted
