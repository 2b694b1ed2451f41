"""The restore drill: a pgBackRest base backup, archived WAL, point-in-time recovery.

A PostgreSQL 15 server of the test's own (the machine's binaries, run as the
``postgres`` system user) archives its WAL with pgBackRest as ``scripts/backup``
configures it. Reports are written through the service, a time T is noted, more are
written, an auditor's checkpoint is signed; then the backup is restored into a new data
folder up to T. The restored database holds exactly the reports committed before T, its
chains verify, a checkpoint from before T holds, and the one from after T is reported
as the chain being behind a signed head (not as tampering), before and after the
restore is recorded in the audit trail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from safetyreport.app import create_app
from safetyreport.audit.signing import load_signer
from safetyreport.db.pool import connect
from safetyreport.settings import DatabaseSettings, Settings
from tests.helpers.postgres import PG15_BIN, SERVER_OWNER, as_server_owner, free_ports
from tests.helpers.processes import CliResult, cli_env, run_cli
from tests.helpers.reports import bp_report, create_report
from tests.helpers.waiting import eventually
from tests.helpers.world import World

pytestmark = [pytest.mark.cluster, pytest.mark.end_to_end, pytest.mark.timeout(300)]

BACKUP_SCRIPT = Path(__file__).parents[1] / "scripts" / "backup"
# The ports this test may use (its own range: other tests start clusters too).
PORTS = range(25500, 25600)
COMMAND_SECONDS = 120.0


def missing_tools() -> str | None:
    if shutil.which("pgbackrest") is None:
        return "pgbackrest is not installed (apt-get install pgbackrest; .ci/run does)"
    if not (PG15_BIN / "initdb").exists():
        return f"PostgreSQL 15 is not installed in {PG15_BIN}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_OWNER)
        except KeyError:
            return f"run as root, the test needs the {SERVER_OWNER} system user to run PostgreSQL"
    return None


async def run(*args: str, env: dict[str, str] | None = None) -> str:
    """Run a command to completion; its output. Fails the test on a non-zero exit."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), COMMAND_SECONDS)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{' '.join(args)} exited with {proc.returncode}:\n{text}"
    return text


@dataclass(frozen=True)
class Drill:
    """The drill's folder: servers' data folders, the repository, the service's data."""

    root: Path
    ports: list[int]

    @property
    def config(self) -> Path:
        return self.root / "pgbackrest.conf"

    @property
    def service_data(self) -> Path:
        return self.root / "service"

    def url(self, port: int) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/safetyreport"

    def backup_env(self) -> dict[str, str]:
        return {**os.environ, "SAFETYREPORT_PGBACKREST_CONFIG": str(self.config)}

    async def backup(self, *args: str) -> str:
        return await run(str(BACKUP_SCRIPT), *args, env=self.backup_env())

    async def start(self, data: Path, port: int) -> None:
        await run(
            *as_server_owner(str(PG15_BIN / "pg_ctl"), "-D", str(data), "-l", f"{data}.log", "-w"),
            "-o",
            f"-p {port}",
            "start",
        )

    async def stop(self, data: Path) -> None:
        await run(
            *as_server_owner(str(PG15_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        )

    def settings(self, port: int) -> Settings:
        base = Settings.from_env({})
        return replace(
            base,
            database=DatabaseSettings(url=self.url(port), pool_max_size=4),
            data_dir=self.service_data,
        )

    def cli_env(self, port: int) -> dict[str, str]:
        return cli_env(self.url(port), self.service_data)


@contextlib.contextmanager
def drill_folder() -> Iterator[Path]:
    """A folder the postgres user owns (not under pytest's root-only temp), removed after."""
    root = Path(tempfile.mkdtemp(prefix="safetyreport-restore-drill-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(root, SERVER_OWNER, SERVER_OWNER)
        root.chmod(0o755)
        yield root
    finally:
        for data in root.glob("data*"):
            if (data / "postmaster.pid").exists():
                stop = as_server_owner(
                    str(PG15_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"
                )
                with contextlib.suppress(subprocess.SubprocessError):
                    subprocess.run(stop, check=False, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def drill() -> AsyncIterator[Drill]:
    if (reason := missing_tools()) is not None:
        pytest.skip(reason)
    with drill_folder() as root:
        drill = Drill(root, free_ports(PORTS, 2))
        yield drill


async def init_primary(drill: Drill) -> Path:
    """initdb, archiving as scripts/backup sets it, the stanza, the schema: a primary."""
    data = drill.root / "data"
    await run(
        *as_server_owner(
            str(PG15_BIN / "initdb"), "-N", "-D", str(data), "-A", "trust", "-U", "postgres"
        )
    )
    await drill.backup(
        "configure",
        "--repo",
        str(drill.root / "repo"),
        "--pg-data",
        str(data),
        "--pg-port",
        str(drill.ports[0]),
        "--pg-socket",
        str(drill.root),
    )
    settings = await drill.backup("postgres-settings")
    server = f"listen_addresses = '127.0.0.1'\nunix_socket_directories = '{drill.root}'\n"
    with (data / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write(server + settings)
    await drill.start(data, drill.ports[0])
    admin = await connect(drill.url(drill.ports[0]).replace("/safetyreport", "/postgres"))
    try:
        await admin.execute("CREATE DATABASE safetyreport")
    finally:
        await admin.close()
    await drill.backup("stanza-create")
    migrated = await run_cli("migrate", env=drill.cli_env(drill.ports[0]))
    assert migrated.code == 0, migrated.stderr
    return data


@contextlib.asynccontextmanager
async def service(drill: Drill, port: int) -> AsyncIterator[World]:
    """The service's own code (in this process) on the server at ``port``."""
    settings = drill.settings(port)
    conn = await connect(settings.database.url or "")
    try:
        async with AsyncTestClient(app=create_app(settings)) as client:
            yield World(conn, client)
    finally:
        await conn.close()


async def write_reports(world: World, nurses: dict[str, dict[str, str]], tag: str) -> set[str]:
    """One report in each nurse's clinic; the ids of those stored."""
    ids = set()
    for clinic, headers in nurses.items():
        view = await create_report(
            world.client, headers, bp_report(clinic, patient_ref=f"{tag}-{clinic}")
        )
        ids.add(str(view["id"]))
    return ids


async def audit_cli(drill: Drill, port: int, *args: str) -> CliResult:
    return await run_cli("audit", *args, env=drill.cli_env(port))


async def verify_with(drill: Drill, port: int, key: Path, checkpoint: Path) -> CliResult:
    return await audit_cli(
        drill, port, "verify", "--public-key", str(key), "--checkpoint", str(checkpoint)
    )


async def test_restore_to_a_point_in_time(drill: Drill) -> None:
    primary, restored_port = drill.ports
    data = await init_primary(drill)
    key = drill.root / "public-key.pem"
    before_t, after_t = drill.root / "before.json", drill.root / "after.json"

    async with service(drill, primary) as world:
        nurses = {}
        for clinic in ("C1", "C2"):
            await world.clinic(clinic)
            await world.user(f"nurse-{clinic.lower()}", "nurse", [clinic])
            nurses[clinic] = await world.login(f"nurse-{clinic.lower()}")
        key.write_bytes(load_signer(drill.settings(primary)).public_pem)
        backup = await drill.backup("backup", "full")
        label = (await drill.backup("latest-backup")).strip()
        assert f"backup {label} taken" in backup

        kept = await write_reports(world, nurses, "kept")
        signed = await audit_cli(drill, primary, "checkpoint", "--output", str(before_t))
        assert signed.code == 0, signed.stderr
        # T: the server's clock once everything above has committed.
        target: datetime = await world.db.fetchval("SELECT clock_timestamp()")

        async def past_target() -> bool:
            return bool(await world.db.fetchval("SELECT clock_timestamp() > $1", target))

        await eventually(past_target, "the server's clock to pass T")
        lost = await write_reports(world, nurses, "lost")
        signed = await audit_cli(drill, primary, "checkpoint", "--output", str(after_t))
        assert signed.code == 0, signed.stderr
    # Switches the WAL file and waits until it is archived: the archive covers T.
    await drill.backup("check")
    await drill.stop(data)

    restored = drill.root / "data-restored"
    await drill.backup("restore", "--target", target.isoformat(), "--pg-data", str(restored))
    await drill.start(restored, restored_port)
    db = await connect(drill.url(restored_port))
    try:

        async def promoted() -> bool:
            return not await db.fetchval("SELECT pg_is_in_recovery()")

        await eventually(promoted, "the restored server to finish recovery")

        # It archives its new timeline from its own folder (scripts/backup restore set that).
        async def archiving() -> bool:
            return bool(await db.fetchval("SELECT archived_count > 0 FROM pg_stat_archiver"))

        await eventually(archiving, "the restored server to archive its timeline history")
        assert await db.fetchval("SELECT failed_count FROM pg_stat_archiver") == 0
        assert {str(r["id"]) for r in await db.fetch("SELECT id FROM reports")} == kept
        assert not kept & lost

        everything = await audit_cli(drill, restored_port, "verify", "--full")
        assert everything.code == 0, everything.stdout
        held = await verify_with(drill, restored_port, key, before_t)
        assert held.code == 0, held.stdout + held.stderr

        # The checkpoint after T: behind a signed head, not tampering, never a pass.
        behind = await verify_with(drill, restored_port, key, after_t)
        assert behind.code == 3, behind.stdout + behind.stderr
        assert "BEHIND  checkpoint clinic:C1#" in behind.stdout
        assert "a restore or a truncation" in behind.stdout
        assert "BROKEN" not in behind.stdout
        assert "rewritten" not in behind.stdout

        recorded = await audit_cli(
            drill,
            restored_port,
            "record-restore",
            "--target-time",
            target.isoformat(),
            "--backup",
            label,
        )
        assert recorded.code == 0, recorded.stderr
        entries = await db.fetch(
            "SELECT chain, actor, details FROM audit_entries WHERE action = 'database.restored'"
        )
        assert {e["chain"] for e in entries} == {"global", "clinic:C1", "clinic:C2"}
        assert all(e["actor"] == "system:cli" for e in entries)
        assert all(e["details"]["backup"] == label for e in entries)

        # The service writes again: the chains grow into sequence numbers the checkpoint
        # after T signed with other entries. The recorded restore explains that too.
        async with service(drill, restored_port) as world:
            await write_reports(world, {"C1": await world.login("nurse-c1")}, "new")
        behind = await verify_with(drill, restored_port, key, after_t)
        assert behind.code == 3, behind.stdout + behind.stderr
        assert f"was restored from backup {label}" in behind.stdout
        assert "BROKEN" not in behind.stdout
        held = await verify_with(drill, restored_port, key, before_t)
        assert held.code == 0, held.stdout + held.stderr
        assert (await audit_cli(drill, restored_port, "verify")).code == 0
    finally:
        await db.close()

    # Backups go on from the restored server, on its new timeline, into the same repository.
    await drill.backup(
        "configure",
        "--repo",
        str(drill.root / "repo"),
        "--pg-data",
        str(restored),
        "--pg-port",
        str(restored_port),
        "--pg-socket",
        str(drill.root),
    )
    await drill.backup("check")
    await drill.stop(restored)
