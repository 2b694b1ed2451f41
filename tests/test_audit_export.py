"""Audit exports: streamed, filtered, audited, signed, and verifiable offline."""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bench.fill_audit import append_entries
from safetyreport.audit import offline, verify_chains
from safetyreport.audit.routes import VERIFIER_SCRIPT
from safetyreport.csvsafe import neutralise
from safetyreport.settings import Settings
from tests.helpers.processes import cli_env, run_cli, serving
from tests.helpers.reports import bp_report, post_report
from tests.helpers.waiting import eventually
from tests.helpers.world import PASSWORD, World

EXPORT = "/api/v1/audit/export"
Headers = dict[str, str]


@dataclass(frozen=True, slots=True)
class Setup:
    auditor: Headers  # all clinics
    c1_auditor: Headers  # clinic C1 only
    nurse: Headers  # C1
    public_key: Ed25519PublicKey
    env: dict[str, str]


@pytest.fixture
async def setup(world: World, database_url: str, settings: Settings) -> Setup:
    """Clinics C1 and C2 with two reports each; a nurse whose name starts with '-'."""
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("-nina", "nurse", ["C1"])
    await world.user("otto", "nurse", ["C2"])
    await world.user("audrey", "auditor", all_clinics=True)
    await world.user("carl", "auditor", ["C1"])
    nurse = await world.login("-nina")
    other = await world.login("otto")
    for i in range(2):
        await created(post_report(world.client, nurse, bp_report("C1", patient_ref=f"PT-{i}")))
        await created(post_report(world.client, other, bp_report("C2", patient_ref=f"PT-{i}")))
    auditor = await world.login("audrey")
    response = await world.client.get("/api/v1/audit/public-key", headers=auditor)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-pem-file")
    return Setup(
        auditor=auditor,
        c1_auditor=await world.login("carl"),
        nurse=nurse,
        public_key=offline.load_public_key(response.content),
        env=cli_env(database_url, settings.data_dir),
    )


async def created(request: Any) -> None:
    response = await request
    assert response.status_code == 201, response.text


async def export(world: World, headers: Headers, **params: str) -> httpx.Response:
    return await world.client.get(EXPORT, headers=headers, params=params)


def ndjson_lines(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.splitlines()]


def verify(data: bytes, key: Ed25519PublicKey, **kwargs: Any) -> offline.Result:
    return offline.verify_export(io.BytesIO(data), key, **kwargs)


async def db_entries(db: asyncpg.Connection[Any], where: str = "true") -> list[asyncpg.Record]:
    return await db.fetch(f"SELECT * FROM audit_entries WHERE {where} ORDER BY chain, seq")


# --- NDJSON -----------------------------------------------------------------------


async def test_ndjson_export_carries_every_entry_and_verifies(world: World, setup: Setup) -> None:
    response = await export(world, setup.auditor)
    assert response.status_code == 200, response.text
    # Every entry up to its own start record; only its closing record comes later.
    before = await db_entries(world.db, "action <> 'audit.exported'")
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert "attachment" in response.headers["content-disposition"]

    *entries, last = ndjson_lines(response.content)
    assert [(e["chain"], e["seq"]) for e in entries] == [(r["chain"], r["seq"]) for r in before]
    raw_lines = response.content.splitlines()
    for entry, raw, row in zip(entries, raw_lines, before, strict=False):
        assert entry["hash"] == row["hash"].hex()
        assert entry["prev_hash"] == row["prev_hash"].hex()
        # The content is carried as stored: its bytes are what the hash covers.
        assert offline.raw_content(raw) == row["content"]
        assert hashlib.sha256(row["content"].encode()).digest() == row["hash"]
        assert entry["content"]["action"] == row["action"]

    manifest = last["manifest"]
    assert manifest["entries"] == len(before)
    assert manifest["export_id"] == response.headers["x-safetyreport-export-id"]
    # C1's entries (sign-ins are in the clinic's chain too), and the start of this export.
    assert manifest["chains"]["clinic:C1"] == {"first_seq": 1, "last_seq": 9, "entries": 9}
    assert manifest["key_id"] == offline.key_id(setup.public_key)
    body = response.content[: response.content.rindex(b"\n", 0, -1) + 1]
    assert manifest["body_sha256"] == hashlib.sha256(body).hexdigest()

    result = verify(response.content, setup.public_key)
    assert result.problems == []
    assert (result.ok, result.entries) == (True, len(before))


async def test_export_is_audited_before_and_after(world: World, setup: Setup) -> None:
    response = await export(world, setup.auditor, clinic="C1", action="report.created")
    assert response.status_code == 200
    rows = await world.db.fetch(
        "SELECT action, actor, object_id, details FROM audit_entries "
        "WHERE action LIKE 'audit.export%' ORDER BY chain, seq"
    )
    assert [r["action"] for r in rows] == ["audit.export_started", "audit.exported"]
    export_id = response.headers["x-safetyreport-export-id"]
    assert {r["object_id"] for r in rows} == {export_id}
    assert {r["actor"] for r in rows} == {"audrey"}
    started, finished = (r["details"] for r in rows)
    assert started["filters"]["clinic"] == "C1"
    assert started["filters"]["action"] == "report.created"
    assert started["format"] == "ndjson"
    assert finished["entries"] == 2
    assert finished["completed"] is True
    *_, last = ndjson_lines(response.content)
    assert finished["body_sha256"] == last["manifest"]["body_sha256"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param({"clinic": "C2"}, "chain = 'clinic:C2'", id="clinic"),
        pytest.param({"action": "report.created"}, "action = 'report.created'", id="action"),
        pytest.param({"actor": "otto"}, "actor = 'otto'", id="actor"),
        pytest.param({"object": "clinic"}, "object_type = 'clinic'", id="object-type"),
        pytest.param(
            {"object": "user:otto"}, "object_type = 'user' AND object_id = 'otto'", id="object-id"
        ),
    ],
)
async def test_filters_select_exactly_the_matching_entries(
    world: World, setup: Setup, params: dict[str, str], expected: str
) -> None:
    assert await db_entries(world.db, expected), "the filter should match something"
    response = await export(world, setup.auditor, **params)
    # What matched when the export started (its own start record included).
    rows = await db_entries(world.db, f"{expected} AND action <> 'audit.exported'")
    *entries, last = ndjson_lines(response.content)
    assert [(e["chain"], e["seq"]) for e in entries] == [(r["chain"], r["seq"]) for r in rows]
    assert last["manifest"]["filters"] == {
        "from": None,
        "until": None,
        "clinic": None,
        "actor": None,
        "action": None,
        "object": None,
        **params,
    }
    assert verify(response.content, setup.public_key).ok


async def test_time_filters_take_utc_times_and_select_a_range(world: World, setup: Setup) -> None:
    rows = await db_entries(world.db, "chain = 'clinic:C1'")
    since, until = rows[1]["recorded_at"], rows[3]["recorded_at"]
    response = await export(
        world, setup.auditor, clinic="C1", **{"from": since.isoformat(), "until": until.isoformat()}
    )
    assert response.status_code == 200, response.text
    *entries, last = ndjson_lines(response.content)
    assert [e["seq"] for e in entries] == [2, 3]
    assert last["manifest"]["filters"]["from"] == since.isoformat(timespec="microseconds")
    assert verify(response.content, setup.public_key).ok


@pytest.mark.parametrize(
    ("params", "field", "rule"),
    [
        ({"from": "2026-01-01T00:00:00"}, "from", "offset_required"),
        ({"until": "2026-01-01T00:00:00"}, "until", "offset_required"),
        (
            {"from": "2026-01-02T00:00:00+00:00", "until": "2026-01-01T00:00:00+00:00"},
            "until",
            "after_from",
        ),
    ],
)
async def test_bad_filters_are_422_naming_the_field(
    world: World, setup: Setup, params: dict[str, str], field: str, rule: str
) -> None:
    response = await export(world, setup.auditor, **params)
    assert response.status_code == 422, response.text
    assert {"field": field, "rule": rule} in [
        {"field": e["field"], "rule": e["rule"]} for e in response.json()["errors"]
    ]
    started = await world.db.fetchval(
        "SELECT count(*) FROM audit_entries WHERE action = 'audit.export_started'"
    )
    assert started == 0


async def test_bad_format_is_rejected(world: World, setup: Setup) -> None:
    response = await export(world, setup.auditor, format="xlsx")
    assert response.status_code in (400, 422)


async def test_clinic_scoped_auditor_sees_only_her_clinics(world: World, setup: Setup) -> None:
    response = await export(world, setup.c1_auditor)
    *entries, last = ndjson_lines(response.content)
    assert {e["chain"] for e in entries} == {"clinic:C1"}
    assert set(last["manifest"]["chains"]) == {"clinic:C1"}

    foreign = await export(world, setup.c1_auditor, clinic="C2")
    assert foreign.status_code == 404
    missing = await export(world, setup.c1_auditor, clinic="NOPE")
    assert missing.status_code == 404


async def test_only_auditors_and_admins_export(world: World, setup: Setup) -> None:
    assert (await export(world, setup.nurse)).status_code == 403
    assert (await world.client.get(EXPORT)).status_code == 401


# --- CSV --------------------------------------------------------------------------


def csv_rows(archive_bytes: bytes) -> tuple[list[dict[str, str]], dict[str, Any]]:
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        assert sorted(archive.namelist()) == [offline.CSV_MEMBER, offline.MANIFEST_MEMBER]
        text = archive.read(offline.CSV_MEMBER).decode()
        manifest = json.loads(archive.read(offline.MANIFEST_MEMBER))
    return list(csv.DictReader(io.StringIO(text, newline=""))), manifest


async def test_csv_export_is_a_zip_with_csv_and_signed_manifest(world: World, setup: Setup) -> None:
    response = await export(world, setup.auditor, format="csv")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/zip")
    rows, manifest = csv_rows(response.content)
    stored = await db_entries(world.db, "action <> 'audit.exported'")
    assert [(r["chain"], int(r["seq"])) for r in rows] == [(s["chain"], s["seq"]) for s in stored]
    assert list(rows[0]) == list(offline.CSV_COLUMNS)
    first = rows[0]
    assert first["recorded_at"].endswith("+00:00")
    assert json.loads(first["content"])["recorded_at"] == first["recorded_at"]
    assert manifest["manifest"]["content"] == "csv"
    result = verify(response.content, setup.public_key)
    assert result.problems == []
    assert result.entries == len(stored)


async def test_csv_cells_that_look_like_formulas_are_neutralised(
    world: World, setup: Setup
) -> None:
    response = await export(world, setup.auditor, format="csv", actor="-nina")
    rows, _ = csv_rows(response.content)
    assert rows
    assert {r["actor"] for r in rows} == {"'-nina"}
    for row in rows:
        for column, cell in row.items():
            assert not cell.startswith(("=", "+", "-", "@")), (column, cell)
    # The verifier reads the value back and checks it against the content.
    assert verify(response.content, setup.public_key).ok


@pytest.mark.parametrize(
    "value", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'quoted", "''", "plain", ""]
)
def test_neutralising_is_undone_exactly_by_the_verifier(value: str) -> None:
    assert offline.restore_cell(neutralise(value)) == value


async def test_csv_edit_of_a_shown_column_is_named(world: World, setup: Setup) -> None:
    response = await export(world, setup.auditor, format="csv", clinic="C1")
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        text = archive.read(offline.CSV_MEMBER).decode()
        manifest = archive.read(offline.MANIFEST_MEMBER)
    edited = text.replace("report.created", "report.deleted", 1)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(offline.CSV_MEMBER, edited)
        archive.writestr(offline.MANIFEST_MEMBER, manifest)
    result = verify(out.getvalue(), setup.public_key)
    assert not result.ok
    assert any(
        p.startswith("entry clinic:C1#") and "column action differs" in p for p in result.problems
    ), result.problems
    assert any(p.startswith("manifest.body_sha256") for p in result.problems)


# --- tampering with a downloaded export -------------------------------------------


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def flip_byte(data: bytes) -> bytes:
    """Change one letter of the action recorded in the third line's content."""
    lines = _lines(data)
    at = lines[2].index(b"created")
    lines[2] = lines[2][:at] + b"C" + lines[2][at + 1 :]
    return b"".join(lines)


def drop_line(data: bytes) -> bytes:
    lines = _lines(data)
    del lines[2]
    return b"".join(lines)


def swap_lines(data: bytes) -> bytes:
    lines = _lines(data)
    lines[2], lines[3] = lines[3], lines[2]
    return b"".join(lines)


def append_forged(data: bytes) -> bytes:
    """A self-consistent new entry that links to the last one of its chain."""
    lines = _lines(data)
    *entries, manifest = lines
    last = json.loads(entries[-1])
    content = {**last["content"], "seq": last["seq"] + 1, "prev_hash": last["hash"]}
    content["action"] = "report.deleted"
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()
    forged = (
        f'{{"chain":"{last["chain"]}","seq":{last["seq"] + 1},"prev_hash":"{last["hash"]}",'
        f'"hash":"{digest}","content":{text}}}\n'
    )
    assert offline.raw_content(forged.encode()) == text
    return b"".join([*entries, forged.encode(), manifest])


def line_after_manifest(data: bytes) -> bytes:
    lines = _lines(data)
    return data + lines[0]


def edit_manifest(data: bytes) -> bytes:
    lines = _lines(data)
    signed = json.loads(lines[-1])
    signed["manifest"]["entries"] -= 1
    lines[-1] = json.dumps(signed).encode() + b"\n"
    return b"".join(lines)


# The export holds clinic:C1 only: entries 1-8 on lines 1-8 (sign-ins are in the
# clinic's chain too), then its own start record (entry 9, line 9), the manifest on
# line 10.
TAMPERING = [
    pytest.param(flip_byte, "entry clinic:C1#3 (line 3) was altered", id="byte-flipped"),
    pytest.param(drop_line, "entry clinic:C1#3 is missing from the export", id="dropped"),
    pytest.param(
        swap_lines,
        "entry clinic:C1#3 (line 4) is out of order: it follows entry clinic:C1#4",
        id="swapped",
    ),
    pytest.param(append_forged, "manifest.entries says 9, the export holds 10", id="forged"),
    pytest.param(line_after_manifest, "line 11 follows the manifest", id="after-manifest"),
    pytest.param(edit_manifest, "manifest.signature does not verify", id="manifest-edited"),
]


async def save_for_offline(
    world: World, setup: Setup, folder: Path, data: bytes
) -> tuple[Path, Path]:
    """The export and the service's public key as files, as an auditor keeps them."""
    export_file, key_file = folder / "export.ndjson", folder / "key.pem"
    export_file.write_bytes(data)
    key_file.write_bytes(
        (await world.client.get("/api/v1/audit/public-key", headers=setup.auditor)).content
    )
    return export_file, key_file


@pytest.mark.end_to_end
@pytest.mark.parametrize(("tamper", "problem"), TAMPERING)
async def test_tampered_exports_fail_naming_what_broke(
    world: World, setup: Setup, tmp_path: Path, tamper: Callable[[bytes], bytes], problem: str
) -> None:
    original = (await export(world, setup.auditor, clinic="C1")).content
    assert verify(original, setup.public_key).ok
    tampered = tamper(original)
    assert tampered != original

    result = verify(tampered, setup.public_key)
    assert not result.ok
    assert any(problem in p for p in result.problems), result.problems
    if tamper is not edit_manifest and tamper is not line_after_manifest:
        assert any(p.startswith("manifest.body_sha256") for p in result.problems)

    # The same through the service's command and the standalone script.
    export_file, key_file = await save_for_offline(world, setup, tmp_path, tampered)
    cli = await run_cli(
        "audit", "verify", str(export_file), "--public-key", str(key_file), env=setup.env
    )
    assert cli.code == 1, cli.stdout + cli.stderr
    assert problem in cli.stdout
    assert "NOT VERIFIED" in cli.stdout
    script = await standalone(export_file, key_file)
    assert script.returncode == 1
    assert problem in script.stdout


@pytest.mark.end_to_end
async def test_untouched_export_passes_cli_script_and_upload(
    world: World, setup: Setup, tmp_path: Path
) -> None:
    data = (await export(world, setup.auditor)).content
    export_file, key_file = await save_for_offline(world, setup, tmp_path, data)
    cli = await run_cli(
        "audit", "verify", str(export_file), "--public-key", str(key_file), env=setup.env
    )
    assert cli.code == 0, cli.stdout + cli.stderr
    assert "verified:" in cli.stdout
    script = await standalone(export_file, key_file, "--json")
    assert script.returncode == 0, script.stdout + script.stderr
    assert json.loads(script.stdout)["ok"] is True

    upload = await world.client.post(
        "/api/v1/audit/export/verify", content=data, headers=setup.auditor
    )
    assert upload.status_code == 200, upload.text
    assert upload.json()["ok"] is True
    bad = await world.client.post(
        "/api/v1/audit/export/verify", content=drop_line(data), headers=setup.auditor
    )
    assert bad.json()["ok"] is False
    assert bad.json()["problems"]
    verified = await world.db.fetch(
        "SELECT details FROM audit_entries WHERE action = 'audit.export_verified' ORDER BY seq"
    )
    assert [r["details"]["ok"] for r in verified] == [True, False]


async def test_an_uploaded_csv_zip_is_verified(world: World, setup: Setup) -> None:
    """The zip is read from its end: the spooled upload must be read from its start."""
    data = (await export(world, setup.auditor, format="csv")).content
    assert data[:4] == b"PK\x03\x04"
    upload = await world.client.post(
        "/api/v1/audit/export/verify", content=data, headers=setup.auditor
    )
    assert upload.status_code == 200, upload.text
    assert upload.json()["ok"] is True, upload.json()
    assert upload.json()["entries"] > 0


async def test_another_key_does_not_verify(world: World, setup: Setup) -> None:
    data = (await export(world, setup.auditor)).content
    result = verify(data, Ed25519PrivateKey.generate().public_key())
    assert not result.ok
    assert any("manifest.signature does not verify" in p for p in result.problems)
    assert any("manifest.key_id" in p for p in result.problems)


@dataclass
class ScriptRun:
    returncode: int
    stdout: str
    stderr: str


async def standalone(export_file: Path, key_file: Path, *args: str) -> ScriptRun:
    """Run offline.py as a plain script, isolated from the project (python -I)."""
    import asyncio

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        offline.__file__,
        str(export_file),
        "--public-key",
        str(key_file),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=export_file.parent,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return ScriptRun(process.returncode, out.decode(), err.decode())


def test_standalone_verifier_needs_only_the_standard_library_and_cryptography() -> None:
    tree = ast.parse(Path(offline.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"cryptography"}


async def test_the_service_serves_the_verifier_script(world: World, setup: Setup) -> None:
    response = await world.client.get("/api/v1/audit/verifier.py", headers=setup.nurse)
    assert response.status_code == 200
    assert response.content == VERIFIER_SCRIPT
    assert b"def verify_export(" in response.content


# --- entries written before content was stored ---------------------------------------


async def test_entries_without_stored_content_export_and_verify(world: World, setup: Setup) -> None:
    """Entries from before migration 0004 have no content; it is recomputed for them."""
    await world.db.execute("SET session_replication_role = replica")
    try:
        async with world.db.transaction():
            await world.db.execute(
                "ALTER TABLE audit_entries DROP CONSTRAINT audit_entries_content_present"
            )
            await world.db.execute(
                "UPDATE audit_entries SET content = NULL WHERE chain = 'clinic:C1' AND seq <= 3"
            )
            await world.db.execute(
                "ALTER TABLE audit_entries ADD CONSTRAINT audit_entries_content_present "
                "CHECK (content IS NOT NULL) NOT VALID"
            )
    finally:
        await world.db.execute("RESET session_replication_role")
    assert (await verify_chains(world.db)).ok
    for fmt in ("ndjson", "csv"):
        response = await export(world, setup.auditor, clinic="C1", format=fmt)
        result = verify(response.content, setup.public_key)
        assert result.problems == [], fmt
        # C1's entries, those of the exports before, and this export's start.
        assert result.entries == await world.db.fetchval(
            "SELECT count(*) FROM audit_entries "
            "WHERE chain = 'clinic:C1' AND NOT (action = 'audit.exported' AND object_id = $1)",
            response.headers["x-safetyreport-export-id"],
        )


# --- size ---------------------------------------------------------------------------


async def test_a_large_export_streams_in_batches_and_verifies(world: World, setup: Setup) -> None:
    count = 12_000  # several cursor batches
    await append_entries(world.db, "clinic:C2", count)
    response = await export(world, setup.auditor, clinic="C2")
    result = verify(response.content, setup.public_key)
    assert result.problems == []
    # clinic, user, two sign-ins, two reports, this export's start
    assert result.entries == count + 7
    assert (await verify_chains(world.db)).ok


# --- a client that goes away ------------------------------------------------------------


@pytest.mark.end_to_end
@pytest.mark.timeout(90)
async def test_an_abandoned_export_is_recorded_as_incomplete(
    database_url: str, tmp_path: Path, world: World
) -> None:
    """Over a real server: the client reads the first bytes of a big export and hangs up."""
    await world.clinic("C1")
    await world.user("audrey", "auditor", all_clinics=True)
    await append_entries(world.db, "clinic:C1", 60_000)
    async with (
        serving(database_url, tmp_path, data_dir=tmp_path / "data") as served,
        httpx.AsyncClient(base_url=served.base_url, timeout=30) as http,
    ):
        login = await http.post(
            "/api/v1/auth/login", json={"username": "audrey", "password": PASSWORD}
        )
        headers = {"Authorization": f"Bearer {login.json()['token']}"}
        async with http.stream("GET", EXPORT, headers=headers) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                assert chunk
                break  # hang up after the first chunk

        async def recorded() -> bool:
            rows = await world.db.fetch(
                "SELECT details FROM audit_entries WHERE action = 'audit.exported'"
            )
            return bool(rows)

        await eventually(recorded, "the export's closing audit entry")
    details = await world.db.fetchval(
        "SELECT details FROM audit_entries WHERE action = 'audit.exported'"
    )
    assert details["completed"] is False
    assert 0 < details["entries"] < 60_000
    assert (await verify_chains(world.db)).ok
