"""The server's edge, through a real ``safetyreport serve``: proxies, slow headers, limits.

Each test starts the service as operators do and talks to it over TCP. Waits are
bounded generously; nothing here asserts how fast the service is.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from safetyreport.db.embedded import app_url
from safetyreport.db.pool import connect
from safetyreport.settings import APP_DB_ROLE, Settings
from tests.helpers.postgres import with_database
from tests.helpers.processes import ServeProcess, cli_env, free_port, run_cli, serving
from tests.helpers.service import UserSpec, seed
from tests.helpers.world import PASSWORD

pytestmark = [pytest.mark.end_to_end, pytest.mark.timeout(180)]

FORGED = "203.0.113.66"
# Bounds on what must happen "soon": far above the deadlines the tests configure.
CLOSE_WITHIN_SECONDS = 30.0


async def _login_addresses(db: asyncpg.Connection[Any]) -> set[str]:
    rows = await db.fetch(
        "SELECT DISTINCT client_addr FROM audit_entries WHERE action = 'auth.login'"
    )
    return {r["client_addr"] for r in rows}


async def _log_in_forging(service: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as http:
        response = await http.post(
            "/api/v1/auth/login",
            json={"username": "nina", "password": PASSWORD},
            headers={"X-Forwarded-For": FORGED},
        )
    assert response.status_code == 200, response.text


@pytest.fixture
async def nurse(database_url: str) -> None:
    await seed(database_url, {"C1": "Clinic C1"}, [UserSpec("nina", "nurse", ("C1",))])


@pytest.mark.usefixtures("nurse")
async def test_x_forwarded_for_from_loopback_is_not_believed_without_the_setting(
    database_url: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    """uvicorn used to trust 127.0.0.1 whatever SAFETYREPORT_TRUSTED_PROXIES said."""
    async with serving(database_url, tmp_path) as service:
        await _log_in_forging(service)
    assert await _login_addresses(db) == {"127.0.0.1"}


@pytest.mark.usefixtures("nurse")
async def test_x_forwarded_for_from_a_trusted_proxy_is_believed(
    database_url: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    env = {"SAFETYREPORT_TRUSTED_PROXIES": "127.0.0.1"}
    async with serving(database_url, tmp_path, env=env) as service:
        await _log_in_forging(service)
    assert await _login_addresses(db) == {FORGED}


@contextlib.asynccontextmanager
async def _raw(service: ServeProcess) -> AsyncIterator[tuple[asyncio.StreamReader, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_a_request_line_never_finished_is_closed_after_the_header_deadline(
    database_url: str, tmp_path: Path
) -> None:
    env = {"SAFETYREPORT_HEADER_TIMEOUT_SECONDS": "2"}
    async with serving(database_url, tmp_path, env=env) as service:
        async with _raw(service) as (reader, writer):
            writer.write(b"GET /hea")
            await writer.drain()
            # Read until the server closes: it used to wait for the rest forever.
            answer = await asyncio.wait_for(reader.read(), CLOSE_WITHIN_SECONDS)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        async with _raw(service) as (reader, writer):
            # A connection that sends nothing at all is closed too.
            answer = await asyncio.wait_for(reader.read(), CLOSE_WITHIN_SECONDS)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as http:
            assert (await http.get("/health")).status_code == 200


async def test_beyond_the_connection_limit_the_server_answers_503(
    database_url: str, tmp_path: Path
) -> None:
    limit = 4
    env = {
        "SAFETYREPORT_MAX_CONNECTIONS": str(limit),
        "SAFETYREPORT_HEADER_TIMEOUT_SECONDS": "120",
    }
    async with serving(database_url, tmp_path, env=env) as service:
        held = [await asyncio.open_connection("127.0.0.1", service.port) for _ in range(limit)]
        try:
            # Polled: the server may not have accepted every held connection yet.
            async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as http:
                for _ in range(100):
                    response = await http.get("/health")
                    if response.status_code != 200:
                        break
                    await asyncio.sleep(0.1)
            assert response.status_code == 503
            assert response.text == "Service Unavailable"
        finally:
            for _, writer in held:
                writer.close()
        async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as http:
            for _ in range(100):
                if (await http.get("/health")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the server did not recover once the connections closed")


# --- serving with the application role only -------------------------------------------


@pytest.mark.usefixtures("nurse")
async def test_serve_no_migrate_runs_with_only_the_application_role(
    database_url: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    """compose.yaml gives the service this URL only: it serves, and cannot alter the schema."""
    app_only = app_url(Settings.from_env({}), database_url)
    assert urlsplit(app_only).username == APP_DB_ROLE
    service = ServeProcess(app_only, tmp_path, serve_args=("--no-migrate",))
    try:
        await service.start()
        await _log_in_forging(service)  # a login: reads, and writes its audit entry
        users = await db.fetch(
            "SELECT DISTINCT usename FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND application_name LIKE 'safetyreport%'"
        )
        assert {r["usename"] for r in users} == {APP_DB_ROLE}
    finally:
        await service.kill()

    conn = await connect(app_only)
    try:
        for ddl in (
            "CREATE TABLE intruder (id int)",
            "ALTER TABLE reports ADD COLUMN intruder int",
            "DROP TABLE audit_entries",
            "DELETE FROM audit_entries",
            "UPDATE schema_migrations SET version = version",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(ddl)
    finally:
        await conn.close()


async def test_serve_no_migrate_refuses_a_schema_behind_the_code(
    server_url: str, tmp_path: Path
) -> None:
    name = f"sr_unmigrated_{uuid.uuid4().hex[:12]}"
    admin = await connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        env = cli_env(with_database(server_url, name), tmp_path / "data")
        result = await run_cli("serve", "--no-migrate", "--port", str(free_port()), env=env)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    assert result.code == 1, result
    assert "safetyreport migrate" in result.stderr
