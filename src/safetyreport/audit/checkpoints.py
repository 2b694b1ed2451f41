"""Signed checkpoints: each chain's head, signed every few minutes and on demand.

An auditor keeps a checkpoint file; later, an export (or the live database) must still
hold the signed head unchanged and link on from it, which proves the chain only grew.
Several service processes may sign at once: a head is stored once per key.
"""

from __future__ import annotations

import base64
import logging
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from safetyreport.audit.chain import GENESIS_HASH
from safetyreport.audit.offline import Checkpoint
from safetyreport.audit.restores import Restore, recorded_restores
from safetyreport.audit.signing import CheckpointBody, Signer, checkpoint_body
from safetyreport.audit.verify import walk_from_checkpoints
from safetyreport.background import Periodic
from safetyreport.db.pool import Conn
from safetyreport.db.query import Where

_log = logging.getLogger(__name__)

# Its name among the background tasks (/health).
CHECKPOINT_TASK = "audit checkpoints"

_UNSIGNED_HEADS = """
SELECT c.chain, c.last_seq, c.last_hash, clock_timestamp() AS now
FROM audit_chains c
WHERE NOT EXISTS (
    SELECT 1 FROM audit_checkpoints p
    WHERE p.chain = c.chain AND p.seq = c.last_seq AND p.key_id = $1
)
ORDER BY c.chain
"""
_INSERT = """
INSERT INTO audit_checkpoints (chain, seq, hash, signed_at, key_id, signature)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::timestamptz[], $5::text[],
                     $6::bytea[])
ON CONFLICT (chain, seq, key_id) DO NOTHING
"""
_COLUMNS = "id, chain, seq, hash, signed_at, key_id, signature"
_LATEST = f"""
SELECT DISTINCT ON (chain) {_COLUMNS} FROM audit_checkpoints{{where}}
ORDER BY chain, seq DESC, id DESC
"""  # noqa: S608 (constant SQL fragments; only a Where's conditions are added)
_LIST = f"SELECT {_COLUMNS} FROM audit_checkpoints{{where}} ORDER BY id DESC LIMIT {{limit}}"  # noqa: S608
_HEADS = "SELECT chain, last_seq FROM audit_chains"


class SignedCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    """The document an auditor keeps; ``--checkpoint`` reads one or a list of them."""

    checkpoint: CheckpointBody
    signature: str


def _from_row(row: asyncpg.Record) -> SignedCheckpoint:
    body = checkpoint_body(row["chain"], row["seq"], row["hash"], row["signed_at"], row["key_id"])
    return SignedCheckpoint(checkpoint=body, signature=base64.b64encode(row["signature"]).decode())


async def sign_heads(conn: Conn, signer: Signer) -> int:
    """Sign every chain head not yet signed with this key; return how many were new.

    A head is signed only if its chain links on from the chain's latest checkpoint
    signed with this key: that checkpoint's entry unchanged, and every entry since
    hashing and linking to the head (walked here). So a chain rewritten since is never
    signed over, and verification need compare only each chain's newest checkpoint.
    """
    heads = await conn.fetch(_UNSIGNED_HEADS, signer.key_id)
    if not heads:
        return 0
    walked = await walk_from_checkpoints(conn, heads, signer.public_key)
    for refused in (r for r in walked if not r.ok):
        _log.error(
            "audit chain %s not signed: it does not link on from its last signed "
            "checkpoint (entry %s: %s)",
            refused.chain,
            refused.broken_seq,
            refused.problem,
        )
    linked = [h for h, r in zip(heads, walked, strict=True) if r.ok]
    if not linked:
        return 0
    bodies = [
        checkpoint_body(h["chain"], h["last_seq"], h["last_hash"], h["now"], signer.key_id)
        for h in linked
    ]
    signatures = [signer.sign_checkpoint(b) for b in bodies]
    result: str = await conn.execute(
        _INSERT,
        [h["chain"] for h in linked],
        [h["last_seq"] for h in linked],
        [h["last_hash"] for h in linked],
        [h["now"] for h in linked],
        [signer.key_id] * len(linked),
        signatures,
    )
    return int(result.rsplit(" ", 1)[-1])


def _where(chains: list[str] | None) -> Where:
    where = Where()
    if chains is not None:
        where.add(f"chain = ANY({where.param(chains)}::text[])")
    return where


async def latest(conn: Conn, chains: list[str] | None) -> list[SignedCheckpoint]:
    """The newest checkpoint of each chain (of ``chains``; None: all)."""
    where = _where(chains)
    rows = await conn.fetch(_LATEST.format(where=where.sql()), *where.args)
    return [_from_row(r) for r in rows]


async def recent(conn: Conn, chains: list[str] | None, limit: int) -> list[SignedCheckpoint]:
    where = _where(chains)
    rows = await conn.fetch(_LIST.format(where=where.sql(), limit=int(limit)), *where.args)
    return [_from_row(r) for r in rows]


class Findings(msgspec.Struct, frozen=True, kw_only=True):
    """What an auditor's checkpoints say of the live chains."""

    # The chain was rewritten since a checkpoint: tampering.
    broken: list[str] = msgspec.field(default_factory=list)
    # The chain is behind a signed head: a restore or a truncation dropped its end.
    behind: list[str] = msgspec.field(default_factory=list)


def _behind(cp: Checkpoint, head: int, restores: list[Restore]) -> str:
    """The finding for a signed head the chain no longer holds: never called tampering."""
    finding = f"checkpoint {cp.chain}#{cp.seq} (signed at {cp.signed_at}): the chain is behind "
    signed_at = datetime.fromisoformat(cp.signed_at)
    cause = next((r for r in reversed(restores) if r.dropped(cp.chain, cp.seq, signed_at)), None)
    if cause is not None:
        kept = cause.heads.get(cp.chain, 0)
        return (
            f"{finding}this signed head: {cause.describe()}, which kept {cp.chain} up to "
            f"#{kept}; the entries after it that this checkpoint covers are not in the database"
        )
    return (
        f"{finding}this signed head (it ends at #{head}): a restore or a truncation removed "
        "entries from its end; no restore is recorded (if the database was restored, "
        "record it with 'safetyreport audit record-restore')"
    )


async def check_against_database(conn: Conn, given: list[Checkpoint]) -> Findings:
    """What an auditor's (already verified) checkpoints say of the live chains.

    A head the chain holds unchanged is fine. A head past the chain's end, or one a
    recorded restore dropped (its sequence number may be taken again since), is behind.
    Anything else means the chain was rewritten.
    """
    heads = {r["chain"]: r["last_seq"] for r in await conn.fetch(_HEADS)}
    restores = await recorded_restores(conn)
    findings = Findings()
    for cp in given:
        head = heads.get(cp.chain, 0)
        if cp.seq == 0:
            stored: Any = GENESIS_HASH
        else:
            stored = await conn.fetchval(
                "SELECT hash FROM audit_entries WHERE chain = $1 AND seq = $2", cp.chain, cp.seq
            )
        if stored is not None and stored.hex() == cp.hash:
            continue
        signed_at = datetime.fromisoformat(cp.signed_at)
        if cp.seq > head or any(r.dropped(cp.chain, cp.seq, signed_at) for r in restores):
            findings.behind.append(_behind(cp, head, restores))
        elif stored is None:
            findings.broken.append(
                f"checkpoint {cp.chain}#{cp.seq} (signed at {cp.signed_at}): that entry is "
                "no longer in the chain"
            )
        else:
            findings.broken.append(
                f"checkpoint {cp.chain}#{cp.seq} (signed at {cp.signed_at}): the entry "
                "differs from the signed head: the chain was rewritten since"
            )
    return findings


async def write_due_checkpoints(conn: Conn, signer: Signer) -> int:
    """The background task's unit: sign the heads signed by nobody yet; how many."""
    signed = await sign_heads(conn, signer)
    if signed:
        _log.info("signed %d audit chain heads", signed)
    return signed


def checkpoint_task(signer: Signer, interval: timedelta) -> Periodic:
    """Sign new chain heads every ``interval``."""

    async def write(conn: Conn) -> int:
        return await write_due_checkpoints(conn, signer)

    return Periodic(CHECKPOINT_TASK, interval, write)
