"""What the benchmarks share: the service under test, its memory, the machine."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetyreport.db.embedded import pgbin


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def require_free_disk(root: Path, need: int, what: str, smaller: str) -> None:
    """BenchError unless ``root`` (created) has ``need`` bytes free for ``what``."""
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < need:
        raise BenchError(
            f"not enough free disk space in {root}: {free / 1e9:.1f} GB free, "
            f"{what} needs about {need / 1e9:.1f} GB; free some space or {smaller} "
            "(or another --data-root)"
        )


def empty_folder(folder: Path) -> None:
    """``folder``, created empty: what an unfinished build left there is removed."""
    if folder.exists():
        log(f"removing the unfinished folder {folder}")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def machine_info() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    load = ""
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return {
        "cpus": str(os.cpu_count()),
        "cpu_model": model,
        "memory": memory,
        "python": platform.python_version(),
        "load_before": load,
    }


# --- the service's process tree ---------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class _Proc:
    ppid: int
    name: str
    cpu: float  # user + system seconds of the process itself
    reaped_cpu: float  # ... and of its children that have exited


_TICKS = os.sysconf("SC_CLK_TCK")


def _process_table() -> dict[int, _Proc]:
    table: dict[int, _Proc] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        close = stat.rfind(")")
        fields = stat[close + 2 :].split()
        table[int(entry.name)] = _Proc(
            ppid=int(fields[1]),
            name=stat[stat.find("(") + 1 : close],
            cpu=(int(fields[11]) + int(fields[12])) / _TICKS,
            reaped_cpu=(int(fields[13]) + int(fields[14])) / _TICKS,
        )
    return table


def _tree(table: dict[int, _Proc], root: int) -> list[int]:
    """``root`` and its descendants, PostgreSQL's processes left out."""
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        children.setdefault(proc.ppid, []).append(pid)
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid not in table or table[pid].name == "postgres":
            continue
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def tree_rss(root: int) -> int:
    """Resident bytes of the service: ``root`` and its descendants, PostgreSQL left out."""
    total = 0
    for pid in _tree(_process_table(), root):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    return total


def tree_cpu(root: int) -> float:
    """CPU seconds used by the service's processes (PostgreSQL left out)."""
    table = _process_table()
    return sum(table[pid].cpu for pid in _tree(table, root))


def server_cpu(postmaster: int) -> float:
    """CPU seconds used by PostgreSQL: the postmaster, its live and its exited children."""
    table = _process_table()
    if postmaster not in table:
        return 0.0
    total = table[postmaster].cpu + table[postmaster].reaped_cpu
    return total + sum(p.cpu for p in table.values() if p.ppid == postmaster)


class RssSampler:
    """Samples the RSS of a process tree in a thread; ``take_peak`` reads and resets it."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        self._root = root
        self._interval = interval
        self._peak = 0
        self._overall = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = tree_rss(self._root)
            self._peak = max(self._peak, rss)
            self._overall = max(self._overall, rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def take_peak(self) -> int:
        peak, self._peak = self._peak, 0
        return peak

    @property
    def overall(self) -> int:
        return self._overall


# --- the service ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("safetyreport")
    return [str(script)] if script.exists() else [sys.executable, "-m", "safetyreport.cli"]


def post_json(url: str, body: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 (our own http://127.0.0.1 URL)
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        result: dict[str, Any] = json.load(response)
        return result


class Service:
    """``safetyreport serve`` in its own data folder (embedded PostgreSQL), as a user runs it."""

    def __init__(
        self, workdir: Path, env: dict[str, str] | None = None, data_dir: Path | None = None
    ) -> None:
        """``data_dir``: the service's data folder (default ``workdir/data``); the logs go
        to ``workdir`` either way."""
        self.workdir = workdir
        self.data_dir = data_dir or workdir / "data"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.cli = cli_command()
        self.process: subprocess.Popen[bytes] | None = None
        base = {k: v for k, v in os.environ.items() if not k.startswith("SAFETYREPORT_")}
        base.pop("DATABASE_URL", None)
        self.env = {**base, "SAFETYREPORT_DATA_DIR": str(self.data_dir), **(env or {})}
        self._owner_url = ""

    def start(self, workers: int, env: dict[str, str] | None = None) -> None:
        """Start serving (``env`` adds settings) and wait until /health answers."""
        self.env.update(env or {})
        command = [*self.cli, "serve", "--port", str(self.port), "--workers", str(workers)]
        log(f"starting: safetyreport serve --workers {workers} (data in {self.data_dir})")
        self.process = subprocess.Popen(  # noqa: S603
            command,
            env=self.env,
            stdout=(self.workdir / "serve.out").open("wb"),
            stderr=(self.workdir / "serve.log").open("wb"),
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"safetyreport serve exited:\n{self.tail('serve.log')}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.base_url}/health", timeout=2) as r,  # noqa: S310
            ):
                if r.status == 200:
                    return
            time.sleep(0.3)
        raise BenchError(f"the service did not answer /health in 120 s:\n{self.tail('serve.log')}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log("the service did not stop in 30 s; killing its process group")
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._stop_leftover_server()

    def _stop_leftover_server(self) -> None:
        """Stop the embedded server if the service could not (it was killed)."""
        pgdata = self.data_dir / "pgdata"
        for _ in range(50):
            if not (pgdata / "postmaster.pid").exists():
                return
            time.sleep(0.2)
        user = "embedded_postgres" if os.geteuid() == 0 else None
        subprocess.run(  # noqa: S603
            [str(pgbin("pg_ctl")), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
            user=user,
            capture_output=True,
            check=False,
        )

    def tail(self, name: str, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.workdir / name).read_text().splitlines()[-lines:])
        return ""

    def run_cli(self, *args: str, stdin: str | None = None, database_url: str | None = None) -> str:
        """``safetyreport ARGS`` on the service's database (or on ``database_url``)."""
        env = {**self.env, **({"DATABASE_URL": database_url} if database_url else {})}
        result = subprocess.run(  # noqa: S603
            [*self.cli, *args],
            input=stdin,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if result.returncode != 0:
            raise BenchError(f"safetyreport {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result.stdout

    def forget_owner_url(self) -> None:
        """After a restart of the embedded server, which may listen on another port."""
        self._owner_url = ""

    def owner_url(self) -> str:
        """The embedded server's owner URL, from a process that joins it and leaves again."""
        if not self._owner_url:
            code = (
                "from safetyreport.db.embedded import owner_url;"
                "from safetyreport.settings import Settings;"
                "print(owner_url(Settings.from_env()))"
            )
            result = subprocess.run(  # noqa: S603
                [sys.executable, "-c", code],
                env=self.env,
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            self._owner_url = result.stdout.strip().splitlines()[-1]
        return self._owner_url

    def login(self, username: str, password: str) -> str:
        body = {"username": username, "password": password}
        token: str = post_json(f"{self.base_url}/api/v1/auth/login", body)["token"]
        return token
