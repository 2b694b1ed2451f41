"""Recomputing every chain and naming the first entry that breaks it."""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec

from safetyreport.audit import checkpoints
from safetyreport.audit.chain import GENESIS_HASH, content_of_row, entry_hash
from safetyreport.db.pool import Conn


class ChainReport(msgspec.Struct, frozen=True, kw_only=True):
    chain: str
    ok: bool
    entries: int
    head_seq: int
    # The first entry found broken (or the head, for problems at the end), and why.
    broken_seq: int | None = None
    problem: str | None = None


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    entries: int
    chains: list[ChainReport]
    # Stored signed checkpoints whose head the chain no longer holds as signed.
    checkpoints: list[str] = msgspec.field(default_factory=list)

    @property
    def broken(self) -> list[ChainReport]:
        return [c for c in self.chains if not c.ok]


_ENTRIES = """
SELECT chain, seq, recorded_at, actor_id, actor, actor_role, action, object_type,
       object_id, clinic, client_addr, details, prev_hash, hash, content
FROM audit_entries WHERE chain = $1 ORDER BY seq
"""


def _check_entry(row: asyncpg.Record, expected_seq: int, prev_hash: bytes) -> str | None:
    if row["seq"] != expected_seq:
        return (
            f"entry {expected_seq} is missing: the chain jumps from {expected_seq - 1} "
            f"to {row['seq']}"
        )
    if row["prev_hash"] != prev_hash:
        return (
            f"entry {row['seq']} does not link to entry {expected_seq - 1}: its previous "
            "hash differs from that entry's hash"
        )
    content = content_of_row(row)
    if entry_hash(content) != row["hash"]:
        return f"entry {row['seq']} was altered: its content does not match its hash"
    # Exports carry the stored content; it must say exactly what the columns say.
    # (Entries written before content was stored have none.)
    if row["content"] is not None and row["content"].encode() != content:
        return f"entry {row['seq']} was altered: its stored content differs from its columns"
    return None


# Entries read per round trip and hashed per turn of a worker thread.
BATCH_ROWS = 1000


class _ChainCheck:
    """Walks one chain's entries in order; the hashing runs off the event loop."""

    def __init__(self, chain: str, head_seq: int) -> None:
        self.chain, self.head_seq = chain, head_seq
        self.expected_seq, self.prev_hash, self.count = 1, GENESIS_HASH, 0

    def check(self, rows: list[asyncpg.Record]) -> ChainReport | None:
        """Check the next ``rows``; the report of the first broken one, if any. CPU only."""
        for row in rows:
            problem = _check_entry(row, self.expected_seq, self.prev_hash)
            if problem is not None:
                broken = row["seq"] if row["seq"] == self.expected_seq else self.expected_seq
                return ChainReport(
                    chain=self.chain,
                    ok=False,
                    entries=self.count,
                    head_seq=self.head_seq,
                    broken_seq=broken,
                    problem=problem,
                )
            self.count += 1
            self.expected_seq, self.prev_hash = row["seq"] + 1, row["hash"]
        return None


async def _verify_chain(conn: Conn, chain: str, head_seq: int, head_hash: bytes) -> ChainReport:
    walk = _ChainCheck(chain, head_seq)
    cursor = await conn.cursor(_ENTRIES, chain)
    while rows := await cursor.fetch(BATCH_ROWS):
        # A worker thread hashes; the event loop serves other requests meanwhile.
        broken = await asyncio.to_thread(walk.check, rows)
        if broken is not None:
            return broken
    expected_seq, prev_hash, count = walk.expected_seq, walk.prev_hash, walk.count
    if expected_seq - 1 != head_seq or prev_hash != head_hash:
        return ChainReport(
            chain=chain,
            ok=False,
            entries=count,
            head_seq=head_seq,
            broken_seq=expected_seq if expected_seq - 1 < head_seq else head_seq,
            problem=(
                f"the chain head records entry {head_seq}, but the entries end at "
                f"{expected_seq - 1}: entries were removed from the end or the head was altered"
            ),
        )
    return ChainReport(chain=chain, ok=True, entries=count, head_seq=head_seq)


async def verify_chains(conn: Conn, chains: list[str] | None = None) -> VerifyReport:
    """Verify every chain (or only ``chains``) from one consistent snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        heads = await conn.fetch(
            "SELECT chain, last_seq, last_hash FROM audit_chains "
            "WHERE $1::text[] IS NULL OR chain = ANY($1) ORDER BY chain",
            chains,
        )
        orphans = await conn.fetch(
            "SELECT DISTINCT chain FROM audit_entries "
            "WHERE ($1::text[] IS NULL OR chain = ANY($1)) "
            "AND chain NOT IN (SELECT chain FROM audit_chains) ORDER BY chain",
            chains,
        )
        reports = [
            await _verify_chain(conn, h["chain"], h["last_seq"], h["last_hash"]) for h in heads
        ]
        reports += [
            ChainReport(
                chain=o["chain"],
                ok=False,
                entries=0,
                head_seq=0,
                broken_seq=1,
                problem="entries exist for a chain that has no head",
            )
            for o in orphans
        ]
        contradicted = await checkpoints.contradicted(conn, chains)
    return VerifyReport(
        ok=all(r.ok for r in reports) and not contradicted,
        entries=sum(r.entries for r in reports),
        chains=reports,
        checkpoints=contradicted,
    )
