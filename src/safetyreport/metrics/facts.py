"""Facts the metrics count, counted only once their transaction has committed.

A service that writes something worth counting (a report stored, an alert opened or
escalated) says so with ``record(conn, fact)`` in its transaction. Whoever owns that
transaction (the request's ``db``, the background runner) collects the facts with
``pending(conn)`` and hands them to ``committed`` after the commit: a rolled-back
transaction counts nothing. An outcome known outside any transaction (a webhook post,
a page) is handed to ``committed`` once its record has committed.

``committed`` gives the facts to the sink of the current context: the app's metrics,
set for each request and for the background tasks (``counting_into``). Without a sink
(the CLI, a service called directly by a test) facts are dropped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal, TypeAlias

from safetyreport.db.pool import Conn


@dataclass(frozen=True, slots=True)
class ReportStored:
    kind: str


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """An event on an alert (``opened``, ``escalated``, ...), with the alert's severity."""

    action: str
    severity: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """One attempt to tell someone outside: a webhook post or an emailed page."""

    channel: Literal["webhook", "page"]
    # delivered (2xx, or the SMTP server took it), retrying, or failed (no attempt left).
    outcome: Literal["delivered", "retrying", "failed"]


Fact: TypeAlias = ReportStored | AlertEvent | Delivery
Sink: TypeAlias = Callable[[Fact], None]

_sink: ContextVar[Sink | None] = ContextVar("safetyreport_metrics_sink", default=None)
# The facts of each open transaction, by its connection (the object services are given).
_open: dict[int, list[Fact]] = {}


def record(conn: Conn, fact: Fact) -> None:
    """Count ``fact`` if, and when, the transaction on ``conn`` commits."""
    facts = _open.get(id(conn))
    if facts is not None:
        facts.append(fact)


@contextlib.contextmanager
def pending(conn: Conn) -> Iterator[list[Fact]]:
    """Collect the facts recorded on ``conn`` while the block runs (inside its
    transaction); pass them to ``committed`` once the transaction has committed."""
    facts: list[Fact] = []
    _open[id(conn)] = facts
    try:
        yield facts
    finally:
        del _open[id(conn)]


def committed(*facts: Fact) -> None:
    """Count facts whose transaction has committed."""
    sink = _sink.get()
    if sink is not None:
        for fact in facts:
            sink(fact)


def counting_into(sink: Sink) -> None:
    """Make ``sink`` count the facts of this context and of the tasks it starts."""
    _sink.set(sink)
