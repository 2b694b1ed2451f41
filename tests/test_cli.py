"""The ``safetyreport`` command, run as a real subprocess.

``serve --demo`` and the embedded-PostgreSQL tests are the heavy ones (a few seconds
each: a server start, an initdb); each carries a 60 s timeout.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.helpers.processes import SUBPROCESS_SECONDS, cli_args, cli_env, run_cli, serving
from tests.helpers.world import World

pytestmark = pytest.mark.end_to_end

NORA_PASSWORD = "she-has-a-long-passphrase"


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return cli_env(database_url, tmp_path / "data")


# --- clinic add / user add ------------------------------------------------------


async def test_clinic_and_user_added_on_the_command_line_can_log_in(
    world: World, env: dict[str, str]
) -> None:
    clinic = await run_cli("clinic", "add", "C9", "--name", "Clinic Nine", env=env)
    assert clinic.code == 0, clinic.stderr
    assert "clinic C9 created" in clinic.stdout
    args = ("user", "add", "nora", "--role", "nurse", "--clinic", "C9", "--password-stdin")
    user = await run_cli(*args, env=env, stdin=NORA_PASSWORD + "\n")
    assert user.code == 0, user.stderr
    assert "user nora created" in user.stdout
    # The password travelled on stdin only, and is never echoed.
    assert all(NORA_PASSWORD not in arg for arg in cli_args(*args))
    assert NORA_PASSWORD not in user.stdout + user.stderr

    headers = await world.login("nora", NORA_PASSWORD)
    me = (await world.client.get("/api/v1/me", headers=headers)).json()
    assert me["role"] == "nurse"
    assert me["clinics"] == [{"code": "C9", "name": "Clinic Nine"}]


async def test_cli_creations_are_audited(world: World, env: dict[str, str]) -> None:
    await run_cli("clinic", "add", "C9", "--name", "Clinic Nine", env=env)
    args = ("user", "add", "nora", "--role", "nurse", "--clinic", "C9", "--password-stdin")
    await run_cli(*args, env=env, stdin=NORA_PASSWORD + "\n")
    rows = await world.db.fetch(
        "SELECT seq, action, actor FROM audit_entries WHERE chain = 'clinic:C9' ORDER BY seq"
    )
    assert [(r["seq"], r["action"], r["actor"]) for r in rows] == [
        (1, "clinic.created", "system:cli"),
        (2, "user.created", "system:cli"),
    ]


async def test_user_add_without_password_stdin_fails(world: World, env: dict[str, str]) -> None:
    await world.clinic("C9")
    result = await run_cli("user", "add", "nora", "--role", "nurse", "--clinic", "C9", env=env)
    assert result.code != 0
    assert "--password-stdin" in result.stderr
    assert await world.db.fetchval("SELECT count(*) FROM users") == 0


async def test_user_add_refuses_a_password_argument(world: World, env: dict[str, str]) -> None:
    await world.clinic("C9")
    result = await run_cli(
        "user", "add", "nora", "--role", "nurse", "--clinic", "C9", "--password", NORA_PASSWORD,
        env=env,
    )  # fmt: skip
    assert result.code == 2
    assert await world.db.fetchval("SELECT count(*) FROM users") == 0


async def test_user_add_rejects_a_short_password(world: World, env: dict[str, str]) -> None:
    await world.clinic("C9")
    args = ("user", "add", "nora", "--role", "nurse", "--clinic", "C9", "--password-stdin")
    result = await run_cli(*args, env=env, stdin="short\n")
    assert result.code == 2
    assert "password" in result.stderr
    assert await world.db.fetchval("SELECT count(*) FROM users") == 0


async def test_user_add_rejects_an_unknown_clinic(world: World, env: dict[str, str]) -> None:
    args = ("user", "add", "nora", "--role", "nurse", "--clinic", "NOPE", "--password-stdin")
    result = await run_cli(*args, env=env, stdin=NORA_PASSWORD + "\n")
    assert result.code == 2
    assert "NOPE" in result.stderr
    assert await world.db.fetchval("SELECT count(*) FROM users") == 0


async def test_clinic_add_twice_fails(world: World, env: dict[str, str]) -> None:
    await world.clinic("C9")
    result = await run_cli("clinic", "add", "C9", "--name", "Again", env=env)
    assert result.code == 2
    assert "C9" in result.stderr


async def test_console_script_is_installed(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("safetyreport")
    proc = await asyncio.create_subprocess_exec(
        str(script), "--help", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), SUBPROCESS_SECONDS)
    assert proc.returncode == 0
    for command in (b"serve", b"migrate", b"clinic", b"user", b"audit"):
        assert command in out


# --- serve --demo ---------------------------------------------------------------


def request_log(stderr: str) -> list[dict[str, Any]]:
    """The request lines of the JSON log (every line must be a JSON object)."""
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    return [line for line in lines if line.get("logger") == "safetyreport.request"]


@pytest.mark.timeout(60)
async def test_serve_demo_end_to_end(database_url: str, tmp_path: Path) -> None:
    async with serving(
        database_url, tmp_path, "serve", "--demo", data_dir=tmp_path / "data"
    ) as served:
        stdout = served.stdout()
        assert f"serving on {served.base_url}" in stdout
        assert "demo data created" in stdout
        for username, password in (
            ("nurse", "demo-lilac-harbour-7"),
            ("auditor", "demo-quiet-meadow-9"),
        ):
            assert username in stdout
            assert password in stdout

        async with httpx.AsyncClient(base_url=served.base_url, timeout=10) as http:
            login = await http.post(
                "/api/v1/auth/login", json={"username": "nurse", "password": "demo-lilac-harbour-7"}
            )
            assert login.status_code == 200, login.text
            headers = {"Authorization": f"Bearer {login.json()['token']}"}
            reports = await http.get("/api/v1/reports", headers=headers)
            assert reports.status_code == 200, reports.text
            items = reports.json()["items"]
            assert len(items) == 6
            assert {item["clinic"] for item in items} == {"DEMO"}
            assert {item["kind"] for item in items} == {
                "blood_pressure",
                "dissociation",
                "adverse_event",
                "misuse_concern",
                "stock_incident",
            }
            # The stock incident names no patient.
            stock = [item for item in items if item["kind"] == "stock_incident"]
            assert [item.get("patient_ref") for item in stock] == [None]
            schema = await http.get("/schema/openapi.json")
            assert schema.status_code == 200
            assert schema.json()["openapi"].startswith("3.")
            assert "/api/v1/reports" in schema.json()["paths"]

        await served.terminate()  # raises TimeoutError unless it exits within the bound
    assert "Application shutdown complete." in served.stderr()

    log = request_log(served.stderr())
    for method, path, status in (
        ("POST", "/api/v1/auth/login", 200),
        ("GET", "/api/v1/reports", 200),
        ("GET", "/schema/openapi.json", 200),
    ):
        matching = [line for line in log if line["method"] == method and line["path"] == path]
        assert len(matching) == 1, (method, path, log)
        assert matching[0]["status"] == status
    reports_line = next(line for line in log if line["path"] == "/api/v1/reports")
    assert reports_line["user"] == "nurse"


@pytest.mark.timeout(60)
async def test_serve_exits_with_zero_on_sigterm(database_url: str, tmp_path: Path) -> None:
    async with serving(
        database_url, tmp_path, "serve", "--demo", data_dir=tmp_path / "data"
    ) as served:
        assert await served.terminate() == 0, served.stderr()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_stops_the_embedded_postgres_too(
    tmp_path: Path, embedded_data_dir: Path, workers: str
) -> None:
    """SIGTERM ends serve normally, so the embedded server it started is stopped too."""
    async with serving(
        None, tmp_path, "embedded", "--demo", workers=int(workers), data_dir=embedded_data_dir
    ) as served:
        postmaster_pid = embedded_data_dir / "pgdata" / "postmaster.pid"
        assert postmaster_pid.exists()
        assert await served.terminate() == 0, served.stderr()
    assert not postmaster_pid.exists(), "the embedded PostgreSQL is still running"


@pytest.mark.timeout(60)
async def test_sigterm_ends_open_alert_streams_at_once(database_url: str, tmp_path: Path) -> None:
    """An open event stream does not hold the server until its graceful timeout."""
    async with (
        serving(
            database_url, tmp_path, "streaming", "--demo", data_dir=tmp_path / "data"
        ) as served,
        httpx.AsyncClient(base_url=served.base_url, timeout=30) as http,
    ):
        login = await http.post(
            "/api/v1/auth/login",
            json={"username": "officer", "password": "demo-copper-lantern-4"},
        )
        headers = {"Authorization": f"Bearer {login.json()['token']}"}
        async with http.stream("GET", "/api/v1/alerts/stream", headers=headers) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            assert (await asyncio.wait_for(anext(lines), 10)).startswith(":")
            assert await served.terminate() == 0, served.stderr()
            # The server ended the stream rather than cutting it after a timeout.
            async with asyncio.timeout(10):
                rest = [line async for line in lines]
            assert any("shutting down" in line for line in rest), rest
    assert "graceful shutdown exceeded" not in served.stderr()


@pytest.mark.timeout(60)
async def test_serve_demo_twice_keeps_one_copy_of_the_demo_data(
    database_url: str, tmp_path: Path, db: asyncpg.Connection[Any]
) -> None:
    for run in ("first", "second"):
        async with serving(
            database_url, tmp_path, run, "--demo", data_dir=tmp_path / "data"
        ) as served:
            await served.terminate()
    assert "demo data already present" in served.stdout()
    assert await db.fetchval("SELECT count(*) FROM clinics") == 1
    assert await db.fetchval("SELECT count(*) FROM reports") == 6  # the demo's six, once


# --- embedded PostgreSQL --------------------------------------------------------


@pytest.mark.timeout(60)
async def test_migrate_on_embedded_postgres_creates_then_reuses_data(
    embedded_data_dir: Path,
) -> None:
    data_dir = embedded_data_dir
    env = cli_env(None, data_dir)

    first = await run_cli("migrate", env=env)
    assert first.code == 0, first.stderr
    assert "applied migration 0001_core" in first.stdout
    pg_version = data_dir / "pgdata" / "PG_VERSION"
    assert pg_version.read_text().strip() == "18"

    second = await run_cli("migrate", env=env)
    assert second.code == 0, second.stderr
    assert "applied migration" not in second.stdout
    assert "database schema is up to date" in second.stdout
