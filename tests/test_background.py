"""The background runner: restarts, backoff, shutdown, and what /health shows of it.

Intervals and backoffs are short here (parameters of the runner and of the tasks);
every wait is for a condition, bounded generously, never on a timing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from safetyreport.alerts.broker import LISTENER_TASK
from safetyreport.alerts.escalation import ESCALATION_TASK
from safetyreport.alerts.webhooks import DELIVERY_TASK
from safetyreport.analytics.signals import SIGNALS_TASK
from safetyreport.app import PURGE_TASK, create_app
from safetyreport.audit.checkpoints import CHECKPOINT_TASK
from safetyreport.background import (
    BackgroundRunner,
    Backoff,
    Heartbeat,
    LongLived,
    Periodic,
    is_retryable,
)
from safetyreport.db.embedded import app_url
from safetyreport.db.pool import Conn, create_pool
from safetyreport.rems.checks import SESSION_CHECKS_TASK
from safetyreport.settings import Settings

WAIT_SECONDS = 15.0
LOGGER = "safetyreport.background"
FAST = Backoff(base=0.01, cap=0.05)
NEVER = timedelta(hours=1)


async def eventually(check: Callable[[], bool], what: str) -> None:
    async def poll() -> None:
        while True:
            if check():
                return
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), WAIT_SECONDS)
    except TimeoutError:
        pytest.fail(f"not within {WAIT_SECONDS} s: {what}")


@dataclass(frozen=True)
class RecordingBackoff(Backoff):
    """The runner's backoff, remembering the failure counts it was asked to pause for."""

    asked: list[int] = field(default_factory=list)

    def delay(self, failures: int) -> float:
        self.asked.append(failures)
        return super().delay(failures)


@pytest.fixture
async def app_pool(settings: Settings, database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(app_url(settings, database_url), max_size=2)
    yield pool
    await pool.close()


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=LOGGER)
    return caplog


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == level]


def failing(times: int, error: Callable[[], Exception]) -> tuple[list[bool], Any]:
    """A unit that raises ``error()`` its first ``times`` runs, then does no work; the
    list records each run (whether it ran in a transaction)."""
    runs: list[bool] = []

    async def unit(conn: Conn) -> int:
        runs.append(conn.is_in_transaction())
        if len(runs) <= times:
            raise error()
        return 0

    return runs, unit


# --- failures ---------------------------------------------------------------------------


async def test_a_task_that_raises_a_bug_is_logged_with_its_traceback_and_restarted(
    app_pool: asyncpg.Pool, logged: pytest.LogCaptureFixture
) -> None:
    runs, unit = failing(2, lambda: ValueError("a bug"))
    runner = BackgroundRunner(app_pool, backoff=FAST)
    runner.add(Periodic("buggy", NEVER, unit))
    runner.start()
    try:
        await eventually(lambda: runner.status()["buggy"].last_success is not None, "a success")
        status = runner.status()["buggy"]
    finally:
        assert await runner.stop() == {}

    assert len(runs) == 3
    assert all(runs), "the unit runs in a transaction"
    assert (status.running, status.failures, status.last_error) == (True, 0, "ValueError")
    assert status.last_error_at is not None
    assert status.last_success is not None
    assert status.last_success >= status.last_error_at
    errors = records(logged, logging.ERROR)
    assert len(errors) == 2
    for record in errors:
        assert "buggy failed: ValueError: a bug; restarting in" in record.getMessage()
        assert record.exc_info is not None
        assert record.exc_info[0] is ValueError
    assert "Traceback" in logged.text
    assert "raise error()" in logged.text


async def test_a_retryable_database_error_is_retried_with_backoff(
    app_pool: asyncpg.Pool, logged: pytest.LogCaptureFixture
) -> None:
    runs, unit = failing(3, lambda: asyncpg.ConnectionDoesNotExistError("connection lost"))
    backoff = RecordingBackoff(base=0.01, cap=0.05)
    runner = BackgroundRunner(app_pool, backoff=backoff)
    runner.add(Periodic("flaky", NEVER, unit))
    runner.start()
    try:
        await eventually(lambda: runner.status()["flaky"].last_success is not None, "a success")
    finally:
        assert await runner.stop() == {}

    assert len(runs) == 4
    # A longer pause after each consecutive failure (the backoff grows with the count).
    assert backoff.asked == [1, 2, 3]
    warnings = records(logged, logging.WARNING)
    assert len(warnings) == 3
    for record in warnings:
        message = record.getMessage()
        assert "flaky failed: ConnectionDoesNotExistError: connection lost; retrying in" in message
        assert record.exc_info is None  # an outage is no bug: no traceback
    assert records(logged, logging.ERROR) == []


async def test_the_backoff_starts_again_after_a_success(logged: pytest.LogCaptureFixture) -> None:
    """A long-lived task's heartbeat is its success: a later failure pauses briefly again."""
    backoff = RecordingBackoff(base=0.01, cap=0.05)
    runs: list[int] = []

    async def unit(heartbeat: Heartbeat) -> None:
        runs.append(len(runs))
        if len(runs) in (3, 5):
            heartbeat()  # connected; then the connection drops
        if len(runs) < 6:
            raise ConnectionResetError("dropped")
        await asyncio.Event().wait()

    runner = BackgroundRunner(None, backoff=backoff)
    runner.add(LongLived("listener", unit))
    runner.start()
    try:
        await eventually(lambda: len(runs) == 6, "six runs")
    finally:
        assert await runner.stop() == {}
    assert backoff.asked == [1, 2, 1, 2, 1]


def test_the_backoff_is_capped_and_jittered() -> None:
    backoff = Backoff(base=0.5, cap=30.0)
    for failures, ceiling in ((1, 0.5), (2, 1.0), (4, 4.0), (7, 30.0), (10_000, 30.0)):
        delays = [backoff.delay(failures) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays), failures
        assert len(set(delays)) > 1  # full jitter: not one fixed pause


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError(), True),  # the pool's acquire timeout
        (asyncpg.InterfaceError("connection is closed"), True),
        (asyncpg.ConnectionDoesNotExistError("closed in the middle of operation"), True),
        (asyncpg.AdminShutdownError("terminating connection"), True),
        (asyncpg.CannotConnectNowError("the database system is starting up"), True),
        (asyncpg.DeadlockDetectedError("deadlock detected"), True),
        (asyncpg.SerializationError("could not serialize access"), True),
        (asyncpg.TooManyConnectionsError("too many clients"), True),
        # A failover: a write on a demoted server, no read-write host yet, a confused protocol.
        (asyncpg.ReadOnlySQLTransactionError("read-only transaction"), True),
        (asyncpg.exceptions.TargetServerAttributeNotMatched("no read-write host"), True),
        (asyncpg.InternalClientError("cannot switch to state 12"), True),
        (asyncpg.UndefinedTableError('relation "x" does not exist'), False),
        (asyncpg.InsufficientPrivilegeError("permission denied"), False),
        (asyncpg.UniqueViolationError("duplicate key"), False),
        (ValueError("a bug"), False),
    ],
)
def test_which_errors_are_retryable(error: Exception, retryable: bool) -> None:
    assert is_retryable(error) is retryable


# --- runs ---------------------------------------------------------------------------------


async def test_a_full_batch_is_followed_at_once_by_the_next_run(app_pool: asyncpg.Pool) -> None:
    runs: list[int] = []

    async def unit(conn: Conn) -> int:
        runs.append(1)
        return 10 if len(runs) < 4 else 3  # three full batches, then less

    runner = BackgroundRunner(app_pool, backoff=FAST)
    runner.add(Periodic("batches", NEVER, unit, batch=10))
    runner.start()
    try:
        await eventually(lambda: len(runs) == 4, "four runs without waiting the interval")
        await asyncio.sleep(0.05)
        assert len(runs) == 4  # then the interval (an hour)
    finally:
        assert await runner.stop() == {}


def test_task_names_are_unique_and_pooled_tasks_need_a_pool() -> None:
    async def unit(conn: Conn) -> int:
        return 0

    runner = BackgroundRunner(None)
    with pytest.raises(ValueError, match="needs a pool"):
        runner.add(Periodic("purge", NEVER, unit))

    async def forever(heartbeat: Heartbeat) -> None:
        await asyncio.Event().wait()

    runner.add(LongLived("listener", forever))
    with pytest.raises(ValueError, match="already registered"):
        runner.add(LongLived("listener", forever))


# --- shutdown -----------------------------------------------------------------------------


async def test_shutdown_waits_for_the_tasks_and_reports_their_errors(
    logged: pytest.LogCaptureFixture,
) -> None:
    cleaned: list[str] = []

    async def tidy(heartbeat: Heartbeat) -> None:
        heartbeat()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)  # cleaning up takes a while; stop() waits for it
            cleaned.append("tidy")

    async def untidy(heartbeat: Heartbeat) -> None:
        heartbeat()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("could not close the connection") from None

    runner = BackgroundRunner(None, backoff=FAST)
    runner.add(LongLived("tidy", tidy))
    runner.add(LongLived("untidy", untidy))
    runner.start()
    await eventually(
        lambda: all(s.last_success for s in runner.status().values()), "both tasks started"
    )

    errors = await asyncio.wait_for(runner.stop(), WAIT_SECONDS)

    assert cleaned == ["tidy"]
    assert list(errors) == ["untidy"]
    assert isinstance(errors["untidy"], RuntimeError)
    assert not any(s.running for s in runner.status().values())
    [report] = [r for r in records(logged, logging.ERROR) if "on shutdown" in r.getMessage()]
    assert report.getMessage() == "background task untidy ended with an error on shutdown"
    assert report.exc_info is not None
    assert report.exc_info[1] is errors["untidy"]


async def test_a_task_ended_from_elsewhere_is_reported_at_once(
    logged: pytest.LogCaptureFixture,
) -> None:
    async def forever(heartbeat: Heartbeat) -> None:
        heartbeat()
        await asyncio.Event().wait()

    runner = BackgroundRunner(None, backoff=FAST)
    runner.add(LongLived("listener", forever))
    runner.start()
    await eventually(lambda: runner.status()["listener"].last_success is not None, "started")
    [task] = [t for t in asyncio.all_tasks() if t.get_name() == "listener"]
    task.cancel()

    def reported() -> bool:
        return any("was cancelled" in r.getMessage() for r in records(logged, logging.ERROR))

    await eventually(reported, "the end reported")
    assert runner.status()["listener"].running is False
    assert await runner.stop() == {}


async def test_stopping_a_runner_that_never_started_does_nothing() -> None:
    runner = BackgroundRunner(None)
    assert await runner.stop() == {}


# --- /health ------------------------------------------------------------------------------


def _parse(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


async def _tasks(client: AsyncTestClient[Any]) -> dict[str, Any]:
    response = await client.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["database"]) == ("ok", "ok")
    tasks: dict[str, Any] = body["tasks"]
    return tasks


async def _until_all_succeeded(client: AsyncTestClient[Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while True:
        tasks = await _tasks(client)
        if all(t["last_success"] for t in tasks.values()):
            return tasks
        if loop.time() > deadline:
            pytest.fail(f"not every task succeeded within {WAIT_SECONDS} s: {tasks}")
        await asyncio.sleep(0.05)


async def test_health_shows_each_tasks_last_success(client: AsyncTestClient[Any]) -> None:
    tasks = await _until_all_succeeded(client)
    # No webhooks in the test settings: no sender.
    assert set(tasks) == {
        PURGE_TASK,
        ESCALATION_TASK,
        SESSION_CHECKS_TASK,
        SIGNALS_TASK,
        CHECKPOINT_TASK,
        LISTENER_TASK,
    }
    for name, task in tasks.items():
        assert task["running"] is True, name
        assert (task["failures"], task["last_error"], task["last_error_at"]) == (0, None, None)
        success = _parse(task["last_success"])
        assert success is not None, name
        assert success.utcoffset() == timedelta(0), name


async def test_health_shows_the_sender_when_webhooks_are_configured(settings: Settings) -> None:
    alerts = replace(
        settings.alerts,
        webhook_urls=("http://127.0.0.1:9/hook",),
        webhook_secret="background-test-secret-of-32-bytes",
    )
    async with AsyncTestClient(app=create_app(replace(settings, alerts=alerts))) as client:
        tasks = await _until_all_succeeded(client)
    assert set(tasks) == {
        PURGE_TASK,
        ESCALATION_TASK,
        SESSION_CHECKS_TASK,
        SIGNALS_TASK,
        CHECKPOINT_TASK,
        LISTENER_TASK,
        DELIVERY_TASK,
    }
