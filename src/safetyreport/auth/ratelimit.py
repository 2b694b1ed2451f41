"""A token bucket per client address for requests that need no sign-in.

Anyone can send those (login, the login form, ...), and a refused login still costs
an argon2 verification and database writes. The bucket is in-process, checked by a
guard before the handler runs (before the body is read, before any database work):
beyond it the answer is 429 with Retry-After. Only requests that may write are
counted (not GET/HEAD/OPTIONS): the public pages, scripts and style sheets are also
loaded by every signed-in user behind a clinic's shared address, and write nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from safetyreport.auth.http import SAFE_METHODS, signed_in
from safetyreport.auth.permissions import PAGE_OPT, PUBLIC_OPT
from safetyreport.errors import TooManyRequests
from safetyreport.settings import AuthSettings
from safetyreport.state import client_address

# Beyond this many addresses, full buckets are forgotten (they equal a new one).
_PRUNE_AT = 10_000


@dataclass
class TokenBuckets:
    capacity: float
    per_second: float
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, key: str) -> float:
        """Take a token for ``key``: 0 when there was one, else seconds until there is."""
        now = self.clock()
        tokens, since = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - since) * self.per_second)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.per_second
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > _PRUNE_AT:
            self._prune(now)
        return 0.0

    def _prune(self, now: float) -> None:
        for key, (tokens, since) in list(self._buckets.items()):
            if tokens + (now - since) * self.per_second >= self.capacity:
                del self._buckets[key]


def _needs_no_sign_in(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> bool:
    if handler.opt.get(PUBLIC_OPT):
        return True
    # Pages reach their handler signed out too (the login and logout forms).
    return bool(handler.opt.get(PAGE_OPT)) and signed_in(connection) is None


def anonymous_rate_limit(settings: AuthSettings) -> Any:
    """The guard that applies the buckets; one set of buckets per app (per process)."""
    buckets = TokenBuckets(settings.anonymous_burst, settings.anonymous_per_minute / 60)

    async def guard(
        connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
    ) -> None:
        if connection.scope.get("method", "GET") in SAFE_METHODS:
            return
        if not _needs_no_sign_in(connection, handler):
            return
        wait = buckets.take(client_address(connection))
        if wait > 0:
            raise TooManyRequests(
                "too many requests from this address; try again later",
                retry_after=max(1, math.ceil(wait)),
            )

    return guard
