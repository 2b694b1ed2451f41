"""Caps on work a process runs at once (exports, verifications): 429 beyond them.

The counts live in the process: with several worker processes, each has its own caps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from types import TracebackType

from litestar.openapi.datastructures import ResponseSpec

from safetyreport.errors import PROBLEM_JSON, Problem, TooManyRequests

# For the ``responses`` of an operation that claims a slot.
BUSY = {
    429: ResponseSpec(
        Problem,
        description="As many of these run as may at once; retry after Retry-After seconds",
        media_type=PROBLEM_JSON,
    )
}


class Slot:
    """One claimed place; released once, however often ``release`` is called."""

    def __init__(self, slots: Slots, key: Hashable) -> None:
        self._slots = slots
        self._key = key
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._release(self._key)

    def __enter__(self) -> Slot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class Slots:
    """At most ``total`` holders at once, and at most ``per_key`` of them per key (user).

    ``claim`` never waits: beyond a cap it raises TooManyRequests (429, Retry-After).
    """

    def __init__(
        self, what: str, *, total: int, per_key: int | None = None, retry_after: int = 10
    ) -> None:
        self.what = what
        self.total = total
        self.per_key = per_key
        self.retry_after = retry_after
        self._held: Counter[Hashable] = Counter()

    @property
    def in_use(self) -> int:
        return self._held.total()

    def claim(self, key: Hashable = None) -> Slot:
        if self.per_key is not None and self._held[key] >= self.per_key:
            raise TooManyRequests(
                f"you already run {self._held[key]} {self.what} at once, the most allowed; "
                "retry when one has ended",
                self.retry_after,
            )
        if self.in_use >= self.total:
            raise TooManyRequests(
                f"the service runs as many {self.what} as it can at once; retry shortly",
                self.retry_after,
            )
        self._held[key] += 1
        return Slot(self, key)

    def _release(self, key: Hashable) -> None:
        self._held[key] -= 1
        if self._held[key] <= 0:
            del self._held[key]
