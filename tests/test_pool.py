"""The pool gives a connection within its deadline or raises, on every path (issue 10, item 1)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from safetyreport.db.pool import create_pool, transaction
from safetyreport.errors import NotAuthenticated, status_of

BOUND = 10.0  # seconds: proves nothing hangs; not a measurement


def _group_caused_by(cause: Exception) -> ExceptionGroup[Exception]:
    group = ExceptionGroup("cleanup", [ValueError("unrelated cleanup failure")])
    group.__cause__ = cause
    return group


@pytest.mark.parametrize(
    "use",
    [
        pytest.param(lambda pool: pool.fetchval("SELECT 1"), id="fetchval"),
        pytest.param(lambda pool: pool.fetchrow("SELECT 1"), id="fetchrow"),
        pytest.param(lambda pool: pool.execute("SELECT 1"), id="execute"),
        pytest.param(lambda pool: pool.acquire(), id="acquire"),
    ],
)
async def test_a_busy_pool_raises_timeout_instead_of_waiting(
    database_url: str, use: Callable[[asyncpg.Pool], Awaitable[Any]]
) -> None:
    pool = await create_pool(database_url, max_size=1, acquire_timeout=0.2)
    try:
        async with pool.acquire():
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(use(pool), BOUND)
        # Free again: the same call gets its connection.
        async with asyncio.timeout(BOUND):
            result = await use(pool)
            if isinstance(result, asyncpg.pool.PoolConnectionProxy):
                await pool.release(result)
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        pytest.param(TimeoutError(), 503, id="pool-timeout"),
        pytest.param(ConnectionRefusedError(), 503, id="database-down"),
        pytest.param(NotAuthenticated("no token"), 401, id="not-authenticated"),
        pytest.param(ValueError("bug"), 500, id="unexpected"),
        # A rollback that failed while another error was on its way (dependency cleanup).
        pytest.param(
            ExceptionGroup("cleanup", [asyncpg.InterfaceError("connection is closed")]),
            503,
            id="cleanup-database-down",
        ),
        pytest.param(_group_caused_by(NotAuthenticated("no token")), 401, id="cleanup-cause"),
    ],
)
def test_the_request_log_names_the_status_the_client_gets(exc: Exception, status: int) -> None:
    """A pool timeout in the authentication middleware is a 503 to the client and in the log."""
    assert status_of(exc) == status


async def test_a_transaction_whose_connection_dies_reports_the_error_that_ended_it(
    database_url: str,
) -> None:
    """Not the rollback's "connection is closed": that would turn a 4xx or a 503 into 500."""
    pool = await create_pool(database_url, max_size=1, acquire_timeout=BOUND)
    killer = await asyncpg.connect(database_url)
    try:

        async def fail_as_the_connection_dies() -> None:
            async with transaction(pool) as conn:
                await killer.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
                raise LookupError("the original error")

        with pytest.raises(LookupError, match="the original error"):
            await fail_as_the_connection_dies()
        # The pool replaced the dead connection.
        async with transaction(pool) as conn:
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await killer.close()
        await pool.close()
