"""A small migration runner: numbered SQL files, checksums, one advisory lock.

Files are ``sql/migrations/NNNN_name.sql``, shipped inside the package
(``safetyreport/sql``: the wheel carries a copy of the repository's top-level ``sql/``, a
checkout links to it) and read as package resources. Each is applied in its own transaction
and recorded in ``schema_migrations`` with its SHA-256. A file edited after it was
applied is refused. A session advisory lock makes concurrent runners (two servers
starting at once) take turns, so each file is applied exactly once.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

import asyncpg

from safetyreport import audit
from safetyreport.db.pool import Conn, connect
from safetyreport.settings import APP_DB_ROLE

# Arbitrary but fixed: the key of the advisory lock every runner takes.
MIGRATION_LOCK_KEY = 7_201_604_311
_FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The migrations on disk and those recorded in the database disagree."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


# Checksums shipped migrations had before a comment in them was corrected (the statements
# unchanged): a database that recorded one of them has applied the same SQL.
SUPERSEDED_CHECKSUMS: dict[int, frozenset[str]] = {
    # 0003's first line named a notes file outside the project.
    3: frozenset({"a1ab9a02639e23ebf14531b8098bde2411dc40288a528af59dcde0b13fdba4a8"}),
}


def migrations_dir() -> Traversable:
    """The migration files shipped with the package."""
    return files("safetyreport") / "sql" / "migrations"


def load_migrations(folder: Traversable | None = None) -> list[Migration]:
    folder = folder or migrations_dir()
    if not folder.is_dir():
        raise MigrationError(f"cannot find the migrations folder {folder}")
    found: list[Migration] = []
    for entry in sorted(folder.iterdir(), key=lambda entry: entry.name):
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_PATTERN.match(entry.name)
        if not match:
            raise MigrationError(f"{entry.name}: migration files are named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a number")
    return found


async def _ensure_app_role(conn: Conn, password: str | None) -> None:
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", APP_DB_ROLE)
    if not exists:
        # Another database on this server may have created it a moment ago.
        with contextlib.suppress(asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
            await conn.execute(f'CREATE ROLE "{APP_DB_ROLE}" LOGIN NOSUPERUSER NOCREATEDB')
    if password is not None:
        # Roles are cluster-wide; format() quotes the literal safely.
        sql = await conn.fetchval(
            "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)", APP_DB_ROLE, password
        )
        await conn.execute(sql)


async def migrate(
    owner_url: str,
    *,
    app_password: str | None = None,
    folder: Traversable | None = None,
    record_rule_changes: bool = False,
) -> list[Migration]:
    """Apply pending migrations; return the ones this call applied.

    With ``record_rule_changes`` (the migrate command), alert rule versions that arrived
    by migration are then recorded in the audit trail, on the same connection.
    """
    migrations = load_migrations(folder)
    conn = await connect(owner_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            applied = await _apply_pending(conn, migrations, app_password)
            if record_rule_changes:
                await audit_migrated_rule_versions(conn)
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()


async def _apply_pending(
    conn: Conn, migrations: list[Migration], app_password: str | None
) -> list[Migration]:
    await _ensure_app_role(conn, app_password)
    await conn.execute(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version     integer PRIMARY KEY,
            name        text NOT NULL,
            checksum    text NOT NULL,
            applied_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    recorded = {
        row["version"]: row
        for row in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    }
    on_disk = {m.version for m in migrations}
    unknown = sorted(set(recorded) - on_disk)
    if unknown:
        raise MigrationError(
            f"the database has migrations {unknown} that are not on disk: "
            "is this an older version of the service?"
        )
    applied: list[Migration] = []
    for migration in migrations:
        row = recorded.get(migration.version)
        if row is not None:
            accepted = {migration.checksum, *SUPERSEDED_CHECKSUMS.get(migration.version, ())}
            if row["checksum"] not in accepted:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name}.sql was edited after "
                    f"it was applied (recorded checksum {row['checksum'][:12]}..., file now "
                    f"{migration.checksum[:12]}...): add a new migration instead of editing it"
                )
            continue
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
        applied.append(migration)
    return applied


MIGRATION_ACTOR = audit.Actor(name="system:migration")
_UNAUDITED_VERSIONS = """
SELECT v.rule_id, v.version, v.name, v.severity, v.description, v.enabled, v.definition,
       v.overrides_rule_id, v.protected, v.clinic_ids,
       -- Columns of later migrations, read so that a database without them still works.
       to_jsonb(v) ->> 'guidance' AS guidance, (to_jsonb(v) ->> 'ack_minutes')::int AS ack_minutes,
       CASE WHEN v.clinic_ids IS NOT NULL THEN
           ARRAY(SELECT c.code FROM clinics c WHERE c.id = ANY(v.clinic_ids) ORDER BY c.code)
       END AS clinics
FROM alert_rule_versions v WHERE v.audited_at IS NULL
ORDER BY v.changed_at, v.rule_id, v.version
FOR UPDATE OF v
"""


async def audit_migrated_rule_versions(conn: Conn) -> int:
    """Record in the audit trail each alert rule version no one has recorded yet (those
    that arrived by migration), in the chain of every clinic it affects (a network rule:
    every clinic's and the global chain), and mark it recorded. One transaction; returns
    how many versions it recorded."""
    if not await conn.fetchval("SELECT to_regclass('alert_rule_versions') IS NOT NULL"):
        return 0
    columns = await conn.fetchval(
        "SELECT count(*) FROM information_schema.columns"
        " WHERE table_name = 'alert_rule_versions' AND column_name = 'audited_at'"
    )
    if not columns:
        return 0
    async with conn.transaction():
        rows = await conn.fetch(_UNAUDITED_VERSIONS)
        all_clinics = [r["code"] for r in await conn.fetch("SELECT code FROM clinics")]
        for row in rows:
            clinics: list[str | None] = (
                [None, *all_clinics] if row["clinics"] is None else list(row["clinics"])
            )
            event = audit.AuditEvent(
                actor=MIGRATION_ACTOR,
                action="rule.migrated",
                object_type="alert_rule",
                object_id=row["rule_id"],
                details={
                    "version": row["version"],
                    "rule": {
                        name: row[name]
                        for name in (
                            "name",
                            "severity",
                            "description",
                            "guidance",
                            "ack_minutes",
                            "enabled",
                            "definition",
                        )
                    },
                    "clinics": row["clinics"],
                    "overrides": row["overrides_rule_id"],
                    "protected": row["protected"],
                },
            )
            await audit.append_to_clinics(conn, event, clinics)
        await conn.execute(
            "UPDATE alert_rule_versions SET audited_at = now() WHERE audited_at IS NULL"
        )
    return len(rows)
