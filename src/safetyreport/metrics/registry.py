"""The app's metrics: a registry of its own (several apps in one process never share
counters), what is counted as it happens, and what is read at scrape time.

Labels never hold a raw path, an id or a patient reference: routes are templates
(``/api/v1/reports/{report_id}``), and every other label takes a value from a short,
fixed set (a report kind, a severity, an outcome, a task's name).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from safetyreport.metrics.facts import AlertEvent, Delivery, Fact, ReportStored

PREFIX = "safetyreport"
# Set by ``safetyreport serve --workers N`` (N > 1) for its workers, before they import
# prometheus_client: their counters then live in files there, and a scrape that any one
# worker answers adds up every worker's (prometheus_client's multiprocess mode).
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True, slots=True)
class PoolUsage:
    size: int
    idle: int
    max_size: int
    # Requests waiting for a connection right now (None: the pool cannot tell).
    waiting: int | None

    @property
    def in_use(self) -> int:
        return self.size - self.idle


@dataclass(frozen=True, slots=True)
class DatabaseSample:
    """What one cheap query tells at scrape time; None where the database did not answer."""

    primary: bool | None = None
    # Seconds since the oldest undelivered outbox row was written (0: none waiting), and
    # how many wait, by outbox ("webhooks", "pages").
    oldest_pending_seconds: dict[str, float] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TaskSample:
    running: bool
    last_success: datetime | None
    failures: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    database: DatabaseSample
    pools: dict[str, PoolUsage]
    tasks: dict[str, TaskSample]


class _ScrapeTime(Collector):
    """The gauges read when Prometheus scrapes: from the snapshot the scrape took."""

    def __init__(self) -> None:
        self.snapshot = Snapshot(DatabaseSample(), {}, {})

    def collect(self) -> Iterable[Metric]:
        yield from _database(self.snapshot.database)
        yield from _pools(self.snapshot.pools)
        yield from _tasks(self.snapshot.tasks)


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)


def _database(sample: DatabaseSample) -> Iterator[Metric]:
    up = _gauge("database_up", "1 when the database answered the scrape's query, else 0")
    up.add_metric([], 0 if sample.primary is None else 1)
    yield up
    primary = _gauge(
        "database_primary",
        "1 when the pool's database is a primary (can write), 0 when it is a replica "
        "or did not answer",
    )
    primary.add_metric([], 1 if sample.primary else 0)
    yield primary
    if sample.primary is None:
        return  # nothing known of the outboxes: absent rather than a made-up zero
    oldest = _gauge(
        "outbox_oldest_pending_age_seconds",
        "Age of the oldest notification not yet delivered (0 when none waits)",
        ["outbox"],
    )
    for outbox, seconds in sorted(sample.oldest_pending_seconds.items()):
        oldest.add_metric([outbox], seconds)
    yield oldest
    waiting = _gauge("outbox_pending", "Notifications waiting to be delivered", ["outbox"])
    for outbox, count in sorted(sample.pending.items()):
        waiting.add_metric([outbox], count)
    yield waiting


def _pools(pools: dict[str, PoolUsage]) -> Iterator[Metric]:
    size = _gauge("pool_size", "Connections the pool holds (idle or in use)", ["pool"])
    maximum = _gauge("pool_max_size", "Connections the pool may hold at most", ["pool"])
    connections = _gauge("pool_connections", "The pool's connections by state", ["pool", "state"])
    waiting = _gauge("pool_waiters", "Acquisitions waiting for a free connection", ["pool"])
    for name, usage in sorted(pools.items()):
        size.add_metric([name], usage.size)
        maximum.add_metric([name], usage.max_size)
        connections.add_metric([name, "idle"], usage.idle)
        connections.add_metric([name, "in_use"], usage.in_use)
        if usage.waiting is not None:
            waiting.add_metric([name], usage.waiting)
    yield from (size, maximum, connections, waiting)


def _tasks(tasks: dict[str, TaskSample]) -> Iterator[Metric]:
    last = _gauge(
        "background_task_last_success_timestamp_seconds",
        "When the background task last succeeded (Unix time; absent until it has)",
        ["task"],
    )
    running = _gauge("background_task_running", "1 while the background task runs", ["task"])
    failures = _gauge(
        "background_task_failures",
        "The background task's failures since its last success",
        ["task"],
    )
    for name, task in sorted(tasks.items()):
        if task.last_success is not None:
            last.add_metric([name], task.last_success.timestamp())
        running.add_metric([name], 1 if task.running else 0)
        failures.add_metric([name], task.failures)
    yield from (last, running, failures)


class Metrics:
    """One app's metrics. ``count`` takes committed facts; ``request`` each HTTP request;
    ``render`` the text Prometheus scrapes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time to answer an HTTP request (to the end of its body), by route template",
            ["method", "route", "status"],
            registry=registry,
        )
        self.reports = Counter(
            f"{PREFIX}_reports_stored",
            "Reports stored (committed), by kind",
            ["kind"],
            registry=registry,
        )
        self.alerts = Counter(
            f"{PREFIX}_alerts_raised",
            "Alerts opened (committed), by severity",
            ["severity"],
            registry=registry,
        )
        self.escalations = Counter(
            f"{PREFIX}_alert_escalations",
            "Alerts escalated for want of an acknowledgement (committed), by severity",
            ["severity"],
            registry=registry,
        )
        self.deliveries = Counter(
            f"{PREFIX}_notification_deliveries",
            "Attempts to deliver a notification, by channel (webhook, page) and outcome "
            "(delivered, retrying, failed)",
            ["channel", "outcome"],
            registry=registry,
        )
        self._scrape_time = _ScrapeTime()
        self._exposed = registry
        if os.environ.get(MULTIPROCESS_DIR):
            # Every worker's counters from the files; this worker's scrape-time gauges.
            self._exposed = CollectorRegistry(auto_describe=True)
            MultiProcessCollector(self._exposed)  # type: ignore[no-untyped-call]
        self._exposed.register(self._scrape_time)

    def count(self, fact: Fact) -> None:
        match fact:
            case ReportStored(kind=kind):
                self.reports.labels(kind).inc()
            case AlertEvent(action="opened", severity=severity):
                self.alerts.labels(severity).inc()
            case AlertEvent(action="escalated", severity=severity):
                self.escalations.labels(severity).inc()
            case Delivery(channel=channel, outcome=outcome):
                self.deliveries.labels(channel, outcome).inc()
            case _:
                pass  # other alert events are not counted

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route, str(status)).observe(seconds)

    def render(self, snapshot: Snapshot) -> bytes:
        # Set and read without an await between: a concurrent scrape cannot interleave.
        self._scrape_time.snapshot = snapshot
        return generate_latest(self._exposed)
