"""A restore from backup, recorded in the audit trail, and what it explains later.

Restoring the database to an earlier time (point-in-time recovery) drops every entry
committed after that time. A checkpoint signed after it then names a head the chain no
longer holds or, once the chain grew again, a sequence number now taken by another
entry. A truncation looks the same. The operator records the restore (which backup, to
which time, and each chain's head at that time) in the global chain, so the verifier can
name the cause; each clinic's chain records it too, for the clinic's own auditor. The
checkpoint is still reported: the entries after it are gone.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from safetyreport.audit.chain import (
    GLOBAL_CHAIN,
    Actor,
    AuditEvent,
    append_for_each_clinic,
    chain_for,
    format_time,
)
from safetyreport.db.pool import Conn
from safetyreport.errors import ValidationFailed
from safetyreport.times import require_utc

RESTORED = "database.restored"

# Each chain's last entry recorded at or before the target time. Entries of the restored
# database were recorded before their commit, which came before the target; entries
# written since the restore were recorded after it.
_HEADS_AT = """
SELECT c.chain,
       coalesce((SELECT max(e.seq) FROM audit_entries e
                 WHERE e.chain = c.chain AND e.recorded_at <= $1), 0) AS seq
FROM audit_chains c ORDER BY c.chain
"""
_RECORDED = """
SELECT seq, details FROM audit_entries
WHERE chain = $1 AND action = $2 ORDER BY seq
"""


class Restore(msgspec.Struct, frozen=True, kw_only=True):
    """A recorded restore: its entry in the global chain and what it restored."""

    seq: int
    target_time: datetime
    backup: str | None
    # Each chain's head as restored; a chain missing here did not exist then.
    heads: dict[str, int]

    def dropped(self, chain: str, seq: int, signed_at: datetime) -> bool:
        """Whether this restore dropped entry ``chain#seq`` of a head signed at ``signed_at``."""
        return signed_at > self.target_time and seq > self.heads.get(chain, 0)

    def describe(self) -> str:
        backup = f" from backup {self.backup}" if self.backup else ""
        return (
            f"the database was restored{backup} to {format_time(self.target_time)} "
            f"(recorded at {GLOBAL_CHAIN}#{self.seq})"
        )


async def record_restore(
    conn: Conn, actor: Actor, target_time: datetime, backup: str | None
) -> Restore:
    """Record in every chain that the database was restored to ``target_time``."""
    target = require_utc("target_time", target_time)
    async with conn.transaction():
        now: datetime = await conn.fetchval("SELECT clock_timestamp()")
        if target > now:
            raise ValidationFailed.one(
                "target_time", "past", "the restore's target time is in the future"
            )
        heads = {r["chain"]: r["seq"] for r in await conn.fetch(_HEADS_AT, target)}
        # The newest commit replayed, while the restored server has not restarted since.
        replayed: datetime | None = await conn.fetchval("SELECT pg_last_xact_replay_timestamp()")
        restored = {
            "target_time": format_time(target),
            "backup": backup,
            "last_replayed_commit": format_time(replayed) if replayed else None,
        }

        def event_for(clinic: str | None) -> AuditEvent:
            # Each clinic's auditor sees the restore in the clinic's own chain; the
            # global chain's entry holds every chain's head.
            chain = chain_for(clinic)
            scope = {"heads": heads} if clinic is None else {"head": heads.get(chain, 0)}
            return AuditEvent(
                actor=actor,
                action=RESTORED,
                object_type="database",
                object_id=backup,
                details=restored | scope,
            )

        clinics = [None, *(c.removeprefix("clinic:") for c in heads if c != GLOBAL_CHAIN)]
        await append_for_each_clinic(conn, clinics, event_for)
        seq: int = await conn.fetchval(
            "SELECT last_seq FROM audit_chains WHERE chain = $1", GLOBAL_CHAIN
        )
    return Restore(seq=seq, target_time=target, backup=backup, heads=heads)


async def recorded_restores(conn: Conn) -> list[Restore]:
    """Every restore recorded in the global chain, oldest first."""
    rows = await conn.fetch(_RECORDED, GLOBAL_CHAIN, RESTORED)
    return [
        Restore(
            seq=row["seq"],
            target_time=datetime.fromisoformat(row["details"]["target_time"]),
            backup=row["details"].get("backup"),
            heads=row["details"]["heads"],
        )
        for row in rows
    ]
