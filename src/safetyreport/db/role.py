"""Which server a pool's connections reach: a primary (writes) or a replica."""

from __future__ import annotations

import asyncio
from typing import Literal, TypeAlias

import asyncpg

from safetyreport.db.pool import Conn, connection

Role: TypeAlias = Literal["primary", "replica", "unreachable"]


async def is_primary(conn: Conn) -> bool:
    """A server in recovery (a standby, a replica, a restore) takes no writes."""
    return not await conn.fetchval("SELECT pg_is_in_recovery()")


async def role_of(pool: asyncpg.Pool, within: float) -> Role:
    """The role of the server a pooled connection reaches now, within ``within``
    seconds (waiting for the connection included)."""
    try:
        async with asyncio.timeout(within), connection(pool) as conn:
            return "primary" if await is_primary(conn) else "replica"
    except Exception:  # refused, timed out, closed, failing over: cannot write now
        return "unreachable"
