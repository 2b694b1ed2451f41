"""asyncpg pools with msgspec JSON codecs and UTC sessions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
from asyncpg.pool import PoolAcquireContext, PoolConnectionProxy

# A connection of our own or one lent by a pool: feature code accepts both.
# (asyncpg's classes are generic only in its stubs, hence the string form.)
if TYPE_CHECKING:
    Conn: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
else:
    Conn = asyncpg.Connection | PoolConnectionProxy

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def _encode_json(value: Any) -> str:
    return _encoder.encode(value).decode()


def _decode_json(value: str) -> Any:
    return _decoder.decode(value)


async def init_connection(conn: Conn) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=_encode_json, decoder=_decode_json, schema="pg_catalog"
        )


SERVER_SETTINGS = {"timezone": "UTC", "application_name": "safetyreport"}


async def _no_session_state(conn: asyncpg.Connection[Any]) -> None:
    """Release a connection without asyncpg's reset query (a round trip per request).

    asyncpg still rolls back a transaction left open. The reset query would also drop
    session advisory locks, cursors, LISTENs and SET values, and the service keeps none
    on pooled connections: its locks are transaction-scoped (pg_advisory_xact_lock),
    its cursors live inside transactions, LISTEN has a connection of its own, and
    settings are fixed at connect (server_settings).
    """


class TimedPool(asyncpg.Pool):
    """A pool whose connections are given within a deadline, or not at all.

    Every path to a pooled connection (``acquire``, and ``fetch``/``execute``/... which
    acquire through it) waits at most ``acquire_timeout`` seconds, then raises
    ``TimeoutError``, which the error handler answers as 503 with Retry-After: a request
    that cannot get a connection fails fast instead of hanging.
    """

    __slots__ = ("acquire_timeout",)

    def __init__(self, *args: Any, acquire_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout = acquire_timeout

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext:
        return super().acquire(timeout=self.acquire_timeout if timeout is None else timeout)


# The server a connection is on stopped being the primary (a failover or switchover
# demoted it, shut it down or lost it), or no server is the primary right now. With a
# multi-host DATABASE_URL (target_session_attrs=read-write, docs/operations.md) every
# new connection goes to the current primary, so the pool drops the connections it holds
# (``expire_connections``: idle ones at once, busy ones when released) rather than lend
# each dead or read-only one out once more. The request is answered 503 with Retry-After
# (errors.py); the client's retry reaches the new primary.
PRIMARY_LOST: tuple[type[BaseException], ...] = (
    asyncpg.ReadOnlySQLTransactionError,  # 25006: a write reached a demoted server
    asyncpg.exceptions.TargetServerAttributeNotMatched,  # no host is read-write (yet)
    asyncpg.PostgresConnectionError,  # class 08: the connection is gone
    asyncpg.OperatorInterventionError,  # class 57: admin or crash shutdown, starting up
    asyncpg.InterfaceError,  # "connection is closed" on our side
    # A connection lost mid-statement can leave asyncpg's protocol confused ("cannot
    # switch to state 12; another operation is in progress"): that connection is done.
    asyncpg.InternalClientError,
    ConnectionError,  # refused or reset
)


@contextlib.asynccontextmanager
async def _acquired(pool: asyncpg.Pool) -> AsyncIterator[Conn]:
    """A pooled connection; the pool's connections are expired when the primary is lost."""
    try:
        async with pool.acquire() as conn:
            yield conn
    except PRIMARY_LOST:
        await pool.expire_connections()
        raise


# Each host of a multi-host DATABASE_URL gets this long to connect and show that it is
# writable. asyncpg's own connect timeout covers the hosts together, so one that accepts
# TCP but never answers (a frozen machine listed first) would hold every new connection
# although another host is the primary by now.
HOST_CONNECT_SECONDS = 3.0
_NEXT_HOST_ERRORS = (
    OSError,  # refused, unreachable, reset; TimeoutError (this host's deadline) too
    asyncpg.PostgresError,  # starting up, shutting down, no such database (yet) there
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # TargetServerAttributeNotMatched: not read-write
)


def single_host_urls(url: str) -> list[str]:
    """``url`` once per host it names, in order (``[url]`` when it names one host)."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    names = hosts.split(",")
    if len(names) < 2:
        return [url]
    return [urlunsplit(parts._replace(netloc=f"{userinfo}{at}{name}")) for name in names]


async def connect_to_primary(url: str, **kwargs: Any) -> asyncpg.Connection[Any]:
    """``asyncpg.connect``, with a deadline per host of a multi-host URL (its
    ``target_session_attrs`` checked on each); the last host's error if none will do."""
    urls = single_host_urls(url)
    if len(urls) == 1:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(url, **kwargs)
        return conn
    last: BaseException | None = None
    for one in urls:
        try:
            async with asyncio.timeout(HOST_CONNECT_SECONDS):
                conn = await asyncpg.connect(one, **kwargs)
        except _NEXT_HOST_ERRORS as exc:
            last = exc
        else:
            return conn
    assert last is not None
    raise last


# Without a setting (the CLI, tools): wait up to this long for a pooled connection.
DEFAULT_ACQUIRE_TIMEOUT = 5.0


async def create_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    acquire_timeout: float = DEFAULT_ACQUIRE_TIMEOUT,
) -> asyncpg.Pool:
    # As asyncpg.create_pool does, with our pool class.
    pool = TimedPool(
        url,
        acquire_timeout=acquire_timeout,
        min_size=min_size,
        max_size=max_size,
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connect=connect_to_primary,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        init=init_connection,
        reset=_no_session_state,
        server_settings=SERVER_SETTINGS,
        command_timeout=60,
    )
    await pool
    return pool


async def connect(url: str) -> asyncpg.Connection[Any]:
    conn = await connect_to_primary(url, server_settings=SERVER_SETTINGS)
    await init_connection(conn)
    return conn


@contextlib.asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[Conn]:
    """A pooled connection without a transaction, for one statement that commits by itself
    (resolving a session token on every request: a BEGIN and COMMIT would double its
    round trips)."""
    async with _acquired(pool) as conn:
        yield conn


@contextlib.asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[Conn]:
    """A pooled connection inside a transaction: committed when the block ends, rolled back
    when it raises. Requests get theirs from the request context (``db``); background
    tasks get theirs here too. With ``connection`` and ``read_snapshot``, the only code
    that acquires from a pool.
    """
    async with _acquired(pool) as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            yield conn
        except BaseException:
            # The error that ended the block is the one to report. A rollback that fails
            # too (the connection died under the block) would hide it behind "connection
            # is closed"; the pool replaces a dead connection on release.
            with contextlib.suppress(Exception):
                await transaction.rollback()
            raise
        await transaction.commit()


@contextlib.asynccontextmanager
async def read_snapshot(pool: asyncpg.Pool) -> AsyncIterator[Conn]:
    """A connection of its own in a read-only repeatable-read transaction (exports).

    Acquired here, in the generator that streams the response: a connection from a
    dependency would go back to the pool before the body is sent.
    """
    async with (
        _acquired(pool) as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        yield conn


async def batches(
    conn: Conn, sql: str, args: Sequence[Any], size: int
) -> AsyncIterator[list[asyncpg.Record]]:
    """The rows of ``sql``, ``size`` at a time, through a server-side cursor.

    The cursor lives in the caller's transaction and ends with it.
    """
    cursor = await conn.cursor(sql, *args)
    while rows := await cursor.fetch(size):
        yield rows
