"""Audit export benchmark: the HTTP export against PostgreSQL's own COPY, memory, verifying.

    scripts/bench audit-export [--entries 1000000] [--small 100000] [--runs 3] [--keep]
    .venv/bin/python -m bench.audit_export ...            (the same, from the repository)

In a fresh temporary data folder it

1. starts the service as a user would (``safetyreport serve --workers 2`` on the
   embedded PostgreSQL), creates clinics BIG and SMALL and an auditor with the CLI;
2. appends ``--entries`` valid, hash-chained audit entries (``--small`` of them in
   clinic SMALL, the rest in BIG) with COPY (``bench/fill_audit.py``);
3. measures, alternating runs so that the machine's other load hits both alike:
   - PostgreSQL's own ``COPY (SELECT * FROM audit_entries ... ORDER BY chain, seq) TO
     STDOUT`` of the same rows, through psql into /dev/null;
   - ``GET /api/v1/audit/export`` (NDJSON with its signed manifest) of all entries,
     through curl into /dev/null;
   and reports rows per second of each (best of ``--runs``) and their ratio;
4. the service's peak RSS (its Python processes; PostgreSQL excluded) during exports of
   the SMALL clinic and of everything, sampled every 20 ms;
5. offline verification rows per second: the standalone verifier script
   (``src/safetyreport/audit/offline.py``) on the saved export.

Needs curl. The goal (issue 4): the export at least half as fast as COPY, and the same
peak memory at 100,000 and 1,000,000 entries.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.common import BenchError, RssSampler, Service, log, machine_info
from bench.fill_audit import append_entries
from safetyreport.audit import offline
from safetyreport.db.embedded import pgbin

PASSWORD = "bench-ledger-reader-secret"  # noqa: S105 (a throwaway benchmark user)


@dataclass
class Options:
    entries: int
    small: int
    runs: int
    keep: bool


@dataclass
class Timing:
    rows: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="scripts/bench audit-export", description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000, help="entries in all")
    parser.add_argument("--small", type=int, default=100_000, help="entries of clinic SMALL")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each (best counts)")
    parser.add_argument("--keep", action="store_true", help="keep the data folder")
    args = parser.parse_args(argv)
    if not 0 < args.small < args.entries:
        parser.error("--small must be above 0 and below --entries")
    return Options(entries=args.entries, small=args.small, runs=args.runs, keep=args.keep)


async def fill(owner_url: str, options: Options) -> int:
    conn = await asyncpg.connect(owner_url)
    try:
        started = time.monotonic()
        await append_entries(conn, "clinic:SMALL", options.small)
        await append_entries(conn, "clinic:BIG", options.entries - options.small)
        log(f"appended {options.entries:,} entries in {time.monotonic() - started:.0f} s")
        await conn.execute("VACUUM ANALYZE audit_entries")
        total: int = await conn.fetchval("SELECT count(*) FROM audit_entries")
        return total
    finally:
        await conn.close()


def timed(command: list[str], rows: int) -> Timing:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)  # noqa: S603
    return Timing(rows, time.perf_counter() - started)


def copy_command(owner_url: str) -> list[str]:
    sql = "COPY (SELECT * FROM audit_entries ORDER BY chain, seq) TO STDOUT"
    return [str(pgbin("psql")), owner_url, "-X", "-q", "-c", sql]


def curl_command(url: str, token: str, output: str = "/dev/null") -> list[str]:
    curl = shutil.which("curl")
    if curl is None:
        raise BenchError("curl is needed (apt-get install curl)")
    return [curl, "-sS", "--fail", "-o", output, "-H", f"Authorization: Bearer {token}", url]


def peak_rss_during(service: Service, command: list[str]) -> float:
    """MiB: the service's peak resident memory while ``command`` runs."""
    assert service.process is not None
    with RssSampler(service.process.pid, interval=0.02) as sampler:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)  # noqa: S603
    return sampler.overall / 1024 / 1024


def run(options: Options, workdir: Path) -> str:
    service = Service(workdir)
    service.start(workers=2)
    try:
        service.run_cli("clinic", "add", "BIG", "--name", "Bench big")
        service.run_cli("clinic", "add", "SMALL", "--name", "Bench small")
        service.run_cli(
            "user",
            "add",
            "auditor",
            "--role",
            "auditor",
            "--all-clinics",
            "--password-stdin",
            stdin=PASSWORD + "\n",
        )
        total = asyncio.run(fill(service.owner_url(), options))
        token = service.login("auditor", PASSWORD)
        export_url = f"{service.base_url}/api/v1/audit/export"
        copy = copy_command(service.owner_url())

        log("warming up (one COPY, one export)")
        timed(copy, total)
        timed(curl_command(export_url, token), total)
        copies, exports = [], []
        for i in range(options.runs):
            log(f"run {i + 1}/{options.runs}: COPY, then the HTTP export")
            copies.append(timed(copy, total))
            # The export also holds its own start record and those of earlier exports.
            exports.append(timed(curl_command(export_url, token), total))
        best_copy = max(copies, key=lambda t: t.rate)
        best_export = max(exports, key=lambda t: t.rate)

        log("peak memory: exports of SMALL and of everything")
        small_rss = peak_rss_during(service, curl_command(f"{export_url}?clinic=SMALL", token))
        all_rss = peak_rss_during(service, curl_command(export_url, token))

        saved = workdir / "export.ndjson"
        key_file = workdir / "public-key.pem"
        subprocess.run(  # noqa: S603
            curl_command(f"{service.base_url}/api/v1/audit/public-key", token, str(key_file)),
            check=True,
        )
        subprocess.run(curl_command(export_url, token, str(saved)), check=True)  # noqa: S603
        log(f"verifying the saved export ({saved.stat().st_size / 1e6:.0f} MB) offline")
        verify = [sys.executable, "-I", offline.__file__, str(saved), "--public-key", str(key_file)]
        verified = timed(verify, total)
    finally:
        service.stop()
    return render(options, total, best_copy, best_export, small_rss, all_rss, verified)


def render(
    options: Options,
    total: int,
    copy: Timing,
    export: Timing,
    small_rss: float,
    all_rss: float,
    verified: Timing,
) -> str:
    machine = machine_info()
    ratio = export.rate / copy.rate if copy.rate else 0.0
    lines = [
        f"Audit export benchmark: {total:,} entries "
        f"(SMALL {options.small:,}), best of {options.runs} runs",
        f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory']}, "
        f"Python {machine['python']}, load before {machine['load_before']}",
        "",
        "| measure | rows/s | seconds |",
        "|---|---:|---:|",
        f"| PostgreSQL COPY ... TO STDOUT (psql) | {copy.rate:,.0f} | {copy.seconds:.2f} |",
        f"| GET /api/v1/audit/export (NDJSON, curl) | {export.rate:,.0f} | {export.seconds:.2f} |",
        f"| offline verification (standalone script) | {verified.rate:,.0f} | "
        f"{verified.seconds:.2f} |",
        "",
        f"export / COPY: {ratio:.2f} (goal: at least 0.50)",
        f"service peak RSS: {small_rss:.0f} MiB exporting {options.small:,} entries, "
        f"{all_rss:.0f} MiB exporting {total:,} (goal: the same)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="safetyreport-bench-audit-"))
    try:
        print(run(options, workdir))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if options.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
