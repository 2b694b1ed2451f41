"""What a scrape reads: one cheap query, the pools' counters and the tasks' states."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from safetyreport.background import TaskStatus
from safetyreport.db.pool import connection
from safetyreport.metrics.registry import DatabaseSample, PoolUsage, TaskSample

_log = logging.getLogger(__name__)

# A scrape must not hang on a database that does not answer.
DATABASE_TIMEOUT_SECONDS = 2.0

# One round trip. The outboxes' partial indexes on pending rows keep it cheap: only
# rows still waiting are read, however long the ledgers grow.
_SAMPLE = """
SELECT pg_is_in_recovery() AS in_recovery,
       (SELECT count(*) FROM notifications WHERE status = 'pending') AS webhooks_pending,
       (SELECT extract(epoch FROM now() - min(created_at))
        FROM notifications WHERE status = 'pending') AS webhooks_oldest,
       (SELECT count(*) FROM pages WHERE status = 'pending') AS pages_pending,
       (SELECT extract(epoch FROM now() - min(created_at))
        FROM pages WHERE status = 'pending') AS pages_oldest
"""


async def sample_database(pool: asyncpg.Pool) -> DatabaseSample:
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT_SECONDS), connection(pool) as conn:
            row = await conn.fetchrow(_SAMPLE)
    except Exception as exc:  # a scrape still answers, saying the database did not
        _log.warning("metrics: the database did not answer: %s", type(exc).__name__)
        return DatabaseSample()
    assert row is not None
    return DatabaseSample(
        primary=not row["in_recovery"],
        oldest_pending_seconds={
            "webhooks": float(row["webhooks_oldest"] or 0),
            "pages": float(row["pages_oldest"] or 0),
        },
        pending={"webhooks": row["webhooks_pending"], "pages": row["pages_pending"]},
    )


def pool_usage(pool: asyncpg.Pool) -> PoolUsage:
    return PoolUsage(
        size=pool.get_size(),
        idle=pool.get_idle_size(),
        max_size=pool.get_max_size(),
        waiting=_waiting(pool),
    )


def _waiting(pool: asyncpg.Pool) -> int | None:
    """Acquisitions blocked on the pool's queue of free connections.

    asyncpg has no public counter for them: its pool hands out connections through an
    asyncio queue, whose waiting getters are these. None if a release changes that.
    """
    getters = getattr(getattr(pool, "_queue", None), "_getters", None)
    if getters is None:
        return None
    return sum(1 for getter in getters if not getter.done())


def task_samples(statuses: dict[str, TaskStatus]) -> dict[str, TaskSample]:
    return {
        name: TaskSample(running=s.running, last_success=s.last_success, failures=s.failures)
        for name, s in statuses.items()
    }
