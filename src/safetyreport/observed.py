"""One HTTP request run and observed: its status and duration, however it ended.

The request log (``logs``) and the request metrics (``metrics.http``) both need them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from safetyreport.errors import status_of


async def run_observed(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    done: Callable[[int, float], None],
) -> None:
    """Run ``app`` for one HTTP request, then call ``done(status, seconds)``.

    The status is the one sent; for an exception raised through (by a middleware inside,
    such as authentication), the status Litestar's handler will answer it with outside.
    """
    started = time.perf_counter()
    status = 500

    async def send_wrapper(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    try:
        await app(scope, receive, send_wrapper)
    except Exception as exc:
        status = status_of(exc)
        raise
    finally:
        done(status, time.perf_counter() - started)
