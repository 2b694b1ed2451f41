"""Running the ``safetyreport`` command as a real process: one-off commands and ``serve``.

Every test that uses these starts a process, so it must carry the ``end_to_end`` marker
(tests/test_suite_layout.py checks): CI runs those tests once, not once per PostgreSQL.

A ``ServeProcess`` keeps its port across restarts, so clients that retry find the
restarted service where they left it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

# Bounds on waiting for a process: generous, because the machine may be busy.
SUBPROCESS_SECONDS = 45.0
STARTUP_SECONDS = 45.0
SHUTDOWN_SECONDS = 20.0


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
    """Run ``safetyreport ARGS`` to completion (killed after SUBPROCESS_SECONDS)."""
    proc = await asyncio.create_subprocess_exec(
        *cli_args(*args),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(None if stdin is None else stdin.encode()), SUBPROCESS_SECONDS
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServeProcess:
    """``safetyreport serve`` on a fixed port; its output is kept across restarts."""

    database_url: str | None
    tmp_path: Path
    name: str = "serve"
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    # More arguments of ``serve``, e.g. ("--demo",) or ("--no-migrate",).
    serve_args: tuple[str, ...] = ()
    # SAFETYREPORT_DATA_DIR (keys, embedded PostgreSQL); tmp_path / "<name>-data" if None.
    data_dir: Path | None = None
    port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def _output(self, start: int, stream: str) -> Path:
        return self.tmp_path / f"{self.name}-{start}.{stream}"

    def _all_output(self, stream: str) -> str:
        return "".join(
            self._output(n, stream).read_text(encoding="utf-8", errors="replace")
            for n in range(1, self.starts + 1)
            if self._output(n, stream).exists()
        )

    def stdout(self) -> str:
        """Everything every run of this service wrote on stdout, in order."""
        return self._all_output("out")

    def stderr(self) -> str:
        """Everything every run of this service wrote on stderr (its JSON log), in order."""
        return self._all_output("err")

    async def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        data_dir = self.data_dir or self.tmp_path / f"{self.name}-data"
        with (
            self._output(self.starts, "out").open("wb") as stdout,
            self._output(self.starts, "err").open("wb") as stderr,
        ):
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
                env=cli_env(self.database_url, data_dir) | self.env,
                # A process group of its own: killing the service kills its workers too.
                start_new_session=True,
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
        """SIGKILL to the service and its workers (its process group): no shutdown of any
        kind, as when the machine fails; no worker is left behind orphaned."""
        if self.proc is None:
            return
        # The group even when the supervisor is gone: a worker may outlive it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.returncode is None:
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
    *serve_args: str,
    env: dict[str, str] | None = None,
    workers: int = 1,
    data_dir: Path | None = None,
) -> AsyncIterator[ServeProcess]:
    """A started ``ServeProcess``; killed on the way out if still running."""
    service = ServeProcess(
        database_url,
        tmp_path,
        name,
        env=env or {},
        workers=workers,
        serve_args=serve_args,
        data_dir=data_dir,
    )
    try:
        await service.start()
        yield service
    finally:
        await service.kill()
