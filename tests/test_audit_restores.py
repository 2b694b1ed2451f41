"""A chain behind a signed head: a restore or a truncation, told apart from tampering.

The restore drill (tests/test_restore_drill.py) restores a real backup; these tests cut a
chain's end off directly, as a restore to an earlier time leaves it, and check what an
auditor's checkpoints say of it before and after the restore is recorded.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from safetyreport.audit import offline
from safetyreport.audit.chain import SYSTEM_CLI, format_time
from safetyreport.audit.checkpoints import check_against_database, latest, sign_heads
from safetyreport.audit.restores import RESTORED, record_restore
from safetyreport.audit.signing import load_signer
from safetyreport.errors import ValidationFailed
from safetyreport.settings import Settings
from tests.helpers.reports import bp_report, create_report
from tests.helpers.world import World

Headers = dict[str, str]
CHAIN = "clinic:C1"


@pytest.fixture
async def nurse(world: World) -> Headers:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    headers = await world.login("nina")
    for i in range(3):
        await create_report(world.client, headers, bp_report("C1", patient_ref=f"P-{i}"))
    return headers


async def signed_head(db: asyncpg.Connection[Any], settings: Settings) -> offline.Checkpoint:
    """Sign the heads now; the checkpoint of clinic C1 as an auditor's file holds it."""
    signer = load_signer(settings)
    await sign_heads(db, signer)
    (cp,) = [c.checkpoint for c in await latest(db, [CHAIN])]
    return offline.Checkpoint(chain=cp.chain, seq=cp.seq, hash=cp.hash, signed_at=cp.signed_at)


async def cut_chain_after(db: asyncpg.Connection[Any], chain: str, seq: int) -> datetime:
    """Drop the chain's entries after ``seq``, as a restore to that entry's time does; that
    time. (Only a superuser can: the trail refuses deletes.)"""
    kept = await db.fetchrow(
        "SELECT hash, recorded_at FROM audit_entries WHERE chain = $1 AND seq = $2", chain, seq
    )
    assert kept is not None
    await db.execute("SET session_replication_role = replica")
    try:
        async with db.transaction():
            await db.execute("DELETE FROM audit_entries WHERE chain = $1 AND seq > $2", chain, seq)
            await db.execute(
                "UPDATE audit_chains SET last_seq = $2, last_hash = $3 WHERE chain = $1",
                chain,
                seq,
                kept["hash"],
            )
    finally:
        await db.execute("RESET session_replication_role")
    recorded_at: datetime = kept["recorded_at"]
    return recorded_at


async def test_a_chain_cut_short_is_behind_its_signed_head_not_rewritten(
    world: World, nurse: Headers, settings: Settings
) -> None:
    signed = await signed_head(world.db, settings)
    await cut_chain_after(world.db, CHAIN, signed.seq - 2)

    findings = await check_against_database(world.db, [signed])

    assert findings.broken == []
    (finding,) = findings.behind
    assert f"checkpoint {CHAIN}#{signed.seq}" in finding
    assert f"the chain is behind this signed head (it ends at #{signed.seq - 2})" in finding
    assert "a restore or a truncation" in finding
    assert "no restore is recorded" in finding


async def test_a_recorded_restore_explains_the_entries_written_since(
    world: World, nurse: Headers, settings: Settings
) -> None:
    signed = await signed_head(world.db, settings)
    target = await cut_chain_after(world.db, CHAIN, signed.seq - 2)
    restore = await record_restore(world.db, SYSTEM_CLI, target, "20261202-120000F")
    assert restore.heads[CHAIN] == signed.seq - 2
    # The chain grows again, past the signed head, with other entries.
    for i in range(3):
        await create_report(world.client, nurse, bp_report("C1", patient_ref=f"NEW-{i}"))

    findings = await check_against_database(world.db, [signed])

    assert findings.broken == []
    (finding,) = findings.behind
    assert "the database was restored from backup 20261202-120000F" in finding
    assert f"(recorded at global#{restore.seq})" in finding
    assert f"which kept {CHAIN} up to #{signed.seq - 2}" in finding
    # The global chain holds every chain's head as restored; each clinic's chain, its own.
    entries = {
        r["chain"]: r
        for r in await world.db.fetch(
            "SELECT chain, actor, object_id, details FROM audit_entries WHERE action = $1",
            RESTORED,
        )
    }
    assert set(entries) == {"global", CHAIN}
    assert all(e["actor"] == "system:cli" for e in entries.values())
    assert all(e["object_id"] == "20261202-120000F" for e in entries.values())
    assert entries["global"]["details"]["heads"][CHAIN] == signed.seq - 2
    assert entries[CHAIN]["details"]["head"] == signed.seq - 2
    assert entries[CHAIN]["details"]["target_time"] == format_time(target)


async def test_a_restore_does_not_excuse_a_head_signed_before_its_target(
    world: World, nurse: Headers, settings: Settings
) -> None:
    """A head signed before the restored time must hold: a different entry there is a
    rewrite, whatever restore is recorded."""
    signed = await signed_head(world.db, settings)
    forged = offline.Checkpoint(
        chain=signed.chain, seq=signed.seq, hash="ab" * 32, signed_at=signed.signed_at
    )
    await record_restore(world.db, SYSTEM_CLI, datetime.now(UTC), None)

    findings = await check_against_database(world.db, [signed, forged])

    assert findings.behind == []
    (problem,) = findings.broken
    assert "the chain was rewritten since" in problem


async def test_a_restore_is_recorded_with_a_past_time_with_offset(world: World) -> None:
    with pytest.raises(ValidationFailed) as future:
        await record_restore(world.db, SYSTEM_CLI, datetime.now(UTC) + timedelta(hours=1), None)
    assert future.value.errors[0].rule == "past"
    with pytest.raises(ValidationFailed) as naive:
        await record_restore(world.db, SYSTEM_CLI, datetime(2026, 1, 1), None)  # noqa: DTZ001
    assert naive.value.errors[0].rule == "offset_required"


async def test_an_export_names_the_recorded_restore_behind_a_checkpoint(
    world: World, nurse: Headers, settings: Settings
) -> None:
    """Offline, the export's own restore entry explains the checkpoint: behind, not
    rewritten, and not a pass."""
    signed = await signed_head(world.db, settings)
    target = await cut_chain_after(world.db, CHAIN, signed.seq - 2)
    await record_restore(world.db, SYSTEM_CLI, target, "20261202-120000F")
    for i in range(3):
        await create_report(world.client, nurse, bp_report("C1", patient_ref=f"NEW-{i}"))
    await world.user("audrey", "auditor", all_clinics=True)
    auditor = await world.login("audrey")
    export = await world.client.get(
        "/api/v1/audit/export", headers=auditor, params={"clinic": "C1"}
    )
    public_key = offline.load_public_key(load_signer(settings).public_pem)

    result = offline.verify_export(io.BytesIO(export.content), public_key, [signed])

    assert result.problems == []
    assert not result.ok
    (finding,) = result.behind
    assert f"checkpoint {CHAIN}#{signed.seq}" in finding
    assert f"restored to {format_time(target)}, which kept {CHAIN} up to #{signed.seq - 2}" in (
        finding
    )
    # A head signed before the restored time that the export contradicts is still a rewrite.
    forged = offline.Checkpoint(
        chain=CHAIN, seq=signed.seq - 3, hash="ab" * 32, signed_at=format_time(target)
    )
    result = offline.verify_export(io.BytesIO(export.content), public_key, [forged])
    assert result.behind == []
    assert any("the chain was rewritten since" in p for p in result.problems)
