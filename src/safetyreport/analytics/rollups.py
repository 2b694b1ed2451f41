"""Keeping the rate rollups equal to a recount (migration 0020).

Writes mark the periods they touch dirty, by trigger, in their own transaction. Before
reading, ``refresh`` takes the dirty marks of the clinics it reads and recounts those
periods (``analytics_refresh``), in the caller's transaction. It skips a mark a write in
flight holds (that write has not committed, and marks it again for the next refresh), so
it never waits on a write and never deadlocks with one: an answer is at most the writes
in flight behind.
"""

from __future__ import annotations

from safetyreport.db.pool import Conn

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


async def refresh(conn: Conn, clinics: list[int] | None) -> int:
    """Recount the dirty periods of ``clinics`` (None: every clinic); how many."""
    taken = await conn.fetch(_TAKE, clinics)
    if taken:
        await conn.execute(
            _REFRESH,
            [r["clinic_id"] for r in taken],
            [r["grain"] for r in taken],
            [r["period_start"] for r in taken],
        )
    return len(taken)
