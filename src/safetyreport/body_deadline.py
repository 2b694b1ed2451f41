"""A deadline for receiving a request body.

uvicorn waits for an unfinished body as long as the client keeps the connection
open, so a tablet that stalls mid-upload (or a slowloris client) would hold a socket
and a coroutine forever. The body must arrive within the deadline or the request
ends with 408; nothing of it has been stored, since handlers read the whole body
before they open a transaction. Once the body is complete, later ``receive`` calls
(a streaming response waiting for the client to leave) are passed through untouched.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from safetyreport.errors import RequestTimeout


def body_deadline_middleware(timeout: timedelta) -> type:
    """Middleware factory for Litestar: ``timeout`` from the request's start."""

    class BodyDeadline:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await self.app(scope, receive, send)
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout.total_seconds()
            complete = False

            async def receive_in_time() -> ReceiveMessage:
                nonlocal complete
                if complete:
                    return await receive()
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise RequestTimeout(
                        f"the request body did not arrive within {timeout.total_seconds():g} s"
                    ) from None
                complete = message["type"] != "http.request" or not message.get("more_body")
                return message

            await self.app(scope, receive_in_time, send)

    return BodyDeadline
