"""Test fixtures: a real PostgreSQL for every test, a fresh database per test.

With DATABASE_URL set, databases are created on that server; otherwise an embedded
PostgreSQL runs in a temporary folder for the session (each xdist worker its own).
Migrations run once into a template database; each test gets its own copy, so tests
never see each other's rows (the audit trail cannot be truncated, by design).

The app under test builds its own pool in its lifespan (AsyncTestClient may run it on
another event loop); tests use their own owner connection (``db``) to seed and assert.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from safetyreport.app import create_app
from safetyreport.db.migrations import migrate
from safetyreport.db.pool import connect
from safetyreport.settings import DatabaseSettings, Settings
from tests.helpers.postgres import (
    Databases,
    admin,
    embedded_server,
    folder_outside_pytest_temp,
    with_database,
)
from tests.helpers.world import World


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """Owner URL of the PostgreSQL server the whole session (each xdist worker) uses."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    with embedded_server() as url:
        yield url


@pytest.fixture
def embedded_data_dir() -> Iterator[Path]:
    """A data folder for an embedded PostgreSQL the test starts (not under tmp_path)."""
    with folder_outside_pytest_temp() as folder:
        yield folder


@pytest.fixture(scope="session")
async def template_database(server_url: str) -> AsyncIterator[str]:
    name = f"sr_template_{uuid.uuid4().hex[:12]}"
    await admin(server_url, f'CREATE DATABASE "{name}"')
    await migrate(with_database(server_url, name))
    yield name
    await admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
async def databases(server_url: str, template_database: str) -> AsyncIterator[Databases]:
    pool = Databases(server_url, template_database)
    yield pool
    await pool.close()


@pytest.fixture
async def database_url(server_url: str, databases: Databases) -> AsyncIterator[str]:
    """Owner URL of a fresh, migrated database for this test only."""
    name = await databases.take()
    yield with_database(server_url, name)
    databases.release(name)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    base = Settings.from_env({})
    return replace(
        base,
        database=DatabaseSettings(url=database_url, pool_max_size=10),
        data_dir=tmp_path / "data",
        # Tests that move deadlines run escalation themselves, when they choose.
        alerts=replace(base.alerts, escalation_interval=timedelta(hours=1)),
    )


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """An owner connection to the test's database, for seeding and assertions."""
    conn = await connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def world(db: asyncpg.Connection[Any], client: AsyncTestClient[Any]) -> World:
    return World(db, client)


@pytest.fixture
async def empty_url(server_url: str) -> AsyncIterator[str]:
    """Owner URL of a new, empty database (no schema at all), dropped afterwards."""
    name = f"sr_empty_{uuid.uuid4().hex[:12]}"
    admin = await connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(server_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
