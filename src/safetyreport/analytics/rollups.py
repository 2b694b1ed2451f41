"""Keeping the rate rollups equal to a recount (migration 0020).

Writes mark the periods they touch dirty, by trigger, in their own transaction. Before
reading, ``refresh`` takes the dirty marks of the clinics it reads and recounts those
periods (``analytics_refresh``), in the caller's transaction. It skips a mark a write in
flight holds (that write has not committed, and marks it again for the next refresh), so
it never waits on a write's mark: an answer is at most the writes in flight behind.

It locks the audit chains of the clinics it recounts before taking their marks, as every
write takes its clinic's chain: a write that would mark a period again while the refresh
holds the taken (deleted) mark waits on the chain first, so the refresh, which audits
the read or raises alerts in those chains afterwards, never waits on such a write in a
cycle (a deadlock).
"""

from __future__ import annotations

from safetyreport import audit
from safetyreport.db.pool import Conn

# The clinics with marks ($1, NULL: every clinic), to lock their chains first.
_DIRTY = """
SELECT DISTINCT c.id, c.code FROM analytics_dirty d JOIN clinics c ON c.id = d.clinic_id
WHERE $1::bigint[] IS NULL OR d.clinic_id = ANY($1::bigint[])
"""

# The marks of the clinics ($1, whose chains are locked), taken: deleted, and their periods
# recounted in the next statement (a snapshot that sees every write that committed
# before the marks were taken).
_TAKE = """
DELETE FROM analytics_dirty d
WHERE (d.clinic_id, d.grain, d.period_start) IN (
    SELECT clinic_id, grain, period_start FROM analytics_dirty
    WHERE clinic_id = ANY($1::bigint[])
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
    dirty = await conn.fetch(_DIRTY, clinics)
    if not dirty:
        return 0
    chains: list[str | None] = [r["code"] for r in dirty]
    await audit.lock_chains(conn, chains)
    taken = await conn.fetch(_TAKE, [r["id"] for r in dirty])
    if taken:
        await conn.execute(
            _REFRESH,
            [r["clinic_id"] for r in taken],
            [r["grain"] for r in taken],
            [r["period_start"] for r in taken],
        )
    return len(taken)
