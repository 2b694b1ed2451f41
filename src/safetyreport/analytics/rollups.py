"""Keeping the rate rollups equal to a recount (migration 0020).

Writes mark the periods they touch dirty, by trigger, in their own transaction (an upsert
that holds the mark until the write commits). ``refresh`` takes the marks (deletes them)
and recounts those periods (``analytics_refresh``) in a transaction of its own, which it
commits before any read of the rollups begins (``provide_fresh_db``, the signal check):

- it skips a mark a write in flight holds (``SKIP LOCKED``): that write has not
  committed, and its mark stays for the next refresh, so an answer is at most the
  writes in flight behind;
- it waits on nothing and holds no audit chain, so no write (which holds its clinic's
  chain while it marks a period) and no reader waits on it in a cycle; a write that
  would mark a period whose mark it took waits only until it commits, and then marks
  it anew;
- two refreshes never recount one period at once: a mark is taken by one of them, and a
  write marks the period again only once that refresh has committed.
"""

from __future__ import annotations

import asyncpg

from safetyreport.db.pool import Conn, transaction

# The marks of the clinics ($1, NULL: every clinic), taken: deleted, and their periods
# recounted in the next statement (a snapshot that sees every write that committed
# before the marks were taken).
_TAKE = """
DELETE FROM analytics_dirty d
WHERE (d.clinic_id, d.grain, d.period_start) IN (
    SELECT clinic_id, grain, period_start FROM analytics_dirty
    WHERE $1::bigint[] IS NULL OR clinic_id = ANY($1::bigint[])
    FOR UPDATE SKIP LOCKED
)
RETURNING d.clinic_id, d.grain, d.period_start
"""
_REFRESH = """
SELECT analytics_refresh(t.clinic_id, t.grain, t.period_start)
FROM unnest($1::bigint[], $2::text[], $3::date[]) AS t(clinic_id, grain, period_start)
"""


async def refresh(pool: asyncpg.Pool, clinics: list[int] | None = None) -> int:
    """Recount the dirty periods of ``clinics`` (None: every clinic) in a transaction of
    its own, committed on return; how many."""
    async with transaction(pool) as conn:
        return await recount_dirty(conn, clinics)


async def recount_dirty(conn: Conn, clinics: list[int] | None = None) -> int:
    """``refresh`` on a connection in a transaction that takes nothing else (an audit
    chain above all) before it commits: the bulk loads of bench/ use it."""
    taken = await conn.fetch(_TAKE, clinics)
    if taken:
        await conn.execute(
            _REFRESH,
            [r["clinic_id"] for r in taken],
            [r["grain"] for r in taken],
            [r["period_start"] for r in taken],
        )
    return len(taken)
