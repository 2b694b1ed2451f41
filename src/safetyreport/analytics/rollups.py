"""Keeping the rate rollups equal to a recount (migration 0020).

Writes mark the periods they touch dirty, by trigger, in their own transaction. Before
reading, ``refresh`` takes the dirty marks of the clinics it reads and recounts those
periods (``analytics_refresh``), in the caller's transaction. It skips a mark a write in
flight holds (that write has not committed, and marks it again for the next refresh), so
it never waits on a write's mark: an answer is at most the writes in flight behind.

It first locks, in one statement and a fixed order, the audit chains of the clinics it
recounts and of those the caller will append to afterwards (its read's audit entries,
the signal check's alerts: ``also_lock``, or ``lock_all``), as every write takes its
clinic's chain: a write that would mark a period again while the refresh holds the
taken (deleted) mark waits on the chain first, and no two readers take chains in
different orders, so neither a write nor another reader waits on it in a cycle (a
deadlock).
"""

from __future__ import annotations

from collections.abc import Sequence

from safetyreport import audit
from safetyreport.db.pool import Conn

# The clinics whose chains to lock: those with marks ($1, NULL: every clinic), those the
# caller will append to ($2), or all ($3).
_CHAINS = """
SELECT c.id, c.code FROM clinics c
WHERE $3::boolean OR c.id = ANY($2::bigint[]) OR c.id IN (
    SELECT clinic_id FROM analytics_dirty
    WHERE $1::bigint[] IS NULL OR clinic_id = ANY($1::bigint[])
)
"""

# The marks of the clinics ($1, NULL: every clinic) whose chains are locked ($2), taken:
# deleted, and their periods recounted in the next statement (a snapshot that sees every
# write that committed before the marks were taken).
_TAKE = """
DELETE FROM analytics_dirty d
WHERE (d.clinic_id, d.grain, d.period_start) IN (
    SELECT clinic_id, grain, period_start FROM analytics_dirty
    WHERE ($1::bigint[] IS NULL OR clinic_id = ANY($1::bigint[]))
      AND clinic_id = ANY($2::bigint[])
    FOR UPDATE SKIP LOCKED
)
RETURNING d.clinic_id, d.grain, d.period_start
"""
_REFRESH = """
SELECT analytics_refresh(t.clinic_id, t.grain, t.period_start)
FROM unnest($1::bigint[], $2::text[], $3::date[]) AS t(clinic_id, grain, period_start)
"""


async def refresh(
    conn: Conn,
    clinics: list[int] | None,
    *,
    also_lock: Sequence[int] = (),
    lock_all: bool = False,
) -> int:
    """Recount the dirty periods of ``clinics`` (None: every clinic); how many.

    ``also_lock`` (or ``lock_all``): the clinics whose chains the caller appends to later
    in its transaction, locked with those recounted (see above)."""
    locked = await conn.fetch(_CHAINS, clinics, list(also_lock), lock_all)
    if not locked:
        return 0
    chains: list[str | None] = [r["code"] for r in locked]
    await audit.lock_chains(conn, chains)
    taken = await conn.fetch(_TAKE, clinics, [r["id"] for r in locked])
    if taken:
        await conn.execute(
            _REFRESH,
            [r["clinic_id"] for r in taken],
            [r["grain"] for r in taken],
            [r["period_start"] for r in taken],
        )
    return len(taken)
