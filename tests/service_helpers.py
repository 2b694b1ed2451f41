"""Driving real ``safetyreport serve`` processes: start, kill, restart, seed, log in.

The fault, schema and authorization tests talk to the service the way clients do:
over TCP, to the process the CLI starts. A ``ServeProcess`` keeps its port across
restarts, so clients that retry find the restarted service where they left it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from safetyreport.audit.chain import SYSTEM_CLI
from safetyreport.auth.users import Role, add_clinic, add_user
from safetyreport.db.pool import connect
from tests.helpers.world import PASSWORD
from tests.test_cli import cli_args, cli_env, free_port

# Bounds on waiting for the service: generous, because the machine may be busy.
STARTUP_SECONDS = 45.0
SHUTDOWN_SECONDS = 20.0


@dataclass
class ServeProcess:
    """``safetyreport serve`` on a fixed port; its logs are kept across restarts."""

    database_url: str | None
    tmp_path: Path
    name: str = "serve"
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    # More arguments of ``serve``, e.g. ("--no-migrate",).
    serve_args: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def _log(self, start: int) -> Path:
        return self.tmp_path / f"{self.name}-{start}.err"

    def stderr(self) -> str:
        """Everything every run of this service wrote on stderr (its JSON log), in order."""
        return "".join(
            self._log(n).read_text(encoding="utf-8", errors="replace")
            for n in range(1, self.starts + 1)
            if self._log(n).exists()
        )

    async def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        out = self.tmp_path / f"{self.name}-{self.starts}.out"
        with out.open("wb") as stdout, self._log(self.starts).open("wb") as stderr:
            self.proc = await asyncio.create_subprocess_exec(
                *cli_args(
                    "serve",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                    *self.serve_args,
                ),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=cli_env(self.database_url, self.tmp_path / f"{self.name}-data") | self.env,
            )
        await self.wait_healthy()

    async def wait_healthy(self, within: float = STARTUP_SECONDS) -> None:
        """Poll /health until it answers 200; fail (with the log) after ``within`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        async with httpx.AsyncClient(base_url=self.base_url, timeout=3) as http:
            while loop.time() < deadline:
                if self.proc is None or self.proc.returncode is not None:
                    code = None if self.proc is None else self.proc.returncode
                    pytest.fail(f"{self.name} exited with {code}:\n{self.stderr()[-4000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/health")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        pytest.fail(f"{self.name} was not healthy within {within} s:\n{self.stderr()[-4000:]}")

    async def kill(self) -> None:
        """SIGKILL: no shutdown of any kind, as when the machine or the OOM killer strikes."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), SHUTDOWN_SECONDS)

    async def terminate(self) -> int:
        """SIGTERM and wait (bounded) for a clean exit; the exit code."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), SHUTDOWN_SECONDS)


@contextlib.asynccontextmanager
async def serving(
    database_url: str | None,
    tmp_path: Path,
    name: str = "serve",
    *,
    env: dict[str, str] | None = None,
) -> AsyncIterator[ServeProcess]:
    """A started ``ServeProcess``; killed on the way out if still running."""
    service = ServeProcess(database_url, tmp_path, name, env=env or {})
    try:
        await service.start()
        yield service
    finally:
        await service.kill()


@dataclass(frozen=True)
class UserSpec:
    username: str
    role: Role
    clinics: tuple[str, ...] = ()
    all_clinics: bool = False


async def seed(database_url: str, clinics: dict[str, str], users: list[UserSpec]) -> None:
    """Create clinics (code -> name) and users (password PASSWORD), as the CLI does."""
    conn = await connect(database_url)
    try:
        for code, name in clinics.items():
            await add_clinic(conn, code, name, SYSTEM_CLI)
        for user in users:
            await add_user(
                conn,
                username=user.username,
                password=PASSWORD,
                role=user.role,
                clinics=list(user.clinics),
                all_clinics=user.all_clinics,
                actor=SYSTEM_CLI,
            )
    finally:
        await conn.close()


async def login(base_url: str, username: str, password: str = PASSWORD) -> dict[str, str]:
    """Authorization headers for a fresh session of ``username``."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        response = await http.post(
            "/api/v1/auth/login", json={"username": username, "password": password}
        )
    assert response.status_code == 200, response.text
    token: Any = response.json()["token"]
    return {"Authorization": f"Bearer {token}"}
