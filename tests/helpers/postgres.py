"""Databases for the tests: URLs of one database, fresh copies of the migrated template."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit, urlunsplit

from safetyreport.db.pool import connect


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
