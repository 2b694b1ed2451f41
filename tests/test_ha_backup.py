"""Backing up the Patroni cluster with pgBackRest, from a standby (docs/operations.md).

``scripts/ha-cluster start --backup-repo REPO`` has every node archive its WAL into one
stanza for the three nodes. Rows are written through the primary, a full backup is
taken from a standby (``scripts/backup backup --from-standby``), ``check`` passes; then
the primary is switched over, and the new primary archives on its new timeline into the
same repository. Restored with ``--target latest`` into a new data folder on a port of
its own, the backup, with the archived WAL of both timelines, holds the rows written
before and after the switchover.

A cluster of the test's own (its own folder and ports, 25600..25699: the failover tests'
cluster and the restore drill use others), stopped at the end whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from safetyreport.db.pool import connect
from tests.helpers.ha import (
    HaCluster,
    make_cluster_folder,
    patroni_installed,
    run_checked,
    wait_for_leader,
)
from tests.helpers.postgres import PG15_BIN, as_server_owner, free_ports

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.end_to_end,
    pytest.mark.skipif(not patroni_installed(), reason="needs patroni and etcd (apt-get)"),
    pytest.mark.skipif(shutil.which("pgbackrest") is None, reason="needs pgbackrest (apt-get)"),
    pytest.mark.timeout(480),
]

# The cluster takes PORT_BASE + 0/1 (etcd), + 10..12 (PostgreSQL), + 20..22 (Patroni);
# the restored server one of RESTORE_PORTS.
PORT_BASE = 25600
RESTORE_PORTS = range(PORT_BASE + 30, PORT_BASE + 100)
NEW_LEADER_SECONDS = 90.0
WAIT_SECONDS = 60.0
STANZA = "safetyreport"
# The server's timeline: the first 8 hex digits of its current WAL file's name.
TIMELINE = "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"


@pytest.fixture
def cluster() -> Iterator[HaCluster]:
    """A cluster archiving into a repository beside it (same temporary folder)."""
    folder = make_cluster_folder()
    cluster = HaCluster(folder / "cluster", port_base=PORT_BASE, backup_repo=folder / "repo")
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            restored = folder / "restored"
            if (restored / "postmaster.pid").exists():
                stop = as_server_owner(
                    str(PG15_BIN / "pg_ctl"), "-D", str(restored), "-m", "immediate"
                )
                with contextlib.suppress(subprocess.SubprocessError):
                    subprocess.run([*stop, "stop"], check=False, timeout=60, capture_output=True)
            cluster.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)


async def until(what: str, check: Any) -> Any:
    """Poll ``check`` (an async function) until it returns something true; fail after
    WAIT_SECONDS, naming ``what`` and the last error."""
    deadline = time.monotonic() + WAIT_SECONDS
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if result := await check():
                return result
        # InternalClientError: TargetServerAttributeNotMatched, while no host is the
        # primary yet (CI saw it right after the switchover, on a loaded machine).
        except (
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
        ) as error:
            last = error
        await asyncio.sleep(0.3)
    pytest.fail(f"timed out waiting for {what} (last error: {last!r})")


async def write(cluster: HaCluster, phase: str) -> int:
    """A row through the primary (whichever node it is); that node's port."""
    db = await connect(cluster.url("safetyreport"))
    try:
        await db.execute("INSERT INTO backup_probe (phase) VALUES ($1)", phase)
        port: int = await db.fetchval("SELECT inet_server_port()")
        return port
    finally:
        await db.close()


def backup_options(repo: Path, label: str) -> str:
    """The backup's line in the repository's backup.info (its options, as JSON)."""
    info = (repo / "backup" / STANZA / "backup.info").read_text()
    return next(line for line in info.splitlines() if line.startswith(f"{label}="))


async def test_backup_from_a_standby_restores_across_a_switchover(cluster: HaCluster) -> None:
    assert cluster.backup_repo is not None
    repo = cluster.backup_repo
    db = await connect(cluster.url("safetyreport"))
    try:
        await db.execute("CREATE TABLE backup_probe (phase text PRIMARY KEY)")
    finally:
        await db.close()
    await write(cluster, "before the backup")

    taken = await asyncio.to_thread(cluster.backup, "backup", "--from-standby", "full")
    label = (await asyncio.to_thread(cluster.backup, "latest-backup")).strip()
    assert f"backup {label} taken" in taken
    # The files were copied from a standby; the primary only started and stopped it.
    assert '"option-backup-standby":true' in backup_options(repo, label)
    assert '"backup-type":"full"' in backup_options(repo, label)
    await asyncio.to_thread(cluster.backup, "check")

    old_primary_port = await write(cluster, "after the backup")
    leader, candidate = cluster.leader(), cluster.sync_standby()
    assert leader is not None, cluster.members()
    assert candidate is not None, cluster.members()
    assert old_primary_port == cluster.pg_port(leader)
    await asyncio.to_thread(cluster.switchover, leader, candidate)
    new_leader = wait_for_leader(cluster, other_than=leader, within=NEW_LEADER_SECONDS)

    async def written_on_the_new_primary() -> int:
        return await write(cluster, "after the switchover")

    new_port = await until("a write through the new primary", written_on_the_new_primary)
    assert new_port == cluster.pg_port(new_leader)

    # check switches the new primary's WAL file and waits until the repository has it:
    # the promoted replica archives, on its new timeline, into the same stanza.
    await asyncio.to_thread(cluster.backup, "check")
    primary = await connect(cluster.node_url(new_leader, "postgres"))
    try:
        archiver = await primary.fetchrow("SELECT * FROM pg_stat_archiver")
        timeline: int = await primary.fetchval(TIMELINE)
    finally:
        await primary.close()
    assert archiver is not None
    wal = str(archiver["last_archived_wal"])
    assert timeline >= 2
    assert int(wal[:8], 16) == timeline, archiver
    assert archiver["failed_count"] == 0
    assert list((repo / "archive" / STANZA / "15-1" / wal[:16]).glob(f"{wal}-*")), wal

    # A lost cluster: the backup, then all of the archive, into a new folder.
    restored = repo.parent / "restored"
    await asyncio.to_thread(
        cluster.backup,
        "restore",
        "--target",
        "latest",
        "--pg-data",
        str(restored),
        "--archive",
        "off",
    )
    [port] = free_ports(RESTORE_PORTS, 1)
    log = cluster.root / "restored.log"  # the cluster's folder: the postgres user's
    pg_ctl = as_server_owner(str(PG15_BIN / "pg_ctl"), "-D", str(restored), "-l", str(log))
    await asyncio.to_thread(run_checked, [*pg_ctl, "-w", "-o", f"-p {port}", "start"])
    copy = f"postgresql://postgres@127.0.0.1:{port}/safetyreport"

    async def promoted() -> bool:
        db = await connect(copy)
        try:
            return not await db.fetchval("SELECT pg_is_in_recovery()")
        finally:
            await db.close()

    await until("the restored server to replay the archive and promote", promoted)
    db = await connect(copy)
    try:
        phases = {r["phase"] for r in await db.fetch("SELECT phase FROM backup_probe")}
        restored_timeline = await db.fetchval(TIMELINE)
    finally:
        await db.close()
    assert phases == {"before the backup", "after the backup", "after the switchover"}
    # It followed the archive onto the switchover's timeline, then promoted past it.
    assert restored_timeline > timeline
