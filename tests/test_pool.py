"""The pool gives a connection within its deadline or raises, on every path (issue 10, item 1)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from safetyreport.db import pool as pool_module
from safetyreport.db.pool import create_pool, single_host_urls, transaction
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


def test_a_multi_host_url_is_tried_one_host_at_a_time() -> None:
    url = "postgresql://u:p@db1:5432,db2:5433/sr?target_session_attrs=read-write"
    assert single_host_urls(url) == [
        "postgresql://u:p@db1:5432/sr?target_session_attrs=read-write",
        "postgresql://u:p@db2:5433/sr?target_session_attrs=read-write",
    ]
    assert single_host_urls("postgresql://u@db1/sr") == ["postgresql://u@db1/sr"]
    assert single_host_urls("postgresql:///sr?host=/run/pg") == ["postgresql:///sr?host=/run/pg"]


async def test_a_host_that_never_answers_is_passed_over_for_the_next(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frozen machine listed first (it accepts TCP, then says nothing) costs each new
    connection one host's deadline, not asyncpg's whole connect timeout."""
    parts = urlsplit(database_url)
    if parts.port is None:
        pytest.skip("needs a server on TCP (the embedded one listens on a socket only)")
    monkeypatch.setattr(pool_module, "HOST_CONNECT_SECONDS", 0.5)
    held: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda _r, w: held.append(w), "127.0.0.1", 0)
    silent_port = silent.sockets[0].getsockname()[1]
    userinfo, _, host = parts.netloc.rpartition("@")
    url = parts._replace(netloc=f"{userinfo}@127.0.0.1:{silent_port},{host}").geturl()
    pool = None
    try:
        async with asyncio.timeout(BOUND):
            pool = await create_pool(url, min_size=1, max_size=1, acquire_timeout=BOUND)
            assert await pool.fetchval("SELECT 1") == 1
        assert held, "the silent host was not tried first"
    finally:
        if pool is not None:
            await pool.close()
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()
