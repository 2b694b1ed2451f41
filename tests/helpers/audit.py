"""Tampering with the audit trail as an attacker with superuser rights would."""

from __future__ import annotations

from typing import Any

import asyncpg

from safetyreport.audit.chain import content_of_row, entry_hash


async def rewrite_chain_from(db: asyncpg.Connection[Any], chain: str, seq: int) -> None:
    """An attacker with superuser rights rewrites entry ``seq`` and re-hashes everything after.

    The chain is consistent again afterwards: only a checkpoint signed before can tell.
    """
    rows = await db.fetch(
        "SELECT * FROM audit_entries WHERE chain = $1 AND seq >= $2 ORDER BY seq", chain, seq
    )
    prev = await db.fetchval(
        "SELECT hash FROM audit_entries WHERE chain = $1 AND seq = $2", chain, seq - 1
    )
    await db.execute("SET session_replication_role = replica")
    try:
        async with db.transaction():
            for row in rows:
                details = row["details"]
                if row["seq"] == seq:
                    details = {**details, "systolic": 120}
                content = content_of_row(row, details=details, prev_hash=prev)
                new_hash = entry_hash(content)
                await db.execute(
                    "UPDATE audit_entries SET details = $3, prev_hash = $4, hash = $5, "
                    "content = $6 WHERE chain = $1 AND seq = $2",
                    chain,
                    row["seq"],
                    details,
                    prev,
                    new_hash,
                    content.decode(),
                )
                prev = new_hash
            await db.execute("UPDATE audit_chains SET last_hash = $2 WHERE chain = $1", chain, prev)
    finally:
        await db.execute("RESET session_replication_role")
