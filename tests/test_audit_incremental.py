"""Incremental verification: each chain walked from its latest signed checkpoint.

The checkpoint's signature and its entry are checked, then only the entries after it
are walked; ``full`` (``?full=true``, ``audit verify --full``) walks every entry. An
entry changed before the checkpoint is found by the full walk only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from safetyreport.audit import verify_chains
from safetyreport.audit.chain import SYSTEM_CLI
from safetyreport.audit.checkpoints import sign_heads
from safetyreport.audit.restores import record_restore
from safetyreport.audit.signing import checkpoint_body, load_signer
from safetyreport.settings import Settings
from tests.helpers.audit import rewrite_chain_from
from tests.helpers.processes import cli_env, run_cli
from tests.helpers.reports import bp_report, create_report
from tests.helpers.world import World

Headers = dict[str, str]
CHAIN = "clinic:C1"


@dataclass(frozen=True, slots=True)
class Signed:
    """Clinic C1's chain, signed at ``seq``, with ``head - seq`` entries after it."""

    seq: int
    head: int
    public_key: Ed25519PublicKey
    nurse: Headers
    auditor: Headers


async def head_seq(db: asyncpg.Connection[Any], chain: str = CHAIN) -> int:
    seq: int = await db.fetchval("SELECT last_seq FROM audit_chains WHERE chain = $1", chain)
    return seq


async def add_reports(world: World, nurse: Headers, count: int, prefix: str) -> None:
    for i in range(count):
        await create_report(world.client, nurse, bp_report("C1", patient_ref=f"{prefix}-{i}"))


@pytest.fixture
async def signed(world: World, settings: Settings) -> Signed:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    await world.user("audrey", "auditor", all_clinics=True)
    nurse = await world.login("nina")
    auditor = await world.login("audrey")
    await add_reports(world, nurse, 3, "BEFORE")
    signer = load_signer(settings)  # the service's own key (the data folder's)
    await sign_heads(world.db, signer)
    seq = await head_seq(world.db)
    await add_reports(world, nurse, 3, "AFTER")
    return Signed(
        seq=seq,
        head=await head_seq(world.db),
        public_key=signer.private_key.public_key(),
        nurse=nurse,
        auditor=auditor,
    )


async def as_superuser(db: asyncpg.Connection[Any], sql: str, *args: Any) -> None:
    """Run ``sql`` with the append-only triggers bypassed, as an attacker with superuser."""
    await db.execute("SET session_replication_role = replica")
    try:
        await db.execute(sql, *args)
    finally:
        await db.execute("RESET session_replication_role")


async def alter_entry(db: asyncpg.Connection[Any], seq: int) -> None:
    """Change an entry's details in place (its hash and the links stay as they were)."""
    await as_superuser(
        db,
        'UPDATE audit_entries SET details = details || \'{"kind": "dissociation"}\' '
        "WHERE chain = $1 AND seq = $2",
        CHAIN,
        seq,
    )


def chain_report(report: Any, chain: str = CHAIN) -> Any:
    return next(c for c in report.chains if c.chain == chain)


async def test_the_walk_starts_after_the_latest_signed_checkpoint(
    world: World, signed: Signed
) -> None:
    report = await verify_chains(world.db, public_key=signed.public_key)
    assert report.ok, report
    assert report.full is False
    c1 = chain_report(report)
    assert c1.checkpoint_seq == signed.seq
    assert c1.checkpoint_signed_at is not None
    assert c1.entries == signed.head - signed.seq > 0

    whole = await verify_chains(world.db, public_key=signed.public_key, full=True)
    assert whole.ok
    assert whole.full is True
    c1 = chain_report(whole)
    assert (c1.checkpoint_seq, c1.entries) == (None, signed.head)


async def test_a_chain_without_a_checkpoint_is_walked_from_its_first_entry(
    world: World, signed: Signed
) -> None:
    await world.clinic("C2")
    report = await verify_chains(world.db, public_key=signed.public_key)
    c2 = chain_report(report, "clinic:C2")
    assert (c2.ok, c2.checkpoint_seq, c2.entries) == (True, None, 1)
    # Without the service's key no checkpoint is trusted: every chain is walked whole.
    keyless = await verify_chains(world.db)
    assert keyless.full is True
    assert chain_report(keyless).entries == signed.head


async def test_an_entry_changed_before_the_checkpoint_is_found_by_the_full_walk_only(
    world: World, signed: Signed
) -> None:
    await alter_entry(world.db, signed.seq - 1)

    incremental = await verify_chains(world.db, public_key=signed.public_key)
    assert incremental.ok, incremental

    full = await verify_chains(world.db, public_key=signed.public_key, full=True)
    assert not full.ok
    (broken,) = full.broken
    assert (broken.chain, broken.broken_seq) == (CHAIN, signed.seq - 1)
    assert "was altered" in (broken.problem or "")


@pytest.mark.parametrize("full", [False, True])
async def test_an_entry_changed_after_the_checkpoint_is_found_by_both(
    world: World, signed: Signed, full: bool
) -> None:
    await alter_entry(world.db, signed.seq + 2)
    report = await verify_chains(world.db, public_key=signed.public_key, full=full)
    assert not report.ok
    (broken,) = report.broken
    assert (broken.chain, broken.broken_seq) == (CHAIN, signed.seq + 2)
    assert "was altered" in (broken.problem or "")


async def test_the_checkpoints_own_entry_changed_is_found_by_the_incremental_walk(
    world: World, signed: Signed
) -> None:
    await alter_entry(world.db, signed.seq)
    report = await verify_chains(world.db, public_key=signed.public_key)
    assert not report.ok
    (broken,) = report.broken
    assert (broken.broken_seq, broken.checkpoint_seq) == (signed.seq, signed.seq)
    assert "was altered" in (broken.problem or "")
    assert "a signed checkpoint's entry" in (broken.problem or "")


async def test_the_checkpoints_entry_rehashed_is_a_rewrite(world: World, signed: Signed) -> None:
    await as_superuser(
        world.db,
        "UPDATE audit_entries SET hash = $3 WHERE chain = $1 AND seq = $2",
        CHAIN,
        signed.seq,
        b"\x01" * 32,
    )
    report = await verify_chains(world.db, public_key=signed.public_key)
    assert not report.ok
    c1 = chain_report(report)
    assert c1.broken_seq == signed.seq
    assert "differs from the signed checkpoint" in (c1.problem or "")
    assert any(f"checkpoint {CHAIN}#{signed.seq}" in p for p in report.checkpoints)


async def test_a_consistent_rewrite_is_not_signed_over(
    world: World, signed: Signed, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    await rewrite_chain_from(world.db, CHAIN, signed.seq - 1)
    # The service walks from its last checkpoint before it signs a head: the rewritten
    # entry no longer has the signed hash, so the new head is not signed.
    with caplog.at_level(logging.ERROR, logger="safetyreport.audit.checkpoints"):
        await sign_heads(world.db, load_signer(settings))
    assert f"audit chain {CHAIN} not signed" in caplog.text
    newest = await world.db.fetchval(
        "SELECT max(seq) FROM audit_checkpoints WHERE chain = $1", CHAIN
    )
    assert newest == signed.seq
    report = await verify_chains(world.db, public_key=signed.public_key)
    c1 = chain_report(report)
    assert (c1.ok, c1.broken_seq) == (False, signed.seq)
    assert "differs from the signed checkpoint" in (c1.problem or "")


async def test_a_head_that_links_on_is_signed_after_the_walk(
    world: World, signed: Signed, settings: Settings
) -> None:
    assert await sign_heads(world.db, load_signer(settings)) >= 1
    newest = await world.db.fetchval(
        "SELECT max(seq) FROM audit_checkpoints WHERE chain = $1", CHAIN
    )
    assert newest == signed.head


async def sign_without_walking(db: asyncpg.Connection[Any], settings: Settings) -> None:
    """Store a signed checkpoint of C1's head as it stands, as versions before the walk
    at signing did."""
    signer = load_signer(settings)
    head = await db.fetchrow(
        "SELECT last_seq, last_hash, now() AS now FROM audit_chains WHERE chain = $1", CHAIN
    )
    assert head is not None
    body = checkpoint_body(CHAIN, head["last_seq"], head["last_hash"], head["now"], signer.key_id)
    await db.execute(
        "INSERT INTO audit_checkpoints (chain, seq, hash, signed_at, key_id, signature) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        CHAIN,
        head["last_seq"],
        head["last_hash"],
        head["now"],
        signer.key_id,
        signer.sign_checkpoint(body),
    )


async def test_an_older_checkpoint_signed_over_is_compared_by_the_full_walk(
    world: World, signed: Signed, settings: Settings
) -> None:
    """Incremental verification compares each chain's newest checkpoint only: signing
    vouches for the ones before. A rewrite signed over without that walk (a checkpoint
    stored by an earlier version) is named by the full walk, which compares them all."""
    await rewrite_chain_from(world.db, CHAIN, signed.seq - 1)
    await sign_without_walking(world.db, settings)
    incremental = await verify_chains(world.db, public_key=signed.public_key)
    assert chain_report(incremental).ok
    assert chain_report(incremental).checkpoint_seq == signed.head
    assert not any(f"checkpoint {CHAIN}#{signed.seq} " in p for p in incremental.checkpoints)
    full = await verify_chains(world.db, public_key=signed.public_key, full=True)
    assert not full.ok
    assert any(f"checkpoint {CHAIN}#{signed.seq} " in p for p in full.checkpoints)


async def test_a_forged_stored_checkpoint_is_reported_and_not_trusted(
    world: World, signed: Signed
) -> None:
    head = await world.db.fetchrow(
        "SELECT last_seq, last_hash FROM audit_chains WHERE chain = $1", CHAIN
    )
    assert head is not None
    key_id = await world.db.fetchval(
        "SELECT key_id FROM audit_checkpoints WHERE chain = $1 LIMIT 1", CHAIN
    )
    # Someone with write access to the database stores a "checkpoint" of the head: the
    # hash is right, but only the key file's owner can sign.
    await world.db.execute(
        "INSERT INTO audit_checkpoints (chain, seq, hash, signed_at, key_id, signature) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        CHAIN,
        head["last_seq"],
        head["last_hash"],
        datetime.now(UTC),
        key_id,
        bytes(64),
    )
    report = await verify_chains(world.db, public_key=signed.public_key)
    assert not report.ok
    assert any(
        f"stored checkpoint {CHAIN}#{head['last_seq']}" in p and "does not verify" in p
        for p in report.checkpoints
    ), report.checkpoints
    c1 = chain_report(report)
    assert c1.ok
    assert c1.checkpoint_seq == signed.seq


async def test_a_chain_behind_its_checkpoint_is_walked_from_an_earlier_start(
    world: World, signed: Signed, settings: Settings
) -> None:
    """A restore (here: the end cut off) leaves a checkpoint past the chain's end: it is
    named among the checkpoints the chain no longer holds, in both modes, and the chain
    itself verifies."""
    await sign_heads(world.db, load_signer(settings))  # a second checkpoint, at the head
    keep = signed.head - 1
    kept = await world.db.fetchval(
        "SELECT hash FROM audit_entries WHERE chain = $1 AND seq = $2", CHAIN, keep
    )
    recorded_at = await world.db.fetchval(
        "SELECT recorded_at FROM audit_entries WHERE chain = $1 AND seq = $2", CHAIN, keep
    )
    await as_superuser(
        world.db, "DELETE FROM audit_entries WHERE chain = $1 AND seq > $2", CHAIN, keep
    )
    await as_superuser(
        world.db,
        "UPDATE audit_chains SET last_seq = $2, last_hash = $3 WHERE chain = $1",
        CHAIN,
        keep,
        kept,
    )
    for full in (False, True):
        report = await verify_chains(world.db, public_key=signed.public_key, full=full)
        c1 = chain_report(report)
        assert c1.ok, c1
        assert c1.checkpoint_seq == (None if full else signed.seq)
        assert any(f"checkpoint {CHAIN}#{signed.head}" in p for p in report.checkpoints)

    # Recorded, and the chain grown again past the dropped head: its sequence number now
    # names another entry, which is not a rewrite of the chain.
    await record_restore(world.db, SYSTEM_CLI, recorded_at, "20261203-010000F")
    await add_reports(world, signed.nurse, 2, "RESTORED")
    report = await verify_chains(world.db, public_key=signed.public_key)
    c1 = chain_report(report)
    assert c1.ok, c1
    assert c1.checkpoint_seq == signed.seq


async def test_the_api_verifies_from_checkpoints_and_whole_on_request(
    world: World, signed: Signed
) -> None:
    head = await head_seq(world.db)
    response = await world.client.get("/api/v1/audit/verify", headers=signed.auditor)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["ok"], body["full"]) == (True, False)
    assert body["key_id"]
    c1 = next(c for c in body["chains"] if c["chain"] == CHAIN)
    assert (c1["checkpoint_seq"], c1["entries"]) == (signed.seq, head - signed.seq)

    await alter_entry(world.db, signed.seq - 1)
    response = await world.client.get("/api/v1/audit/verify", headers=signed.auditor)
    assert response.json()["ok"] is True
    response = await world.client.get(
        "/api/v1/audit/verify", headers=signed.auditor, params={"full": "true"}
    )
    body = response.json()
    assert (body["ok"], body["full"], body["key_id"]) == (False, True, None)
    c1 = next(c for c in body["chains"] if c["chain"] == CHAIN)
    assert (c1["broken_seq"], c1["checkpoint_seq"]) == (signed.seq - 1, None)

    # Each verification is recorded, with how far it walked.
    details = [
        r["details"]
        for r in await world.db.fetch(
            "SELECT details FROM audit_entries WHERE action = 'audit.verified' ORDER BY seq"
        )
    ]
    assert [d["full"] for d in details] == [False, False, True]


async def test_full_must_be_a_boolean(world: World, signed: Signed) -> None:
    response = await world.client.get(
        "/api/v1/audit/verify", headers=signed.auditor, params={"full": "maybe"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "full"


async def test_a_nurse_may_not_verify_in_full(world: World, signed: Signed) -> None:
    response = await world.client.get(
        "/api/v1/audit/verify", headers=signed.nurse, params={"full": "true"}
    )
    assert response.status_code == 403


@pytest.mark.end_to_end
async def test_the_command_line_walks_from_checkpoints_and_whole_with_full(
    world: World, signed: Signed, settings: Settings, database_url: str
) -> None:
    env = cli_env(database_url, settings.data_dir)
    result = await run_cli("audit", "verify", env=env)
    assert result.code == 0, result.stdout + result.stderr
    assert (
        f"ok      {CHAIN}: {signed.head - signed.seq} entries after signed checkpoint #{signed.seq}"
    ) in result.stdout
    assert "--full walks every entry" in result.stdout

    await alter_entry(world.db, signed.seq - 1)
    result = await run_cli("audit", "verify", env=env)
    assert result.code == 0, result.stdout + result.stderr
    result = await run_cli("audit", "verify", "--full", env=env)
    assert result.code == 1, result.stdout + result.stderr
    assert f"BROKEN  {CHAIN}: entry {signed.seq - 1}: " in result.stdout
    assert "every chain walked from its first entry" in result.stdout
