"""Test fixtures: a real PostgreSQL for every test, a fresh database per test.

With DATABASE_URL set, databases are created on that server; otherwise an embedded
PostgreSQL runs in a temporary folder for the session. Migrations run once into a
template database; each test gets its own copy, so tests never see each other's rows
(the audit trail cannot be truncated, by design).

The app under test builds its own pool in its lifespan (AsyncTestClient may run it on
another event loop); tests use their own owner connection (``db``) to seed and assert.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from safetyreport.app import create_app
from safetyreport.audit.chain import SYSTEM_CLI
from safetyreport.auth.users import Role, add_clinic, add_user
from safetyreport.db.embedded import embedded_owner_url
from safetyreport.db.migrations import migrate
from safetyreport.db.pool import connect
from safetyreport.settings import DatabaseSettings, Settings

PASSWORD = "correct-horse-battery"


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Owner URL of the PostgreSQL server the whole session uses."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    yield embedded_owner_url(tmp_path_factory.mktemp("embedded-pg"))


async def _admin(server_url: str, sql: str) -> None:
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
        await _admin(self.server_url, f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return name

    async def take(self) -> str:
        ready = self._spare or asyncio.create_task(self._create())
        self._spare = asyncio.create_task(self._create())
        return await ready

    def release(self, name: str) -> None:
        drop = asyncio.create_task(
            _admin(self.server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )
        self._drops.add(drop)
        drop.add_done_callback(self._drops.discard)

    async def close(self) -> None:
        if self._spare is not None:
            self.release(await self._spare)
        await asyncio.gather(*self._drops)


@pytest.fixture(scope="session")
async def template_database(server_url: str) -> AsyncIterator[str]:
    name = f"sr_template_{uuid.uuid4().hex[:12]}"
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    await migrate(with_database(server_url, name))
    yield name
    await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


class World:
    """Seeds clinics and users through the same functions the CLI uses."""

    def __init__(self, db: asyncpg.Connection[Any], client: AsyncTestClient[Any]) -> None:
        self.db = db
        self.client = client

    async def clinic(self, code: str, name: str | None = None) -> str:
        await add_clinic(self.db, code, name or f"Clinic {code}", SYSTEM_CLI)
        return code

    async def user(
        self,
        username: str,
        role: Role,
        clinics: list[str] | None = None,
        *,
        all_clinics: bool = False,
        password: str = PASSWORD,
    ) -> str:
        await add_user(
            self.db,
            username=username,
            password=password,
            role=role,
            clinics=clinics or [],
            all_clinics=all_clinics,
            actor=SYSTEM_CLI,
        )
        return username

    async def login(self, username: str, password: str = PASSWORD) -> dict[str, str]:
        """Authorization headers for a fresh session of ``username``."""
        response = await self.client.post(
            "/api/v1/auth/login", json={"username": username, "password": password}
        )
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}


@pytest.fixture
def world(db: asyncpg.Connection[Any], client: AsyncTestClient[Any]) -> World:
    return World(db, client)


def bp_report(clinic: str = "C1", **overrides: Any) -> dict[str, Any]:
    """A valid blood-pressure report body; override any field."""
    body: dict[str, Any] = {
        "kind": "blood_pressure",
        "clinic": clinic,
        "patient_ref": "PT-001",
        "occurred_at": "2026-01-15T10:30:00+01:00",
        "drug": "esketamine_nasal",
        "outcome": "resolved",
        "phase": "post_dose",
        "systolic": 150,
        "diastolic": 92,
    }
    body.update(overrides)
    return body


def dissociation_report(clinic: str = "C1", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "dissociation",
        "clinic": clinic,
        "patient_ref": "PT-002",
        "occurred_at": "2026-01-15T11:00:00Z",
        "drug": "ketamine_iv",
        "outcome": "resolved",
        "moaa_s": 4,
        "severity": "mild",
        "resolved": True,
        "respiratory_depression": False,
    }
    body.update(overrides)
    return body


def misuse_report(clinic: str = "C1", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "misuse_concern",
        "clinic": clinic,
        "patient_ref": "PT-003",
        "occurred_at": "2026-01-15T12:00:00+00:00",
        "drug": "ketamine_im",
        "outcome": "unknown",
        "concern_type": "theft",
        "description": "Two vials missing from the locked cabinet.",
        "expected_quantity": 10,
        "actual_quantity": 8,
        "unit": "ml",
    }
    body.update(overrides)
    return body
