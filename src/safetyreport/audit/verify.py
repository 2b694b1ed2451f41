"""Verifying the live chains: each entry's hash and link, from one snapshot.

By default each chain is walked from its latest signed checkpoint (incremental): the
checkpoint's signature is checked with the service's public key, and its entry must
still be stored with the signed hash and hash to it; then only the entries after it
are walked. ``full`` walks every chain from its first entry. The hashing runs in a
worker thread, a batch at a time, while the next batch is fetched.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from safetyreport.audit.chain import GENESIS_HASH, content_of_row, entry_hash, format_time
from safetyreport.audit.offline import key_id as key_id_of
from safetyreport.audit.offline import signature_ok
from safetyreport.audit.restores import Restore, recorded_restores
from safetyreport.audit.signing import checkpoint_body
from safetyreport.db.pool import Conn


class ChainReport(msgspec.Struct, frozen=True, kw_only=True):
    chain: str
    ok: bool
    # The entries walked: hashed, and linked to the one before (after the checkpoint's
    # entry when the walk started at a checkpoint).
    entries: int
    head_seq: int
    # Where the walk started: after the entry of this signed checkpoint (its sequence
    # number and signing time), or, when None, at the chain's first entry.
    checkpoint_seq: int | None = None
    checkpoint_signed_at: str | None = None
    # The first entry found broken (or the head, for problems at the end), and why.
    broken_seq: int | None = None
    problem: str | None = None


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    entries: int
    chains: list[ChainReport]
    # Stored signed checkpoints whose head the chain no longer holds as signed (or whose
    # signature does not verify).
    checkpoints: list[str] = msgspec.field(default_factory=list)
    # True: every chain was walked from its first entry. False: each from its latest
    # signed checkpoint (those without one from the first entry).
    full: bool = True
    # The key whose checkpoints an incremental walk started from.
    key_id: str | None = None

    @property
    def broken(self) -> list[ChainReport]:
        return [c for c in self.chains if not c.ok]


_COLUMNS = """chain, seq, recorded_at, actor_id, actor, actor_role, action, object_type,
       object_id, clinic, client_addr, details, prev_hash, hash, content"""
_ENTRIES = f"""
SELECT {_COLUMNS}
FROM audit_entries WHERE chain = $1 AND seq > $2 AND seq <= $3 ORDER BY seq
"""  # noqa: S608 (constant SQL)
_ENTRY = f"SELECT {_COLUMNS} FROM audit_entries WHERE chain = $1 AND seq = $2"  # noqa: S608
# The newest checkpoints of a chain signed with the key, within the chain as it stands.
_CANDIDATES = """
SELECT seq, hash, signed_at, key_id, signature FROM audit_checkpoints
WHERE chain = $1 AND key_id = $2 AND seq > 0 AND seq <= $3
ORDER BY seq DESC LIMIT $4
"""
# Chains with entries but no head. A skip scan of the primary key: one index probe per
# chain, however many entries each has.
_ORPHANS = """
WITH RECURSIVE present(chain) AS (
    (SELECT chain FROM audit_entries WHERE $1::text[] IS NULL OR chain = ANY($1)
     ORDER BY chain LIMIT 1)
    UNION ALL
    SELECT (SELECT e.chain FROM audit_entries e
            WHERE e.chain > p.chain AND ($1::text[] IS NULL OR e.chain = ANY($1))
            ORDER BY e.chain LIMIT 1)
    FROM present p WHERE p.chain IS NOT NULL
)
SELECT chain FROM present
WHERE chain IS NOT NULL AND chain NOT IN (SELECT chain FROM audit_chains)
ORDER BY chain
"""
# Stored checkpoints whose head is no longer in the chain as it was signed: every one
# (full), or each chain's newest (incremental: a head is signed only if its chain links
# on from the checkpoint before, so the newest one vouches for the older ones).
_CONTRADICTED = """
SELECT p.chain, p.seq, p.signed_at
FROM audit_checkpoints p LEFT JOIN audit_entries e ON e.chain = p.chain AND e.seq = p.seq
WHERE p.seq > 0 AND e.hash IS DISTINCT FROM p.hash
  AND ($1::text[] IS NULL OR p.chain = ANY($1))
ORDER BY p.chain, p.seq
"""
_NEWEST_CONTRADICTED = """
SELECT p.chain, p.seq, p.signed_at
FROM audit_chains c
CROSS JOIN LATERAL (
    SELECT chain, seq, hash, signed_at FROM audit_checkpoints
    WHERE chain = c.chain AND seq > 0 ORDER BY seq DESC LIMIT 1
) p
LEFT JOIN audit_entries e ON e.chain = p.chain AND e.seq = p.seq
WHERE e.hash IS DISTINCT FROM p.hash AND ($1::text[] IS NULL OR c.chain = ANY($1))
ORDER BY p.chain
"""
# Signed checkpoints tried per chain, newest first, before walking from the first entry.
CANDIDATES = 10


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
    return _check_content(row)


def _check_content(row: asyncpg.Record) -> str | None:
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


@dataclass
class _Start:
    """Where a chain's walk starts: after entry ``seq`` (0: the first entry), whose hash
    is ``hash``, and the signed checkpoint that vouches for it."""

    seq: int = 0
    hash: bytes = GENESIS_HASH
    signed_at: datetime | None = None


class _ChainCheck:
    """Walks one chain's entries in order; the hashing runs off the event loop."""

    def __init__(self, chain: str, head_seq: int, start: _Start) -> None:
        self.chain, self.head_seq, self.start = chain, head_seq, start
        self.expected_seq, self.prev_hash, self.count = start.seq + 1, start.hash, 0

    def report(self, *, broken_seq: int | None = None, problem: str | None = None) -> ChainReport:
        signed_at = self.start.signed_at
        return ChainReport(
            chain=self.chain,
            ok=problem is None,
            entries=self.count,
            head_seq=self.head_seq,
            checkpoint_seq=self.start.seq if signed_at is not None else None,
            checkpoint_signed_at=format_time(signed_at) if signed_at is not None else None,
            broken_seq=broken_seq,
            problem=problem,
        )

    def check(self, rows: list[asyncpg.Record]) -> ChainReport | None:
        """Check the next ``rows``; the report of the first broken one, if any. CPU only."""
        for row in rows:
            problem = _check_entry(row, self.expected_seq, self.prev_hash)
            if problem is not None:
                broken = row["seq"] if row["seq"] == self.expected_seq else self.expected_seq
                return self.report(broken_seq=broken, problem=problem)
            self.count += 1
            self.expected_seq, self.prev_hash = row["seq"] + 1, row["hash"]
        return None

    def finish(self, head_hash: bytes) -> ChainReport:
        """The report once every entry was walked: the last must be the chain's head."""
        expected_seq = self.expected_seq
        if expected_seq - 1 != self.head_seq or self.prev_hash != head_hash:
            return self.report(
                broken_seq=expected_seq if expected_seq - 1 < self.head_seq else self.head_seq,
                problem=(
                    f"the chain head records entry {self.head_seq}, but the entries end at "
                    f"{expected_seq - 1}: entries were removed from the end or the head was "
                    "altered"
                ),
            )
        return self.report()


class _Checkpoints:
    """Finds where each chain's incremental walk starts, with the service's public key."""

    def __init__(self, conn: Conn, public_key: Ed25519PublicKey) -> None:
        self.conn, self.public_key, self.key_id = conn, public_key, key_id_of(public_key)
        # Stored checkpoints whose signature does not verify.
        self.forged: list[str] = []
        self._restores: list[Restore] | None = None

    def _signed(self, chain: str, row: asyncpg.Record) -> bool:
        body = checkpoint_body(chain, row["seq"], row["hash"], row["signed_at"], row["key_id"])
        signature = base64.b64encode(row["signature"]).decode()
        return signature_ok(self.public_key, msgspec.to_builtins(body), signature)

    async def _dropped_by_restore(self, chain: str, row: asyncpg.Record) -> bool:
        if self._restores is None:
            self._restores = await recorded_restores(self.conn)
        return any(r.dropped(chain, row["seq"], row["signed_at"]) for r in self._restores)

    async def start(self, chain: str, head_seq: int) -> _Start | ChainReport:
        """The latest signed checkpoint whose entry the chain holds unchanged, or a report
        of the chain broken at that entry; from the first entry if there is none."""
        rows = await self.conn.fetch(_CANDIDATES, chain, self.key_id, head_seq, CANDIDATES)
        for cp in rows:
            if not await asyncio.to_thread(self._signed, chain, cp):
                self.forged.append(
                    f"stored checkpoint {chain}#{cp['seq']} (signed at "
                    f"{format_time(cp['signed_at'])}) does not verify with the service's key "
                    f"{self.key_id}: the stored checkpoint was altered or forged"
                )
                continue
            start = _Start(seq=cp["seq"], hash=cp["hash"], signed_at=cp["signed_at"])
            entry = await self.conn.fetchrow(_ENTRY, chain, cp["seq"])
            if entry is None or entry["hash"] != cp["hash"]:
                # A restore dropped the signed entry (the list of contradicted checkpoints
                # names it); an earlier checkpoint may hold.
                if await self._dropped_by_restore(chain, cp):
                    continue
                what = (
                    f"entry {cp['seq']} is missing"
                    if entry is None
                    else f"entry {cp['seq']} differs from the signed checkpoint"
                )
                return _ChainCheck(chain, head_seq, start).report(
                    broken_seq=cp["seq"],
                    problem=f"{what} (signed at {format_time(cp['signed_at'])}): the "
                    "chain was rewritten since",
                )
            altered: str | None = await asyncio.to_thread(_check_content, entry)
            if altered is not None:
                return _ChainCheck(chain, head_seq, start).report(
                    broken_seq=cp["seq"], problem=f"{altered} (a signed checkpoint's entry)"
                )
            return start
        return _Start()


async def _walk(conn: Conn, walk: _ChainCheck, head_hash: bytes) -> ChainReport:
    cursor = await conn.cursor(_ENTRIES, walk.chain, walk.start.seq, walk.head_seq)
    rows = await cursor.fetch(BATCH_ROWS)
    while rows:
        # A worker thread hashes this batch while the next one is fetched; the event
        # loop serves other requests meanwhile.
        following = asyncio.ensure_future(cursor.fetch(BATCH_ROWS))
        try:
            broken = await asyncio.to_thread(walk.check, rows)
        finally:
            rows = await following
        if broken is not None:
            return broken
    return walk.finish(head_hash)


async def _check_chain(
    conn: Conn, signed: _Checkpoints | None, head: asyncpg.Record
) -> ChainReport:
    """One chain up to ``head`` (its chain, last_seq and last_hash), walked from its latest
    signed checkpoint, or from its first entry without ``signed``."""
    chain, head_seq = head["chain"], head["last_seq"]
    start = _Start() if signed is None else await signed.start(chain, head_seq)
    if isinstance(start, ChainReport):
        return start
    return await _walk(conn, _ChainCheck(chain, head_seq, start), head["last_hash"])


async def walk_from_checkpoints(
    conn: Conn, heads: list[asyncpg.Record], public_key: Ed25519PublicKey
) -> list[ChainReport]:
    """Whether each chain links on from its latest checkpoint signed with ``public_key``
    to ``heads``' entry (chain, last_seq, last_hash as read before): checked before that
    head is signed. Entries are append-only, so no snapshot is needed up to a head."""
    signed = _Checkpoints(conn, public_key)
    async with conn.transaction():  # the walk reads through a cursor
        return [await _check_chain(conn, signed, h) for h in heads]


async def _contradicted(conn: Conn, chains: list[str] | None, *, newest_only: bool) -> list[str]:
    """Why stored checkpoints (of ``chains``; None: all) no longer match their chains."""
    rows = await conn.fetch(_NEWEST_CONTRADICTED if newest_only else _CONTRADICTED, chains)
    return [
        f"checkpoint {r['chain']}#{r['seq']} signed at {format_time(r['signed_at'])} no longer "
        "matches the chain: that entry was altered or removed"
        for r in rows
    ]


async def verify_chains(
    conn: Conn,
    chains: list[str] | None = None,
    *,
    public_key: Ed25519PublicKey | None = None,
    full: bool = False,
) -> VerifyReport:
    """Verify every chain (or only ``chains``) from one consistent snapshot.

    With the service's ``public_key`` and not ``full``, each chain's walk starts at its
    latest signed checkpoint, and only each chain's newest stored checkpoint is compared
    with its entry; otherwise every chain is walked from its first entry and every
    stored checkpoint compared.
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        heads = await conn.fetch(
            "SELECT chain, last_seq, last_hash FROM audit_chains "
            "WHERE $1::text[] IS NULL OR chain = ANY($1) ORDER BY chain",
            chains,
        )
        orphans = await conn.fetch(_ORPHANS, chains)
        signed = _Checkpoints(conn, public_key) if public_key is not None and not full else None
        reports = [await _check_chain(conn, signed, h) for h in heads]
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
        contradicted = await _contradicted(conn, chains, newest_only=signed is not None)
        if signed is not None:
            contradicted += signed.forged
    return VerifyReport(
        ok=all(r.ok for r in reports) and not contradicted,
        entries=sum(r.entries for r in reports),
        chains=reports,
        checkpoints=contradicted,
        full=signed is None,
        key_id=signed.key_id if signed is not None else None,
    )
