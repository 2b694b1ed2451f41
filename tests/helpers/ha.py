"""A Patroni cluster of the tests' own, run by ``scripts/ha-cluster`` (docs/operations.md).

Three PostgreSQL 15 nodes and one etcd on loopback, in a temporary folder the
``postgres`` system user can reach (the script runs the cluster as that user when the
tests run as root). Tests that use it carry the ``cluster`` marker: CI runs them in a
serial stage of their own, one cluster for the stage.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ha-cluster"
BACKUP_SCRIPT = SCRIPT.with_name("backup")
# Within the ports the tests may use; an operator's cluster has the script's default.
PORT_BASE = 25450
NODES = ("node1", "node2", "node3")
SCRIPT_SECONDS = 180.0


def patroni_installed() -> bool:
    return bool(shutil.which("patroni") and shutil.which("etcd"))


def run_checked(args: list[str], env: dict[str, str] | None = None) -> str:
    """Run a command to completion (killed after SCRIPT_SECONDS); its output, or fail."""
    result = subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=SCRIPT_SECONDS, check=False
    )
    assert result.returncode == 0, f"{' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout


@dataclass
class HaCluster:
    root: Path
    port_base: int = PORT_BASE
    # Every node archives its WAL with pgBackRest into this repository (--backup-repo).
    backup_repo: Path | None = None

    def _script(self, command: str, *options: str) -> str:
        env = {**os.environ, "HA_CLUSTER_PORT_BASE": str(self.port_base)}
        return run_checked([str(SCRIPT), command, *options, str(self.root)], env)

    def start(self) -> None:
        """Start what is not running (a node killed earlier rejoins) and wait until healthy."""
        if self.backup_repo is None:
            self._script("start")
        else:
            self._script("start", "--backup-repo", str(self.backup_repo))

    def stop(self) -> None:
        self._script("stop")

    def backup(self, *args: str) -> str:
        """``scripts/backup ARGS`` on the cluster's pgBackRest configuration; its output."""
        env = {**os.environ, "SAFETYREPORT_PGBACKREST_CONFIG": str(self.root / "pgbackrest.conf")}
        return run_checked([str(BACKUP_SCRIPT), *args], env)

    def pg_port(self, name: str) -> int:
        return self.port_base + 10 + NODES.index(name)

    def rest_port(self, name: str) -> int:
        return self.port_base + 20 + NODES.index(name)

    def url(self, database: str, user: str = "postgres") -> str:
        hosts = ",".join(f"127.0.0.1:{self.pg_port(n)}" for n in NODES)
        return f"postgresql://{user}@{hosts}/{database}?target_session_attrs=read-write"

    def node_url(self, name: str, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port(name)}/{database}"

    def _rest(self, name: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.rest_port(name)}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                raw = response.read()
                status: int = response.status
        except urllib.error.HTTPError as error:
            raw, status = error.read(), error.code
        except OSError:
            return 0, None
        try:
            return status, json.loads(raw or b"null")
        except ValueError:
            return status, raw.decode(errors="replace")

    def members(self) -> list[dict[str, Any]]:
        """The cluster's members as any Patroni that answers sees them ([] if none does)."""
        for name in NODES:
            status, body = self._rest(name, "GET", "/cluster")
            if status == 200 and isinstance(body, dict):
                return list(body.get("members", []))
        return []

    def leader(self) -> str | None:
        """The name of the running leader, if there is one."""
        for member in self.members():
            if member.get("role") == "leader" and member.get("state") == "running":
                return str(member["name"])
        return None

    def sync_standby(self) -> str | None:
        for member in self.members():
            if member.get("role") == "sync_standby":
                return str(member["name"])
        return None

    def kill(self, name: str) -> None:
        """SIGKILL a node's Patroni and its PostgreSQL postmaster: a crashed server."""
        pids = [
            self.root / name / "patroni.pid",
            self.root / name / "data" / "postmaster.pid",
        ]
        for pid_file in pids:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGKILL)

    def switchover(self, leader: str, candidate: str) -> str:
        """Demote ``leader`` on purpose (Patroni's REST API; it answers once done)."""
        status, body = self._rest(
            leader, "POST", "/switchover", {"leader": leader, "candidate": candidate}
        )
        assert status == 200, f"switchover: {status} {body}"
        return str(body)


def wait_for_leader(cluster: HaCluster, other_than: str, within: float) -> str:
    """The name of a new running leader; fails after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        leader = cluster.leader()
        if leader is not None and leader != other_than:
            return leader
        time.sleep(0.1)
    raise AssertionError(f"no new leader within {within} s: {cluster.members()}")


def make_cluster_folder() -> Path:
    """A folder the cluster's system user can reach (pytest's tmp folders are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="safetyreport-ha-"))
    root.chmod(0o755)
    return root
