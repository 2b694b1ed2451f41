"""The audit trail: append-only in the database, hash-chained, verified, and complete."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeAlias, cast

import asyncpg
import httpx
import pytest

from safetyreport.app import create_app
from safetyreport.audit import GENESIS_HASH, verify_chains
from safetyreport.audit.chain import SYSTEM_CLI, content_of_row, entry_hash, format_time
from safetyreport.auth.users import add_clinic, add_user
from safetyreport.db.embedded import app_url
from safetyreport.db.pool import connect
from safetyreport.settings import APP_DB_ROLE, Settings
from tests.helpers.processes import cli_env, run_cli
from tests.helpers.reports import bp_report
from tests.helpers.world import PASSWORD, World

Headers = dict[str, str]


async def chain_rows(db: asyncpg.Connection[Any], chain: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM audit_entries WHERE chain = $1 ORDER BY seq", chain)


async def actions(db: asyncpg.Connection[Any], chain: str) -> list[str]:
    return [r["action"] for r in await chain_rows(db, chain)]


def content_of(row: asyncpg.Record, **changes: Any) -> bytes:
    """The canonical content of a stored entry, with some fields replaced."""
    return content_of_row(row, **changes)


async def submit(world: World, headers: Headers, key: str, **overrides: Any) -> httpx.Response:
    return await world.client.post(
        "/api/v1/reports", json=bp_report(**overrides), headers={**headers, "Idempotency-Key": key}
    )


# --- append-only, enforced by the database ---------------------------------------


@pytest.fixture
async def one_entry(world: World) -> None:
    await world.clinic("C1")


@pytest.mark.usefixtures("one_entry")
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_entries SET details = '{}'",
        "DELETE FROM audit_entries",
        "TRUNCATE audit_entries",
    ],
)
async def test_owner_cannot_change_audit_entries(db: asyncpg.Connection[Any], sql: str) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute(sql)
    assert await db.fetchval("SELECT count(*) FROM audit_entries") == 1


@pytest.fixture
async def app_conn(settings: Settings, database_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn = await connect(app_url(settings, database_url))
    yield conn
    await conn.close()


@pytest.mark.usefixtures("one_entry")
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_entries SET details = '{}'",
        "DELETE FROM audit_entries",
        "TRUNCATE audit_entries",
    ],
)
async def test_app_role_cannot_change_audit_entries(
    app_conn: asyncpg.Connection[Any], db: asyncpg.Connection[Any], sql: str
) -> None:
    assert await app_conn.fetchval("SELECT current_user") == APP_DB_ROLE
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await app_conn.execute(sql)
    assert await db.fetchval("SELECT count(*) FROM audit_entries") == 1


async def test_app_role_may_read_and_insert(app_conn: asyncpg.Connection[Any]) -> None:
    assert await app_conn.fetchval("SELECT count(*) FROM audit_entries") == 0
    assert await app_conn.fetchval("SELECT has_table_privilege('audit_entries', 'INSERT')")


async def test_app_role_is_unprivileged_and_owns_nothing(db: asyncpg.Connection[Any]) -> None:
    role = await db.fetchrow(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles "
        "WHERE rolname = $1",
        APP_DB_ROLE,
    )
    assert role is not None
    assert not any(role.values())
    owners = await db.fetch(
        "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'"
    )
    assert {r["tablename"] for r in owners} >= {"audit_entries", "audit_chains", "reports"}
    assert [r["tablename"] for r in owners if r["tableowner"] == APP_DB_ROLE] == []
    owned = await db.fetchval(
        "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
        "WHERE r.rolname = $1",
        APP_DB_ROLE,
    )
    assert owned == 0


# --- the shape of the chains ------------------------------------------------------


async def assert_chain_well_formed(db: asyncpg.Connection[Any], chain: str) -> int:
    """Check every link of ``chain`` independently of the verifier; return its length."""
    rows = await chain_rows(db, chain)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1)), chain
    prev = GENESIS_HASH
    for row in rows:
        assert row["prev_hash"] == prev, (chain, row["seq"])
        assert row["hash"] == entry_hash(content_of(row)), (chain, row["seq"])
        prev = row["hash"]
    head = await db.fetchrow("SELECT last_seq, last_hash FROM audit_chains WHERE chain = $1", chain)
    assert head is not None
    assert (head["last_seq"], head["last_hash"]) == (len(rows), prev)
    return len(rows)


async def test_chains_per_clinic_and_global(world: World) -> None:
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("nina", "nurse", ["C1"])
    await world.user("otto", "nurse", ["C2"])
    await world.user("audrey", "auditor", all_clinics=True)
    for username, clinic in (("nina", "C1"), ("otto", "C2")):
        headers = await world.login(username)
        for i in range(2):
            response = await submit(world, headers, f"{clinic}-{i}", clinic=clinic)
            assert response.status_code == 201, response.text

    chains = [r["chain"] for r in await world.db.fetch("SELECT chain FROM audit_chains")]
    assert sorted(chains) == ["clinic:C1", "clinic:C2", "global"]
    for clinic in ("C1", "C2"):
        assert await actions(world.db, f"clinic:{clinic}") == [
            "clinic.created",
            "user.created",
            "auth.login",
            "report.created",
            "report.created",
        ]
    assert await actions(world.db, "global") == ["user.created"]
    first = (await chain_rows(world.db, "clinic:C1"))[0]
    assert first["seq"] == 1
    assert first["prev_hash"] == bytes(32)
    for chain in chains:
        await assert_chain_well_formed(world.db, chain)
    assert (await verify_chains(world.db)).ok


async def test_verification_does_not_depend_on_the_session_time_zone(
    world: World, database_url: str
) -> None:
    await world.clinic("C1")
    conn = await asyncpg.connect(database_url, server_settings={"timezone": "Asia/Kolkata"})
    try:
        await conn.set_type_codec(
            "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )
        report = await verify_chains(conn)
    finally:
        await conn.close()
    assert report.ok, report


# --- concurrency ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def concurrent_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app on this test's event loop, so gathered requests really overlap.

    (litestar's AsyncTestClient runs the app in a portal thread and blocks on each request.
    Not a fixture: the lifespan's task group must be entered and left in the same task.)
    """
    app = create_app(settings)
    async with (
        app.lifespan(),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=cast("Any", app)), base_url="http://testserver"
        ) as http,
    ):
        yield http


async def _login(http: httpx.AsyncClient, username: str) -> httpx.Response:
    return await http.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})


async def test_concurrent_submissions_and_logins_keep_the_chains_intact(
    db: asyncpg.Connection[Any], settings: Settings
) -> None:
    await add_clinic(db, "C1", "Clinic C1", SYSTEM_CLI)
    users = [f"nurse{i}" for i in range(4)]
    for username in users:
        await add_user(
            db,
            username=username,
            password=PASSWORD,
            role="nurse",
            clinics=["C1"],
            all_clinics=False,
            actor=SYSTEM_CLI,
        )
    async with concurrent_client(settings) as http:
        login = await _login(http, users[0])
        headers = {"Authorization": f"Bearer {login.json()['token']}"}
        posts = [
            http.post(
                "/api/v1/reports",
                json=bp_report(patient_ref=f"PT-{i:03d}"),
                headers={**headers, "Idempotency-Key": f"concurrent-{i}"},
            )
            for i in range(40)
        ]
        logins = [_login(http, username) for username in users * 2]
        responses = await asyncio.gather(*posts, *logins)
    assert [r.status_code for r in responses] == [201] * 40 + [200] * 8

    report = await verify_chains(db)
    assert report.ok, report
    clinic_length = await assert_chain_well_formed(db, "clinic:C1")
    assert clinic_length == 1 + len(users) + 40 + 1 + 8
    assert (await actions(db, "clinic:C1")).count("report.created") == 40
    await assert_chain_well_formed(db, "global")
    assert (await actions(db, "clinic:C1")).count("auth.login") == 1 + 8
    created = await db.fetch(
        "SELECT object_id FROM audit_entries WHERE action = 'report.created' ORDER BY object_id"
    )
    stored = await db.fetch("SELECT id::text FROM reports ORDER BY id::text")
    assert [r["object_id"] for r in created] == [r["id"] for r in stored]


async def test_concurrent_first_appends_create_one_chain(
    db: asyncpg.Connection[Any], database_url: str
) -> None:
    """Many connections creating clinics at once: every chain starts at 1, none forks."""
    conns = [await connect(database_url) for _ in range(8)]
    try:
        await asyncio.gather(
            *(add_clinic(c, f"K{i}", f"Clinic K{i}", SYSTEM_CLI) for i, c in enumerate(conns))
        )
    finally:
        for c in conns:
            await c.close()
    for i in range(8):
        assert await assert_chain_well_formed(db, f"clinic:K{i}") == 1
    assert (await verify_chains(db)).ok


# --- tampering --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trail:
    auditor: Headers
    env: dict[str, str]


@pytest.fixture
async def trail(world: World, database_url: str, settings: Settings) -> Trail:
    """clinic:C1 holds 7 entries: clinic.created, user.created, the nurse's auth.login,
    3 x report.created, the auditor's auth.login."""
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    await world.user("audrey", "auditor", all_clinics=True)
    nurse = await world.login("nina")
    for i in range(3):
        response = await submit(world, nurse, f"k-{i}", patient_ref=f"PT-{i}")
        assert response.status_code == 201, response.text
    assert len(await chain_rows(world.db, "clinic:C1")) == 6
    auditor = await world.login("audrey")
    return Trail(auditor=auditor, env=cli_env(database_url, settings.data_dir))


async def as_superuser(db: asyncpg.Connection[Any], *statements: str, args: Any = ()) -> None:
    """Run statements with the append-only triggers bypassed, as an attacker with superuser."""
    await db.execute("SET session_replication_role = replica")
    try:
        async with db.transaction():
            for sql in statements:
                await db.execute(sql, *args)
    finally:
        await db.execute("RESET session_replication_role")


async def alter_details(db: asyncpg.Connection[Any]) -> None:
    await as_superuser(
        db,
        'UPDATE audit_entries SET details = details || \'{"kind": "dissociation"}\' '
        "WHERE chain = 'clinic:C1' AND seq = 3",
    )


async def delete_middle(db: asyncpg.Connection[Any]) -> None:
    await as_superuser(db, "DELETE FROM audit_entries WHERE chain = 'clinic:C1' AND seq = 3")


async def swap_two(db: asyncpg.Connection[Any]) -> None:
    await as_superuser(
        db,
        "UPDATE audit_entries SET seq = 1000 WHERE chain = 'clinic:C1' AND seq = 2",
        "UPDATE audit_entries SET seq = 2 WHERE chain = 'clinic:C1' AND seq = 3",
        "UPDATE audit_entries SET seq = 3 WHERE chain = 'clinic:C1' AND seq = 1000",
    )


async def alter_and_rehash(db: asyncpg.Connection[Any]) -> None:
    row = (await chain_rows(db, "clinic:C1"))[2]
    assert row["seq"] == 3
    details = {**row["details"], "kind": "dissociation"}
    new_hash = entry_hash(content_of(row, details=details))
    await as_superuser(
        db,
        "UPDATE audit_entries SET details = $1, hash = $2 WHERE chain = 'clinic:C1' AND seq = 3",
        args=(details, new_hash),
    )


async def delete_last(db: asyncpg.Connection[Any]) -> None:
    await as_superuser(db, "DELETE FROM audit_entries WHERE chain = 'clinic:C1' AND seq = 7")


Tamper: TypeAlias = "Callable[[asyncpg.Connection[Any]], Awaitable[None]]"
TAMPERING = [
    pytest.param(alter_details, 3, "entry 3 was altered", id="altered"),
    pytest.param(delete_middle, 3, "entry 3 is missing", id="missing"),
    pytest.param(swap_two, 2, "entry 2 does not link to entry 1", id="swapped"),
    # The stored content still says what was recorded, so the altered entry is named.
    pytest.param(alter_and_rehash, 3, "stored content differs from its columns", id="rehashed"),
    pytest.param(delete_last, 7, "head records entry 7", id="tail-removed"),
]


def broken_chain(chains: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(c for c in chains if c["chain"] == name)


@pytest.mark.end_to_end
@pytest.mark.parametrize(("tamper", "seq", "problem"), TAMPERING)
async def test_tampering_is_detected_and_the_entry_named(
    world: World, trail: Trail, tamper: Tamper, seq: int, problem: str
) -> None:
    assert (await verify_chains(world.db)).ok
    await tamper(world.db)

    # The verifier itself.
    report = await verify_chains(world.db)
    assert not report.ok
    assert [c.chain for c in report.broken] == ["clinic:C1"]
    (broken,) = report.broken
    assert broken.broken_seq == seq
    assert broken.problem is not None
    assert problem in broken.problem

    # GET /api/v1/audit/verify, as an auditor.
    response = await world.client.get("/api/v1/audit/verify", headers=trail.auditor)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ok"] is False
    chain = broken_chain(body["chains"], "clinic:C1")
    assert (chain["ok"], chain["broken_seq"]) == (False, seq)
    assert problem in chain["problem"]
    assert broken_chain(body["chains"], "global")["ok"] is True

    # safetyreport audit verify.
    result = await run_cli("audit", "verify", env=trail.env)
    assert result.code == 1, result.stdout + result.stderr
    assert f"BROKEN  clinic:C1: entry {seq}: " in result.stdout
    assert problem in result.stdout
    assert "FAILED" in result.stdout


@pytest.mark.end_to_end
async def test_untouched_trail_verifies_everywhere(world: World, trail: Trail) -> None:
    assert (await verify_chains(world.db)).ok
    response = await world.client.get("/api/v1/audit/verify", headers=trail.auditor)
    assert response.status_code == 200
    assert response.json()["ok"] is True
    assert all(c["ok"] and c["broken_seq"] is None for c in response.json()["chains"])

    # --full: the app's checkpoint task may sign a checkpoint at any moment, after which
    # the default (incremental) run counts only the entries after it.
    result = await run_cli("audit", "verify", "--full", env=trail.env)
    assert result.code == 0, result.stdout + result.stderr
    assert "ok      clinic:C1: 7 entries" in result.stdout
    assert "verified:" in result.stdout

    incremental = await run_cli("audit", "verify", env=trail.env)
    assert incremental.code == 0, incremental.stdout + incremental.stderr
    assert "ok      clinic:C1: " in incremental.stdout

    as_json = await run_cli("audit", "verify", "--json", env=trail.env)
    assert as_json.code == 0
    assert json.loads(as_json.stdout)["ok"] is True


@pytest.mark.end_to_end
async def test_cli_verify_json_reports_the_break(world: World, trail: Trail) -> None:
    await alter_details(world.db)
    result = await run_cli("audit", "verify", "--json", env=trail.env)
    assert result.code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert broken_chain(report["chains"], "clinic:C1")["broken_seq"] == 3


async def test_entries_for_a_chain_without_head_are_reported(world: World, trail: Trail) -> None:
    row = (await chain_rows(world.db, "clinic:C1"))[0]
    await as_superuser(
        world.db,
        "INSERT INTO audit_entries SELECT 'clinic:ghost', seq, recorded_at, actor_id, actor, "
        "actor_role, action, object_type, object_id, clinic, client_addr, details, prev_hash, "
        "hash, content FROM audit_entries WHERE chain = $1 AND seq = $2",
        args=(row["chain"], row["seq"]),
    )
    report = await verify_chains(world.db)
    assert [c.chain for c in report.broken] == ["clinic:ghost"]


# --- every action is audited in its own transaction -------------------------------


async def test_report_creation_is_audited(world: World) -> None:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    headers = await world.login("nina")
    response = await submit(world, headers, "k-1")
    assert response.status_code == 201, response.text

    entry = (await chain_rows(world.db, "clinic:C1"))[-1]
    assert entry["action"] == "report.created"
    assert entry["object_type"] == "report"
    assert entry["object_id"] == response.json()["id"]
    assert (entry["actor"], entry["actor_role"], entry["clinic"]) == ("nina", "nurse", "C1")
    assert entry["client_addr"] == "testclient"
    assert entry["details"]["kind"] == "blood_pressure"
    assert entry["recorded_at"].utcoffset() == timedelta(0)
    assert format_time(entry["recorded_at"]).endswith("+00:00")
    text = await world.db.fetchval(
        "SELECT recorded_at::text FROM audit_entries WHERE chain = 'clinic:C1' AND seq = $1",
        entry["seq"],
    )
    assert text.endswith("+00")


async def test_report_reads_and_listings_are_audited(world: World) -> None:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    headers = await world.login("nina")
    report_id = (await submit(world, headers, "k-1")).json()["id"]
    assert (await world.client.get(f"/api/v1/reports/{report_id}", headers=headers)).is_success
    assert (await world.client.get("/api/v1/reports", headers=headers)).is_success

    *_, read, listed = await chain_rows(world.db, "clinic:C1")
    assert (read["action"], read["object_id"], read["actor"]) == ("report.read", report_id, "nina")
    # Unfiltered, the listing is recorded in the chain of the clinic it listed.
    assert listed["action"] == "report.listed"
    assert listed["details"]["report_ids"] == [report_id]


async def test_clinic_and_user_creation_are_audited(world: World) -> None:
    await world.clinic("C2", "Clinic Two")
    await world.user("otto", "nurse", ["C2"])
    await world.user("audrey", "auditor", all_clinics=True)

    clinic_chain = await chain_rows(world.db, "clinic:C2")
    assert [(r["seq"], r["action"], r["object_id"]) for r in clinic_chain] == [
        (1, "clinic.created", "C2"),
        (2, "user.created", "otto"),
    ]
    assert clinic_chain[0]["details"] == {"code": "C2", "name": "Clinic Two", "timezone": None}
    assert clinic_chain[1]["actor"] == SYSTEM_CLI.name
    assert clinic_chain[1]["details"]["role"] == "nurse"
    global_chain = await chain_rows(world.db, "global")
    assert [(r["action"], r["object_id"]) for r in global_chain] == [("user.created", "audrey")]
    assert "password" not in json.dumps([dict(r["details"]) for r in clinic_chain + global_chain])


async def test_failed_audit_append_rolls_back_the_report(world: World) -> None:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    headers = await world.login("nina")
    # Occupy the next sequence number, so the app's append hits the primary key.
    head = await world.db.fetchrow(
        "SELECT last_seq, last_hash FROM audit_chains WHERE chain = 'clinic:C1'"
    )
    assert head is not None
    await world.db.execute(
        "INSERT INTO audit_entries (chain, seq, recorded_at, actor, action, details, prev_hash,"
        " hash, content) VALUES ('clinic:C1', $1, now(), 'intruder', 'squat', '{}', $2, $2, '')",
        head["last_seq"] + 1,
        head["last_hash"],
    )

    response = await submit(world, headers, "k-1")
    assert response.status_code >= 500
    assert await world.db.fetchval("SELECT count(*) FROM reports") == 0
    assert await world.db.fetchval("SELECT count(*) FROM report_versions") == 0
    assert await world.db.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    assert (
        await world.db.fetchval("SELECT last_seq FROM audit_chains WHERE chain = 'clinic:C1'")
        == head["last_seq"]
    )


async def test_failed_audit_append_rolls_back_the_clinic(db: asyncpg.Connection[Any]) -> None:
    # A chain head that cannot take an entry: seq would be 0 (CHECK seq >= 1).
    await db.execute("INSERT INTO audit_chains VALUES ('clinic:C3', -1, $1)", GENESIS_HASH)
    with pytest.raises(asyncpg.CheckViolationError):
        await add_clinic(db, "C3", "Clinic Three", SYSTEM_CLI)
    assert await db.fetchval("SELECT count(*) FROM clinics") == 0


# --- the verify endpoint -----------------------------------------------------------


async def test_verify_endpoint_is_audited(world: World) -> None:
    await world.user("audrey", "auditor", all_clinics=True)
    headers = await world.login("audrey")
    response = await world.client.get("/api/v1/audit/verify", headers=headers)
    assert response.status_code == 200, response.text

    entry = (await chain_rows(world.db, "global"))[-1]
    assert entry["action"] == "audit.verified"
    assert (entry["actor"], entry["actor_role"]) == ("audrey", "auditor")
    assert entry["details"]["ok"] is True
    assert entry["details"]["broken_chains"] == []


async def test_nurse_may_not_verify(world: World) -> None:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    headers = await world.login("nina")
    response = await world.client.get("/api/v1/audit/verify", headers=headers)
    assert response.status_code == 403
    assert "audit.verified" not in await actions(world.db, "global")


async def test_verify_endpoint_needs_a_token(world: World) -> None:
    response = await world.client.get("/api/v1/audit/verify")
    assert response.status_code == 401


async def test_verification_keeps_to_the_users_clinics(world: World, trail: Trail) -> None:
    await world.clinic("C2")
    await world.user("carl", "auditor", ["C1"])
    response = await world.client.get("/api/v1/audit/verify", headers=await world.login("carl"))
    assert response.status_code == 200
    assert [c["chain"] for c in response.json()["chains"]] == ["clinic:C1"]
    everything = await world.client.get("/api/v1/audit/verify", headers=trail.auditor)
    assert [c["chain"] for c in everything.json()["chains"]] == [
        "clinic:C1",
        "clinic:C2",
        "global",
    ]
