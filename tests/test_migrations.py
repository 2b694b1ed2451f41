"""The migration runner: checksums, edited files, concurrent runners, the start-up check."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from safetyreport.app import create_app
from safetyreport.db.migrations import (
    SUPERSEDED_CHECKSUMS,
    MigrationError,
    load_migrations,
    migrate,
    migrations_dir,
)
from safetyreport.db.pool import connect
from safetyreport.errors import ServiceUnavailable
from safetyreport.settings import DatabaseSettings, Settings
from tests.helpers.processes import CliResult, cli_env, run_cli


def copy_of_migrations(folder: Path) -> Path:
    """A copy of the shipped migration files in ``folder``, to add to or edit."""
    folder.mkdir()
    for entry in migrations_dir().iterdir():
        (folder / entry.name).write_bytes(entry.read_bytes())
    return folder


async def recorded(url: str) -> list[asyncpg.Record]:
    conn = await connect(url)
    try:
        return await conn.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY 1")
    finally:
        await conn.close()


def test_load_migrations_finds_the_core_schema() -> None:
    migrations = load_migrations()
    assert (migrations[0].version, migrations[0].name) == (1, "core")
    assert [m.version for m in migrations] == sorted({m.version for m in migrations})
    assert "CREATE TABLE audit_entries" in migrations[0].sql


def test_load_migrations_rejects_badly_named_files(tmp_path: Path) -> None:
    (tmp_path / "1_core.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"1_core\.sql"):
        load_migrations(tmp_path)


async def test_migrate_applies_and_records_checksums(empty_url: str) -> None:
    files = sorted(migrations_dir().iterdir(), key=lambda entry: entry.name)
    applied = await migrate(empty_url)
    assert [f"{m.version:04d}_{m.name}.sql" for m in applied] == [f.name for f in files]

    rows = await recorded(empty_url)
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in applied]
    for row, path in zip(rows, files, strict=True):
        assert row["checksum"] == hashlib.sha256(path.read_bytes()).hexdigest()

    assert await migrate(empty_url) == []
    assert len(await recorded(empty_url)) == len(files)


async def test_edited_migration_is_refused(empty_url: str, tmp_path: Path) -> None:
    folder = copy_of_migrations(tmp_path / "migrations")
    assert await migrate(empty_url, folder=folder) != []
    core = folder / "0001_core.sql"
    core.write_text(core.read_text() + "\n-- a harmless comment is still an edit\n")

    with pytest.raises(MigrationError, match=r"0001_core\.sql was edited"):
        await migrate(empty_url, folder=folder)


async def test_a_migration_whose_comment_was_corrected_is_accepted(empty_url: str) -> None:
    """A database that recorded 0003 before its comment was corrected is not refused; the
    file's current checksum is not recorded over the old one."""
    (old,) = SUPERSEDED_CHECKSUMS[3]
    await migrate(empty_url)
    conn = await connect(empty_url)
    try:
        await conn.execute("UPDATE schema_migrations SET checksum = $1 WHERE version = 3", old)
    finally:
        await conn.close()
    assert await migrate(empty_url) == []
    assert {r["version"]: r["checksum"] for r in await recorded(empty_url)}[3] == old


async def test_new_migration_is_applied_after_the_old_ones(empty_url: str, tmp_path: Path) -> None:
    folder = copy_of_migrations(tmp_path / "migrations")
    await migrate(empty_url, folder=folder)
    (folder / "9001_extra.sql").write_text("CREATE TABLE extra (id integer);")

    applied = await migrate(empty_url, folder=folder)
    assert [(m.version, m.name) for m in applied] == [(9001, "extra")]
    assert [r["version"] for r in await recorded(empty_url)][-1] == 9001


async def test_migration_missing_on_disk_is_refused(empty_url: str, tmp_path: Path) -> None:
    folder = copy_of_migrations(tmp_path / "migrations")
    (folder / "9001_extra.sql").write_text("CREATE TABLE extra (id integer);")
    await migrate(empty_url, folder=folder)
    (folder / "9001_extra.sql").unlink()

    with pytest.raises(MigrationError, match=r"\[9001\].*not on disk"):
        await migrate(empty_url, folder=folder)


async def test_failed_migration_leaves_nothing_behind(empty_url: str, tmp_path: Path) -> None:
    folder = copy_of_migrations(tmp_path / "migrations")
    await migrate(empty_url, folder=folder)
    (folder / "9001_broken.sql").write_text("CREATE TABLE half (id integer); SELECT nonsense;")

    with pytest.raises(asyncpg.UndefinedColumnError):
        await migrate(empty_url, folder=folder)
    assert 9001 not in [r["version"] for r in await recorded(empty_url)]
    conn = await connect(empty_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('half')") is None
    finally:
        await conn.close()


@pytest.mark.end_to_end
async def test_concurrent_cli_migrations_apply_each_file_once(
    empty_url: str, tmp_path: Path
) -> None:
    env = cli_env(empty_url, tmp_path / "data")
    results: tuple[CliResult, CliResult] = await asyncio.gather(
        run_cli("migrate", env=env), run_cli("migrate", env=env)
    )
    for result in results:
        assert result.code == 0, result.stderr
    applied_lines = [
        line for r in results for line in r.stdout.splitlines() if line.startswith("applied")
    ]
    files = load_migrations()
    assert len(applied_lines) == len(files)
    assert [r["version"] for r in await recorded(empty_url)] == [m.version for m in files]


async def test_concurrent_migrate_calls_apply_each_file_once(empty_url: str) -> None:
    first, second = await asyncio.gather(migrate(empty_url), migrate(empty_url))
    assert len(first) + len(second) == len(load_migrations())
    assert len(await recorded(empty_url)) == len(load_migrations())


# --- the service refuses an unmigrated database ---------------------------------


def _settings_for(url: str, tmp_path: Path) -> Settings:
    return replace(
        Settings.from_env({}), database=DatabaseSettings(url=url), data_dir=tmp_path / "data"
    )


def refused(match: str) -> pytest.RaisesGroup[ServiceUnavailable]:
    """The lifespan's ServiceUnavailable, however deep anyio's task groups wrap it."""
    return pytest.RaisesGroup(
        pytest.RaisesExc(ServiceUnavailable, match=match), flatten_subgroups=True
    )


async def test_app_refuses_to_start_on_an_unmigrated_database(
    empty_url: str, tmp_path: Path
) -> None:
    app = create_app(_settings_for(empty_url, tmp_path))
    latest = max(m.version for m in load_migrations())
    with refused(f"schema is at None, the service needs {latest}: run 'safetyreport migrate'"):
        async with app.lifespan():
            pytest.fail("the app started on an unmigrated database")


async def test_test_client_fails_to_start_on_an_unmigrated_database(
    empty_url: str, tmp_path: Path
) -> None:
    app = create_app(_settings_for(empty_url, tmp_path))
    client: AsyncTestClient[Any] = AsyncTestClient(app=app)
    with refused("run 'safetyreport migrate'"):
        async with client:
            pytest.fail("the test client started on an unmigrated database")


async def test_app_refuses_a_schema_from_a_newer_version(empty_url: str, tmp_path: Path) -> None:
    await migrate(empty_url)
    conn = await connect(empty_url)
    try:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (9001, 'future', 'x')"
        )
    finally:
        await conn.close()
    app = create_app(_settings_for(empty_url, tmp_path))
    with refused(
        f"schema is at 9001, the service needs {max(m.version for m in load_migrations())}"
    ):
        async with app.lifespan():
            pytest.fail("the app started on a database migrated by a newer version")


async def test_app_starts_on_a_migrated_database(empty_url: str, tmp_path: Path) -> None:
    await migrate(empty_url)
    async with AsyncTestClient(app=create_app(_settings_for(empty_url, tmp_path))) as client:
        assert (await client.get("/health")).status_code == 200
