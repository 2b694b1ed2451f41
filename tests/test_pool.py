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
        # A failover under way (docs/operations.md#high-availability-patroni).
        pytest.param(asyncpg.ReadOnlySQLTransactionError("read-only"), 503, id="demoted"),
        pytest.param(
            asyncpg.exceptions.TargetServerAttributeNotMatched("no read-write host"),
            503,
            id="no-primary",
        ),
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


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(asyncpg.ReadOnlySQLTransactionError("read-only"), id="demoted"),
        pytest.param(asyncpg.AdminShutdownError("terminating connection"), id="shut-down"),
        pytest.param(asyncpg.ConnectionDoesNotExistError("closed"), id="connection-lost"),
    ],
)
async def test_losing_the_primary_drops_every_pooled_connection(
    database_url: str, error: Exception
) -> None:
    """After a failover the pool's other connections lead to the old primary: it drops
    them all, and the next request connects to the new one (the multi-host URL's
    read-write host)."""
    pool = await create_pool(database_url, min_size=2, max_size=2, acquire_timeout=BOUND)
    try:
        async with pool.acquire() as first, pool.acquire() as second:
            before = {first.get_server_pid(), second.get_server_pid()}
        with pytest.raises(type(error)):
            async with transaction(pool):
                raise error
        async with pool.acquire() as first, pool.acquire() as second:
            after = {first.get_server_pid(), second.get_server_pid()}
        assert not before & after, "a connection of before the failover was lent again"
    finally:
        await pool.close()


async def test_an_ordinary_error_keeps_the_pooled_connections(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1, acquire_timeout=BOUND)
    try:
        async with pool.acquire() as conn:
            before = conn.get_server_pid()
        with pytest.raises(asyncpg.UniqueViolationError):
            async with transaction(pool):
                raise asyncpg.UniqueViolationError("duplicate key")
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == before
    finally:
        await pool.close()
