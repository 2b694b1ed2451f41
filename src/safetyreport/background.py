"""The background tasks, supervised by one runner.

A task is a unit of work and how often to do it; the runner owns the rest: the loop,
the pause between runs, the database connection, failures and restarts. Two kinds:

- ``Periodic``: one unit of work per run (purge, escalate, sign checkpoints, deliver),
  then a pause of ``interval`` (none when the run did a full batch: more may be due).
  Its unit gets a pooled connection inside a transaction, committed when it returns;
  ``PeriodicOnPool`` gets the pool instead, for a unit that needs several transactions.
- ``LongLived``: a unit that runs until something breaks (the alert listener, which
  holds a LISTEN connection), calling its heartbeat whenever it proved itself working.

A unit that raises is run again after a pause of the one backoff (exponential, capped,
full jitter), so an outage is not hammered and a crash loop does not spin. Database
and network errors an outage or a restart causes (``RETRYABLE_ERRORS``) are logged as a
warning; anything else is a bug, logged with its traceback, and the task is restarted
all the same: a background task must never end for good without anyone noticing.
``status()`` tells, for each task, whether it runs, its last success and its last error
(``/health`` shows it). ``stop()`` cancels the tasks, waits for them and logs any error
they ended with.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

import asyncpg
import msgspec

from safetyreport.db.pool import Conn, transaction
from safetyreport.metrics import facts

_log = logging.getLogger(__name__)

# What a database outage, a restart or a failover raises; the task retries after a pause.
# A Postgres error of any other class (an undefined table, a permission refused, a
# constraint violated) is not: the same statement fails the same way until someone
# changes something, so it is logged with its traceback (and still retried, slowly).
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    # Refused, reset or unreachable; TimeoutError (the pool's acquire timeout, a
    # command timeout, a connect timeout) is an OSError too.
    OSError,
    # The client side of a lost connection ("connection is closed", "pool is closing").
    asyncpg.InterfaceError,
    # Class 08: connection exceptions, ConnectionDoesNotExistError among them.
    asyncpg.PostgresConnectionError,
    # Class 40: serialization failures and deadlocks; the transaction may simply be rerun.
    asyncpg.TransactionRollbackError,
    # Class 57: admin or crash shutdown, "the database system is starting up", a
    # statement cancelled by the server.
    asyncpg.OperatorInterventionError,
    # Class 53: too many connections, out of memory, disk full: may pass by itself.
    asyncpg.InsufficientResourcesError,
    # A failover under way: a write reached a demoted server (25006), or no host of a
    # multi-host DATABASE_URL is read-write yet. The next run reaches the new primary.
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.exceptions.TargetServerAttributeNotMatched,
    # asyncpg's protocol confused by a connection lost mid-statement.
    asyncpg.InternalClientError,
)


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, RETRYABLE_ERRORS)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True, slots=True)
class Backoff:
    """Pauses after consecutive failures: a random time up to ``base * 2**(n-1)``, capped.

    Full jitter, so that tasks (and service processes) that failed together do not
    all come back at the same moment.
    """

    base: float = 0.5
    cap: float = 30.0

    def delay(self, failures: int) -> float:
        # The exponent is bounded so that a long outage cannot overflow the float.
        ceiling = min(self.cap, self.base * 2 ** min(max(failures - 1, 0), 32))
        return random.uniform(0, ceiling)  # noqa: S311 (timing jitter, not a secret)


Heartbeat: TypeAlias = Callable[[], None]


@dataclass(frozen=True, slots=True)
class Periodic:
    """Run ``unit(conn)`` in a transaction of its own every ``interval``.

    The unit returns how much work it did; a run that did ``batch`` or more is followed
    by the next at once (None: always pause), as more may be due.
    """

    name: str
    interval: timedelta
    unit: Callable[[Conn], Awaitable[int]]
    batch: int | None = None


@dataclass(frozen=True, slots=True)
class PeriodicOnPool:
    """As ``Periodic``, for a unit that needs several transactions: it gets the pool."""

    name: str
    interval: timedelta
    unit: Callable[[asyncpg.Pool], Awaitable[int]]
    batch: int | None = None


@dataclass(frozen=True, slots=True)
class LongLived:
    """Run ``unit(heartbeat)``, which works until it fails; it is then started again.

    The unit calls ``heartbeat()`` whenever it has shown itself working (connected, a
    batch handled): that is its last success, and it resets the backoff.
    """

    name: str
    unit: Callable[[Heartbeat], Awaitable[None]]


Task: TypeAlias = Periodic | PeriodicOnPool | LongLived


class TaskStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What ``/health`` shows of a task. The error is its class only: /health is public,
    and messages may name hosts or tables; the log has the whole of it."""

    running: bool
    last_success: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    # Failures since the last success (0: healthy).
    failures: int


@dataclass(eq=False, slots=True)
class _Supervised:
    task: Task
    asyncio_task: asyncio.Task[None] | None = None
    last_success: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    failures: int = 0

    def succeeded(self) -> None:
        self.last_success = datetime.now(UTC)
        self.failures = 0

    def failed(self, exc: BaseException) -> None:
        self.last_error = type(exc).__name__
        self.last_error_at = datetime.now(UTC)
        self.failures += 1

    def status(self) -> TaskStatus:
        return TaskStatus(
            running=self.asyncio_task is not None and not self.asyncio_task.done(),
            last_success=self.last_success,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            failures=self.failures,
        )


@dataclass(eq=False)
class BackgroundRunner:
    """Runs the registered tasks from ``start()`` until ``stop()``.

    ``pool`` gives the periodic tasks their connections (None: long-lived tasks only).
    """

    pool: asyncpg.Pool | None
    backoff: Backoff = field(default_factory=Backoff)
    _tasks: dict[str, _Supervised] = field(default_factory=dict, init=False)
    _stopping: bool = field(default=False, init=False)

    def add(self, task: Task) -> None:
        if task.name in self._tasks:
            raise ValueError(f"a background task named {task.name!r} is already registered")
        if self.pool is None and not isinstance(task, LongLived):
            raise ValueError(f"the background task {task.name!r} needs a pool")
        self._tasks[task.name] = _Supervised(task)

    def start(self) -> None:
        for supervised in self._tasks.values():
            if supervised.asyncio_task is None:
                running = asyncio.create_task(
                    self._supervise(supervised), name=supervised.task.name
                )
                running.add_done_callback(self._report_end)
                supervised.asyncio_task = running

    def status(self) -> dict[str, TaskStatus]:
        return {name: supervised.status() for name, supervised in self._tasks.items()}

    async def stop(self) -> dict[str, BaseException]:
        """Cancel every task and wait for it; log (and return) the errors they ended with."""
        self._stopping = True
        running = [s.asyncio_task for s in self._tasks.values() if s.asyncio_task is not None]
        for task in running:
            task.cancel()
        results = await asyncio.gather(*running, return_exceptions=True)
        errors = {
            task.get_name(): result
            for task, result in zip(running, results, strict=True)
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError)
        }
        for name, error in errors.items():
            _log.error("background task %s ended with an error on shutdown", name, exc_info=error)
        return errors

    def _report_end(self, task: asyncio.Task[None]) -> None:
        """Tell at once of a task that ended other than through ``stop()`` (which reports
        its own): cancelled from elsewhere, or a BaseException the supervisor let through."""
        if self._stopping:
            return
        if task.cancelled():
            _log.error("background task %s was cancelled; it no longer runs", task.get_name())
        else:
            _log.error("background task %s stopped", task.get_name(), exc_info=task.exception())

    async def _supervise(self, supervised: _Supervised) -> None:
        task = supervised.task
        while True:
            try:
                pause = await self._run_once(task, supervised.succeeded)
            except Exception as exc:  # the task outlives any one run's failure
                if self._stopping:
                    raise  # raised while cancelled (cleaning up): stop() reports it
                supervised.failed(exc)
                pause = self.backoff.delay(supervised.failures)
                if is_retryable(exc):
                    _log.warning(
                        "%s failed: %s; retrying in %.1f s", task.name, _describe(exc), pause
                    )
                else:
                    _log.error(
                        "%s failed: %s; restarting in %.1f s",
                        task.name,
                        _describe(exc),
                        pause,
                        exc_info=exc,
                    )
            await asyncio.sleep(pause)

    async def _run_once(self, task: Task, heartbeat: Heartbeat) -> float:
        """One run of ``task``; the pause before the next."""
        if isinstance(task, LongLived):
            await task.unit(heartbeat)
            raise RuntimeError(f"{task.name} returned; it should run until it fails")
        assert self.pool is not None  # checked in add()
        if isinstance(task, Periodic):
            async with transaction(self.pool) as conn:
                with facts.pending(conn) as written:
                    done = await task.unit(conn)
            facts.committed(*written)
        else:
            done = await task.unit(self.pool)
        heartbeat()
        if task.batch is not None and done >= task.batch:
            return 0
        return task.interval.total_seconds()
