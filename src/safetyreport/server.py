"""The HTTP server's edge: who may set X-Forwarded-For, connection limits, header deadline.

uvicorn has no deadline for a request's headers: a client that sends half a request
line keeps its connection (and a slot of the concurrency limit) forever. The protocol
below closes a connection whose request headers are not complete within the deadline,
counted from the connection's start or from the first byte of each later request
(between requests uvicorn's keep-alive timeout applies).
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from safetyreport.settings import Settings

_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 34\r\n"
    b"connection: close\r\n\r\n"
    b"the request headers came too late\n"
)


class ServerConfig(uvicorn.Config):
    """uvicorn's configuration plus the header deadline; pickled to worker processes."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """httptools' protocol that closes connections whose headers do not arrive in time."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._header_timeout = getattr(config, "header_timeout", None)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timeout is not None:
            self._header_timer = self.loop.call_later(self._header_timeout, self._headers_late)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            # No response is being written on this connection: say why it ends.
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


def server_config(settings: Settings, host: str, port: int, workers: int) -> ServerConfig:
    """uvicorn's configuration for ``safetyreport serve``."""
    trusted = sorted(settings.trusted_proxies)
    return ServerConfig(
        "safetyreport.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http=HeaderDeadlineProtocol,
        # Only SAFETYREPORT_TRUSTED_PROXIES decides whose X-Forwarded-For is believed;
        # uvicorn would otherwise trust 127.0.0.1 (or FORWARDED_ALLOW_IPS) by default.
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted,
        limit_concurrency=settings.server.max_connections,
        header_timeout=settings.server.header_timeout.total_seconds(),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
