"""What the audit routes do: verify the trail or an uploaded export, and sign or list
checkpoints. Each action a user takes on the trail is itself recorded in it.

(Searching is in ``search``, streaming exports in ``export``.)
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterable

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from safetyreport.audit import checkpoints, offline
from safetyreport.audit.chain import Actor, AuditEvent, append
from safetyreport.audit.export import readable_chains
from safetyreport.audit.signing import Signer
from safetyreport.audit.verify import VerifyReport, verify_chains
from safetyreport.caller import Caller
from safetyreport.db.pool import Conn, transaction

# An upload is kept in memory up to this size, and in a temporary file beyond it.
UPLOAD_SPOOL_BYTES = 1024 * 1024


async def verify_trail(
    conn: Conn,
    caller: Caller,
    snapshot: Conn,
    *,
    public_key: Ed25519PublicKey,
    full: bool = False,
) -> VerifyReport:
    """Recompute every chain the caller may read, from ``snapshot``; record it on ``conn``.

    Each chain from its latest checkpoint signed with ``public_key`` (the service's), or
    with ``full`` from its first entry.

    ``snapshot`` is a connection of its own in a read-only repeatable-read transaction:
    the chains are read as they stood at one instant. The record cannot be written in
    that snapshot (it is read-only, and an append to a chain that grew meanwhile would
    not serialize).
    """
    report = await verify_chains(
        snapshot, readable_chains(caller.principal, None), public_key=public_key, full=full
    )
    await caller.audit(
        conn,
        "audit.verified",
        object_type="audit_trail",
        details={
            "ok": report.ok,
            "full": report.full,
            "entries": report.entries,
            "broken_chains": [c.chain for c in report.broken],
        },
    )
    return report


async def verify_upload(
    pool: asyncpg.Pool,
    caller: Caller,
    upload: AsyncIterable[bytes],
    public_key: Ed25519PublicKey,
) -> offline.Result:
    """Verify an uploaded export as it arrives, never holding all of it in memory.

    The body is spooled to a temporary file as it arrives (a zip is read from its end, so
    the whole of it must be at hand); the verifier then reads it line by line (or member
    by member) in a worker thread. Only then is a pooled connection taken, to record the
    check: a slow upload must not hold one.
    """
    with tempfile.SpooledTemporaryFile(max_size=UPLOAD_SPOOL_BYTES) as spooled:
        async for chunk in upload:
            spooled.write(chunk)
        result = await asyncio.to_thread(offline.verify_export, spooled, public_key)
    async with transaction(pool) as conn:
        await _record_upload_check(conn, caller, result)
    return result


async def _record_upload_check(conn: Conn, caller: Caller, result: offline.Result) -> None:
    await caller.audit(
        conn,
        "audit.export_verified",
        object_type="audit_export",
        object_id=(result.manifest or {}).get("export_id"),
        details={"ok": result.ok, "entries": result.entries},
    )


async def sign_checkpoints(
    conn: Conn, caller: Caller, signer: Signer, clinic: str | None
) -> list[checkpoints.SignedCheckpoint]:
    """Sign every chain head now; the newest checkpoint of each chain the caller reads."""
    chains = readable_chains(caller.principal, clinic)
    signed = await checkpoints.sign_heads(conn, signer)
    await caller.audit(
        conn,
        "audit.checkpoints_signed",
        object_type="audit_trail",
        details={"signed": signed, "key_id": signer.key_id},
    )
    return await checkpoints.latest(conn, chains)


async def sign_all_checkpoints(
    conn: Conn, actor: Actor, signer: Signer
) -> list[checkpoints.SignedCheckpoint]:
    """Sign every chain head now, for a system actor (the command line); the newest
    checkpoint of every chain."""
    async with conn.transaction():
        signed = await checkpoints.sign_heads(conn, signer)
        await append(
            conn,
            AuditEvent(
                actor=actor,
                action="audit.checkpoints_signed",
                object_type="audit_trail",
                details={"signed": signed, "key_id": signer.key_id},
            ),
        )
        return await checkpoints.latest(conn, None)


async def list_checkpoints(
    conn: Conn, caller: Caller, clinic: str | None, *, latest: bool, limit: int
) -> list[checkpoints.SignedCheckpoint]:
    """Signed checkpoints of the chains the caller reads, newest first; ``latest``: the
    newest of each chain."""
    chains = readable_chains(caller.principal, clinic)
    if latest:
        return await checkpoints.latest(conn, chains)
    return await checkpoints.recent(conn, chains, limit)
