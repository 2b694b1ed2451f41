"""The signing key, signed checkpoints of the chain heads, and searching the trail."""

from __future__ import annotations

import asyncio
import io
import json
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from safetyreport.audit import offline, verify_chains
from safetyreport.audit.checkpoints import sign_heads
from safetyreport.audit.signing import DEFAULT_KEY_FILE, SigningKeyError, load_signer
from safetyreport.db.pool import connect
from safetyreport.settings import AuditSettings, Settings
from tests.helpers.audit import rewrite_chain_from
from tests.helpers.processes import CliResult, cli_env, run_cli
from tests.helpers.reports import bp_report, post_report
from tests.helpers.waiting import eventually
from tests.helpers.world import World

CHECKPOINTS = "/api/v1/audit/checkpoints"
Headers = dict[str, str]


# --- the signing key ----------------------------------------------------------------


def test_key_is_made_on_first_start_readable_by_its_owner_only(settings: Settings) -> None:
    signer = load_signer(settings)
    path = settings.data_dir / DEFAULT_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in path.read_bytes()
    assert load_signer(settings).key_id == signer.key_id  # the same key on the next start


def test_workers_starting_together_share_one_key(settings: Settings) -> None:
    async def race() -> set[str]:
        signers = await asyncio.gather(
            *(asyncio.to_thread(load_signer, settings) for _ in range(8))
        )
        return {s.key_id for s in signers}

    assert len(asyncio.run(race())) == 1
    leftovers = [p.name for p in settings.data_dir.iterdir() if p.name != DEFAULT_KEY_FILE]
    assert leftovers == []


def test_the_named_key_file_is_used(settings: Settings, tmp_path: Path) -> None:
    made = load_signer(settings)
    moved = tmp_path / "elsewhere.pem"
    (settings.data_dir / DEFAULT_KEY_FILE).rename(moved)
    named = replace(settings, audit=AuditSettings(signing_key_file=moved))
    assert load_signer(named).key_id == made.key_id
    assert not (settings.data_dir / DEFAULT_KEY_FILE).exists()  # nothing made beside it


def test_a_missing_named_key_file_is_an_error_not_a_new_key(
    settings: Settings, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(SigningKeyError, match=str(missing)):
        load_signer(replace(settings, audit=AuditSettings(signing_key_file=missing)))
    assert not missing.exists()


def test_a_key_of_another_type_is_refused(settings: Settings, tmp_path: Path) -> None:
    other = tmp_path / "ecdsa.pem"
    other.write_bytes(
        generate_private_key(SECP256R1()).private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
    )
    with pytest.raises(SigningKeyError, match="not an Ed25519 key"):
        load_signer(replace(settings, audit=AuditSettings(signing_key_file=other)))


async def test_the_published_public_key_is_the_data_folders(
    world: World, settings: Settings
) -> None:
    await world.user("audrey", "auditor", all_clinics=True)
    response = await world.client.get(
        "/api/v1/audit/public-key", headers=await world.login("audrey")
    )
    published = offline.load_public_key(response.content)
    assert offline.key_id(published) == load_signer(settings).key_id


async def test_the_private_key_never_enters_the_database(
    world: World, settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    await world.clinic("C1")
    await world.user("audrey", "auditor", all_clinics=True)
    headers = await world.login("audrey")
    assert (await world.client.post(CHECKPOINTS, headers=headers)).status_code == 201
    assert (await world.client.get("/api/v1/audit/export", headers=headers)).status_code == 200
    pem = (settings.data_dir / DEFAULT_KEY_FILE).read_text()
    body = "".join(pem.strip().splitlines()[1:-1])
    tables = [
        r["tablename"]
        for r in await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    ]
    for table in tables:
        dump = await db.fetchval(f"SELECT coalesce(string_agg(t::text, ''), '') FROM \"{table}\" t")
        assert body not in dump, table


# --- checkpoints ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trail:
    auditor: Headers
    c1_auditor: Headers
    nurse: Headers
    key_file: Path
    env: dict[str, str]


@pytest.fixture
async def trail(world: World, database_url: str, settings: Settings, tmp_path: Path) -> Trail:
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("nina", "nurse", ["C1"])
    await world.user("audrey", "auditor", all_clinics=True)
    await world.user("carl", "auditor", ["C1"])
    nurse = await world.login("nina")
    for i in range(2):
        response = await post_report(world.client, nurse, bp_report("C1", patient_ref=f"P-{i}"))
        assert response.status_code == 201, response.text
    auditor = await world.login("audrey")
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(
        (await world.client.get("/api/v1/audit/public-key", headers=auditor)).content
    )
    return Trail(
        auditor=auditor,
        c1_auditor=await world.login("carl"),
        nurse=nurse,
        key_file=key_file,
        env=cli_env(database_url, settings.data_dir),
    )


async def save_checkpoints(world: World, trail: Trail, path: Path, **params: str) -> Path:
    response = await world.client.post(CHECKPOINTS, headers=trail.auditor, params=params)
    assert response.status_code == 201, response.text
    await asyncio.to_thread(path.write_bytes, response.content)
    return path


def key(trail: Trail) -> Any:
    return offline.load_public_key(trail.key_file.read_bytes())


async def verify_live(trail: Trail, checkpoint: Path) -> CliResult:
    """``safetyreport audit verify`` of the database against a saved checkpoint file."""
    return await run_cli(
        "audit",
        "verify",
        "--public-key",
        str(trail.key_file),
        "--checkpoint",
        str(checkpoint),
        env=trail.env,
    )


async def test_signed_checkpoints_name_each_head_and_verify(world: World, trail: Trail) -> None:
    response = await world.client.post(CHECKPOINTS, headers=trail.auditor)
    assert response.status_code == 201, response.text
    checkpoints = offline.load_checkpoints(response.content, key(trail))  # checks signatures
    heads = {
        r["chain"]: (r["last_seq"], r["last_hash"].hex())
        for r in await world.db.fetch("SELECT * FROM audit_chains")
    }
    signed = {cp.chain: (cp.seq, cp.hash) for cp in checkpoints}
    assert signed["clinic:C1"] == heads["clinic:C1"]
    assert signed["clinic:C2"] == heads["clinic:C2"]
    assert all(cp.signed_at.endswith("+00:00") for cp in checkpoints)
    audited = await world.db.fetchval(
        "SELECT details FROM audit_entries WHERE action = 'audit.checkpoints_signed'"
    )
    # The service's own signing at start may have taken some heads first: each once.
    assert audited["signed"] >= 1
    assert audited["key_id"] == offline.key_id(key(trail))
    total = await world.db.fetchval("SELECT count(*) FROM audit_checkpoints")
    distinct = await world.db.fetchval(
        "SELECT count(*) FROM (SELECT DISTINCT chain, seq, key_id FROM audit_checkpoints) d"
    )
    assert total == distinct


async def test_a_forged_checkpoint_is_refused(world: World, trail: Trail) -> None:
    response = await world.client.post(CHECKPOINTS, headers=trail.auditor)
    documents = response.json()
    documents[0]["checkpoint"]["seq"] += 1
    with pytest.raises(ValueError, match="signature does not verify"):
        offline.load_checkpoints(json.dumps(documents).encode(), key(trail))


async def test_an_unchanged_head_is_signed_once(
    world: World, trail: Trail, database_url: str, settings: Settings
) -> None:
    signer = load_signer(settings)
    conns = [await connect(database_url) for _ in range(2)]
    try:
        await asyncio.gather(*(sign_heads(c, signer) for c in conns))
        assert await sign_heads(conns[0], signer) == 0
    finally:
        for conn in conns:
            await conn.close()
    duplicates = await world.db.fetchval(
        "SELECT count(*) FROM (SELECT chain, seq, key_id FROM audit_checkpoints "
        "GROUP BY 1, 2, 3 HAVING count(*) > 1) d"
    )
    assert duplicates == 0


async def test_the_service_signs_heads_by_itself(world: World, trail: Trail) -> None:
    # The app under test signs on start and then every interval (5 minutes by default).
    async def signed() -> bool:
        count: int = await world.db.fetchval(
            "SELECT count(*) FROM audit_checkpoints WHERE chain = 'global'"
        )
        return count > 0

    await eventually(signed, "the service to sign the global chain's head")


async def test_latest_checkpoints_are_scoped_to_the_users_clinics(
    world: World, trail: Trail
) -> None:
    await world.client.post(CHECKPOINTS, headers=trail.auditor)
    response = await world.client.get(
        CHECKPOINTS, headers=trail.c1_auditor, params={"latest": "true"}
    )
    assert response.status_code == 200
    assert [d["checkpoint"]["chain"] for d in response.json()] == ["clinic:C1"]
    foreign = await world.client.get(CHECKPOINTS, headers=trail.c1_auditor, params={"clinic": "C2"})
    assert foreign.status_code == 404
    assert (await world.client.get(CHECKPOINTS, headers=trail.nurse)).status_code == 403


@pytest.mark.end_to_end
async def test_an_export_proves_the_chain_only_grew_since_a_checkpoint(
    world: World, trail: Trail, tmp_path: Path
) -> None:
    old = await save_checkpoints(world, trail, tmp_path / "old.json", clinic="C1")
    for i in range(3):
        response = await post_report(
            world.client, trail.nurse, bp_report("C1", patient_ref=f"N-{i}")
        )
        assert response.status_code == 201
    export = await world.client.get(
        "/api/v1/audit/export", headers=trail.auditor, params={"clinic": "C1"}
    )
    checkpoints = offline.load_checkpoints(old.read_bytes(), key(trail))
    result = offline.verify_export(io.BytesIO(export.content), key(trail), checkpoints)
    assert result.problems == []
    assert result.checkpoints == 1

    export_file = tmp_path / "export.ndjson"
    export_file.write_bytes(export.content)
    cli = await run_cli(
        "audit",
        "verify",
        str(export_file),
        "--public-key",
        str(trail.key_file),
        "--checkpoint",
        str(old),
        env=trail.env,
    )
    assert cli.code == 0, cli.stdout + cli.stderr
    assert "1 checkpoints" in cli.stdout


async def test_an_export_that_misses_the_checkpoint_says_so(
    world: World, trail: Trail, tmp_path: Path
) -> None:
    old = await save_checkpoints(world, trail, tmp_path / "old.json", clinic="C1")
    (signed,) = offline.load_checkpoints(old.read_bytes(), key(trail))
    for ref in ("LATE-1", "LATE-2"):
        response = await post_report(world.client, trail.nurse, bp_report("C1", patient_ref=ref))
        assert response.status_code == 201

    async def export_from(seq: int) -> offline.Result:
        recorded = await world.db.fetchval(
            "SELECT recorded_at FROM audit_entries WHERE chain = 'clinic:C1' AND seq = $1", seq
        )
        response = await world.client.get(
            "/api/v1/audit/export",
            headers=trail.auditor,
            params={"clinic": "C1", "from": recorded.isoformat()},
        )
        return offline.verify_export(io.BytesIO(response.content), key(trail), [signed])

    # The entry after the signed head links to it, so this slice still proves growth...
    assert (await export_from(signed.seq + 1)).problems == []
    # ...while a slice that starts later cannot.
    result = await export_from(signed.seq + 2)
    assert not result.ok
    assert any("is not in this export" in p for p in result.problems), result.problems


@pytest.mark.end_to_end
async def test_a_consistently_rewritten_chain_is_caught_by_an_older_checkpoint(
    world: World, trail: Trail, tmp_path: Path
) -> None:
    old = await save_checkpoints(world, trail, tmp_path / "old.json", clinic="C1")
    (signed,) = offline.load_checkpoints(old.read_bytes(), key(trail))
    await rewrite_chain_from(world.db, "clinic:C1", 3)
    chains = await verify_chains(world.db)
    assert all(c.ok for c in chains.chains)  # the chain alone looks fine...

    # ...but the stored checkpoint contradicts it,
    response = await world.client.get("/api/v1/audit/verify", headers=trail.auditor)
    body = response.json()
    assert body["ok"] is False
    assert any(f"checkpoint clinic:C1#{signed.seq}" in p for p in body["checkpoints"])

    # and so does the auditor's own copy, against the database and against an export
    # (which the service signs, since it signs whatever the database holds).
    cli = await verify_live(trail, old)
    assert cli.code == 1, cli.stdout + cli.stderr
    assert "the chain was rewritten since" in cli.stdout
    export = await world.client.get(
        "/api/v1/audit/export", headers=trail.auditor, params={"clinic": "C1"}
    )
    result = offline.verify_export(io.BytesIO(export.content), key(trail), [signed])
    assert not result.ok
    assert any("differs from the checkpoint signed at" in p for p in result.problems), (
        result.problems
    )


@pytest.mark.end_to_end
async def test_live_verification_with_a_checkpoint_passes_when_untouched(
    world: World, trail: Trail, tmp_path: Path
) -> None:
    old = await save_checkpoints(world, trail, tmp_path / "old.json")
    response = await post_report(world.client, trail.nurse, bp_report("C1", patient_ref="AFTER"))
    assert response.status_code == 201
    cli = await verify_live(trail, old)
    assert cli.code == 0, cli.stdout + cli.stderr
    forged = tmp_path / "forged.json"
    documents = json.loads(old.read_bytes())
    documents[0]["checkpoint"]["hash"] = "00" * 32
    forged.write_text(json.dumps(documents))
    cli = await verify_live(trail, forged)
    assert cli.code == 2
    assert "signature does not verify" in cli.stderr


# --- searching -------------------------------------------------------------------------


async def test_search_pages_newest_first_with_filters(world: World, trail: Trail) -> None:
    seen: list[tuple[str, int]] = []
    cursor = None
    while True:
        params = {"clinic": "C1", "limit": "2", **({"cursor": cursor} if cursor else {})}
        response = await world.client.get(
            "/api/v1/audit/entries", headers=trail.auditor, params=params
        )
        assert response.status_code == 200, response.text
        page = response.json()
        seen += [(e["chain"], e["seq"]) for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # Each page of C1's entries is itself recorded in C1's chain, after the first page.
    stored = await world.db.fetch(
        "SELECT chain, seq FROM audit_entries WHERE chain = 'clinic:C1' "
        "AND action <> 'audit.searched' ORDER BY seq DESC"
    )
    assert seen == [(r["chain"], r["seq"]) for r in stored]

    response = await world.client.get(
        "/api/v1/audit/entries", headers=trail.auditor, params={"action": "report.created"}
    )
    items = response.json()["items"]
    assert len(items) == 2
    assert {i["action"] for i in items} == {"report.created"}
    assert items[0]["recorded_at"].endswith("Z") or "+00:00" in items[0]["recorded_at"]


async def test_search_is_scoped_and_audited(world: World, trail: Trail) -> None:
    response = await world.client.get("/api/v1/audit/entries", headers=trail.c1_auditor)
    assert {e["chain"] for e in response.json()["items"]} == {"clinic:C1"}
    foreign = await world.client.get(
        "/api/v1/audit/entries", headers=trail.c1_auditor, params={"clinic": "C2"}
    )
    assert foreign.status_code == 404
    assert (await world.client.get("/api/v1/audit/entries", headers=trail.nurse)).status_code == 403
    searched = await world.db.fetch(
        "SELECT actor FROM audit_entries WHERE action = 'audit.searched'"
    )
    assert [r["actor"] for r in searched] == ["carl"]
