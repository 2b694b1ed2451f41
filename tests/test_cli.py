"""The ``safetyreport`` command, run as a real subprocess.

``serve --demo`` and the embedded-PostgreSQL tests are the heavy ones (a few seconds
each: a server start, an initdb); each carries a 60 s timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.helpers.world import World

NORA_PASSWORD = "she-has-a-long-passphrase"
SUBPROCESS_TIMEOUT = 45.0
STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


def cli_env(database_url: str | None, data_dir: Path) -> dict[str, str]:
    """The test process's environment without any service setting, plus ours."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "DATABASE_URL" and not k.startswith("SAFETYREPORT_")
    }
    env["SAFETYREPORT_DATA_DIR"] = str(data_dir)
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return env


def cli_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "safetyreport.cli", *args]


async def run_cli(*args: str, env: dict[str, str], stdin: str | None = None) -> CliResult:
    """Run ``safetyreport ARGS`` to completion (killed after SUBPROCESS_TIMEOUT seconds)."""
    proc = await asyncio.create_subprocess_exec(
        *cli_args(*args),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(None if stdin is None else stdin.encode()), SUBPROCESS_TIMEOUT
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


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
    out, _ = await asyncio.wait_for(proc.communicate(), SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0
    for command in (b"serve", b"migrate", b"clinic", b"user", b"audit"):
        assert command in out


# --- serve --demo ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(slots=True)
class Served:
    proc: asyncio.subprocess.Process
    base_url: str
    stdout_path: Path
    stderr_path: Path

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    async def terminate(self) -> int:
        """SIGTERM, then wait (bounded) for the process to exit; its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), SHUTDOWN_TIMEOUT)


async def _wait_healthy(served: Served) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_TIMEOUT
    async with httpx.AsyncClient(base_url=served.base_url, timeout=3) as http:
        while loop.time() < deadline:
            if served.proc.returncode is not None:
                pytest.fail(f"serve exited with {served.proc.returncode}:\n{served.stderr()}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/health")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    pytest.fail(f"serve did not become healthy in {STARTUP_TIMEOUT} s:\n{served.stderr()}")


@contextlib.asynccontextmanager
async def serving(
    database_url: str | None,
    tmp_path: Path,
    name: str = "serve",
    *extra: str,
    demo: bool = True,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Served]:
    """``safetyreport serve [--demo]`` on a free port; killed on the way out if still running."""
    port = free_port()
    if demo:
        extra = ("--demo", *extra)
    stdout_path, stderr_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *cli_args("serve", "--port", str(port), *extra),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=cli_env(database_url, tmp_path / "data") | (env or {}),
        )
    served = Served(proc, f"http://127.0.0.1:{port}", stdout_path, stderr_path)
    try:
        await _wait_healthy(served)
        yield served
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def request_log(stderr: str) -> list[dict[str, Any]]:
    """The request lines of the JSON log (every line must be a JSON object)."""
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    return [line for line in lines if line.get("logger") == "safetyreport.request"]


@pytest.mark.timeout(60)
async def test_serve_demo_end_to_end(database_url: str, tmp_path: Path) -> None:
    async with serving(database_url, tmp_path) as served:
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
            assert len(items) == 4
            assert {item["clinic"] for item in items} == {"DEMO"}
            assert {item["kind"] for item in items} == {
                "blood_pressure",
                "dissociation",
                "misuse_concern",
            }
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
    async with serving(database_url, tmp_path) as served:
        assert await served.terminate() == 0, served.stderr()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_stops_the_embedded_postgres_too(tmp_path: Path, workers: str) -> None:
    """SIGTERM ends serve normally, so the embedded server it started is stopped too."""
    async with serving(None, tmp_path, "embedded", "--workers", workers) as served:
        postmaster_pid = tmp_path / "data" / "pgdata" / "postmaster.pid"
        assert postmaster_pid.exists()
        assert await served.terminate() == 0, served.stderr()
    assert not postmaster_pid.exists(), "the embedded PostgreSQL is still running"


@pytest.mark.timeout(60)
async def test_sigterm_ends_open_alert_streams_at_once(database_url: str, tmp_path: Path) -> None:
    """An open event stream does not hold the server until its graceful timeout."""
    async with (
        serving(database_url, tmp_path, "streaming") as served,
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
        async with serving(database_url, tmp_path, run) as served:
            await served.terminate()
    assert "demo data already present" in served.stdout()
    assert await db.fetchval("SELECT count(*) FROM clinics") == 1
    assert await db.fetchval("SELECT count(*) FROM reports") == 4


# --- embedded PostgreSQL --------------------------------------------------------


@pytest.mark.timeout(60)
async def test_migrate_on_embedded_postgres_creates_then_reuses_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
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
