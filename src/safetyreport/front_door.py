"""The first thing every HTTP request meets: the Host allow-list and ``nosniff``.

A request whose ``Host`` is not one of ours (DNS rebinding: a page on another site whose
name now points at this service) is refused with 400 before routing, authentication or
any database work. Every response, static files and error pages included, carries
``X-Content-Type-Options: nosniff`` so a browser never guesses a script out of a file.

It wraps the whole app (``Litestar.asgi_handler``), not a route: unknown paths and
Litestar's own routes (``/schema``) pass through it too. Litestar's ``AllowedHostsConfig``
does not fit: it compares the header with its port, runs per route, and its refusal is
not a problem document.
"""

from __future__ import annotations

import msgspec
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)

from safetyreport.errors import PROBLEM_JSON, Problem

ANY_HOST = "*"
NOSNIFF = (b"x-content-type-options", b"nosniff")


def host_name(header: str) -> str:
    """The name in a Host header, lower case, without its port (``[::1]:8000`` -> ``[::1]``)."""
    value = header.strip().lower().rstrip(".")
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    if value.count(":") == 1:
        value = value.rsplit(":", 1)[0]
    return value.rstrip(".")


def host_allowed(name: str, allowed: frozenset[str]) -> bool:
    """``allowed`` holds names, ``*.example.org`` for its subdomains, or ``*`` for any."""
    if not name:
        return False
    if ANY_HOST in allowed or name in allowed:
        return True
    return any(pattern.startswith("*.") and name.endswith(pattern[1:]) for pattern in allowed)


def _refusal(name: str) -> tuple[HTTPResponseStartEvent, HTTPResponseBodyEvent]:
    problem = Problem(
        title="Bad request",
        status=400,
        detail=f"this service does not answer to the host name {name!r}",
    )
    body = msgspec.json.encode(problem)
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": 400,
        "headers": [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            NOSNIFF,
        ],
    }
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    return start, end


def front_door(app: ASGIApp, allowed_hosts: frozenset[str]) -> ASGIApp:
    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        # The service has no WebSocket route; only HTTP needs the checks.
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        name = host_name(headers.get(b"host", b"").decode("latin-1"))
        if not host_allowed(name, allowed_hosts):
            for message in _refusal(name):
                await send(message)
            return

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {key.lower() for key, _ in message.get("headers", ())}
                if NOSNIFF[0] not in present:
                    message["headers"] = [*message.get("headers", ()), NOSNIFF]
            await send(message)

        await app(scope, receive, send_nosniff)

    return guarded
