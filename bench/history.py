"""Six years of a 200-clinic network, for the year-six benchmarks (issue 17).

    .venv/bin/python -m bench.history [--clinics 200] [--years 6] [--sessions 3000000]
                                      [--reports 2000000] [--audit 5000000]

builds (or finds, built before) ``bench/data/history-v<schema>-<sizes>/``: the data folder
of ``safetyreport serve`` (its embedded PostgreSQL, migrated to migration ``<schema>``)
holding

- the rows of ``bench/network.py`` (clinics N001..., their admin ``bench-admin``,
  treatment sessions, reports with their versions, alerts), spread over ``--years``
  years from ``--first-year`` (UTC) instead of one, by the same generator and COPY;
- ``--audit`` audit entries spread evenly over the clinics' chains and over those years
  (COPY with ``bench/fill_audit.py``, hashed and linked as the service does, so
  ``safetyreport audit verify`` passes): reports created, listed and read, patients'
  timelines read (``patient:<ref>`` of the clinic's patients), alerts acknowledged,
  sessions dosed, the objects of reports and patients being the clinic's own;
- a signed checkpoint of every chain head (``audit.checkpoints.sign_heads``, which walks
  each chain first), so that the service neither walks five million entries when it
  starts signing nor verifies them in full.

The folder's name holds every size and the number of the newest migration, so a later
run with the same sizes on the same schema reuses it (``generated.json`` marks it
complete) and a schema change builds a new one. The free disk space is checked first.
Other benchmarks get the folder with ``history_folder`` (only built) or ``build`` (and
the service started on it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench import network
from bench.common import (
    BenchError,
    Service,
    empty_folder,
    log,
    machine_info,
    require_free_disk,
)
from bench.fill_audit import EntryMaker, append_entries
from safetyreport.audit.checkpoints import sign_heads
from safetyreport.audit.signing import DEFAULT_KEY_FILE, Signer, signer_from_file
from safetyreport.db.migrations import load_migrations

DATA_ROOT = network.DATA_ROOT
MARKER = "generated.json"
# What the entries of a clinic's chain record, and how often (percent).
ACTIONS = (
    ("report.created", 35),
    ("report.listed", 20),
    ("report.read", 15),
    ("patient.timeline_read", 10),
    ("alert.acknowledged", 12),
    ("session.dosed", 8),
)


@dataclass(frozen=True)
class HistoryOptions:
    clinics: int = 200
    years: int = 6
    sessions: int = 3_000_000
    reports: int = 2_000_000
    audit: int = 5_000_000
    first_year: int = 2020
    seed: int = 17

    def name(self) -> str:
        """The folder's name: every size and the schema the rows were written for."""
        return (
            f"history-v{schema_version():04d}-{self.clinics}c-{self.years}y-"
            f"{self.sessions}s-{self.reports}r-{self.audit}a-seed{self.seed}"
        )

    def network(self, root: Path) -> network.Options:
        return network.Options(
            clinics=self.clinics,
            sessions=self.sessions,
            reports=self.reports,
            year=self.first_year,
            seed=self.seed,
            root=root,
            years=self.years,
        )

    def empty(self) -> HistoryOptions:
        """The same clinics and users with no history: the baseline of a comparison."""
        return replace(self, sessions=0, reports=0, audit=0)


def schema_version() -> int:
    """The number of the newest migration the service applies."""
    return load_migrations()[-1].version


def needed_bytes(options: HistoryOptions, root: Path) -> int:
    """A generous estimate of the folder's size while it is built (with WAL)."""
    return network.needed_bytes(options.network(root)) + options.audit * 2_000


def _chain_share(total: int, chains: int, index: int) -> int:
    share = total // chains
    return share + (total - share * chains if index == 0 else 0)


def _entry_maker(seed: int, report_ids: list[str], patients: list[str]) -> EntryMaker:
    """What a clinic's entries record, drawn from its own reports and patients."""
    rng = random.Random(seed)  # noqa: S311 (benchmark data, not secrets)
    actions = [a for a, _ in ACTIONS]
    weights = [w for _, w in ACTIONS]

    def make(chain: str, seq: int) -> dict[str, Any]:
        action = rng.choices(actions, weights)[0]
        actor = f"nurse{rng.randrange(20):02d}@{chain.removeprefix('clinic:')}"
        if action.startswith("report.") and action != "report.listed" and report_ids:
            object_type, object_id = "report", rng.choice(report_ids)
            details: dict[str, Any] = {"version": 1}
        elif action == "report.listed":
            object_type, object_id = "report", None
            details = {"filters": {"limit": 50}, "count": 50}
        elif action == "patient.timeline_read" and patients:
            object_type, object_id = "patient", rng.choice(patients)
            details = {"patient_ref": object_id}
        else:
            object_type = action.split(".", 1)[0]
            object_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            details = {}
        return {
            "actor": actor,
            "action": action,
            "object_type": object_type,
            "object_id": object_id,
            "details": details,
        }

    return make


async def fill_audit(conn: asyncpg.Connection[Any], options: HistoryOptions) -> int:
    """``options.audit`` entries over the network's clinics' chains (COPY), each chain's
    spread evenly over the years; how many were appended."""
    codes = [f"N{n:03d}" for n in range(1, options.clinics + 1)]
    clinics = await conn.fetch(
        "SELECT id, code FROM clinics WHERE code = ANY($1::text[]) ORDER BY code", codes
    )
    start, seconds = options.network(DATA_ROOT).span()
    appended = 0
    for index, clinic in enumerate(clinics):
        count = _chain_share(options.audit, len(clinics), index)
        if count == 0:
            continue
        report_ids = [
            str(r["id"])
            for r in await conn.fetch("SELECT id FROM reports WHERE clinic_id = $1", clinic["id"])
        ]
        patients = [
            r["patient_ref"]
            for r in await conn.fetch(
                "SELECT DISTINCT patient_ref FROM treatment_sessions WHERE clinic_id = $1",
                clinic["id"],
            )
        ]
        step = seconds / count

        def clock(n: int, step: float = step) -> datetime:
            return start + timedelta(seconds=n * step)

        make = _entry_maker(options.seed * 1_000 + index, report_ids, patients)
        await append_entries(conn, f"clinic:{clinic['code']}", count, make=make, clock=clock)
        appended += count
        if index % 20 == 0:
            log(f"audit: {appended:,} of {options.audit:,} entries")
    return appended


async def populate(
    conn: asyncpg.Connection[Any],
    options: HistoryOptions,
    root: Path = DATA_ROOT,
    signer: Signer | None = None,
) -> dict[str, Any]:
    """Clinics, rows, rollups and audit entries (and, given the service's ``signer``, a
    checkpoint of every head) on an owner connection to a migrated database where the
    user ``bench-admin`` exists: the counts and timings."""
    loaded = await network.load(conn, options.network(root))
    generated = await network.rebuild_rollups(conn, loaded)
    started = time.monotonic()
    entries = await fill_audit(conn, options)
    await conn.execute("VACUUM ANALYZE audit_entries")
    audit_seconds = time.monotonic() - started
    signed = 0
    if signer is not None:
        log("walking every chain and signing its head")
        signed = await sign_heads(conn, signer)
    size: int = await conn.fetchval("SELECT pg_database_size(current_database())")
    return {
        **asdict(generated),
        "years": options.years,
        "audit_entries": entries,
        "audit_seconds": round(audit_seconds, 1),
        "checkpoints_signed": signed,
        "total_seconds": round(generated.total_seconds + time.monotonic() - started, 1),
        "database_bytes": size,
        "schema_version": schema_version(),
        "machine": machine_info(),
    }


def build(options: HistoryOptions, root: Path = DATA_ROOT) -> tuple[Service, dict[str, Any]]:
    """The folder's service, started; the data set built first if the folder has none
    (an unfinished folder is removed and built again)."""
    folder = root / options.name()
    marker = folder / MARKER
    if marker.exists():
        generated: dict[str, Any] = json.loads(marker.read_text())
        log(f"reusing {folder} (built in {generated['total_seconds']:.0f} s)")
        service = Service(folder)
        service.start(workers=2)
        return service, generated
    for stale in sorted(root.glob("history-v*")):
        if stale.name != folder.name and not stale.name.startswith(
            f"history-v{schema_version():04d}-"
        ):
            log(f"{stale} was built for another schema; remove it to free its space")
    require_free_disk(
        root,
        needed_bytes(options, root),
        f"building {options.reports:,} reports and {options.audit:,} audit entries",
        "pass smaller sizes",
    )
    empty_folder(folder)
    service = Service(folder)
    service.start(workers=2)
    try:
        network.add_admin(service)
        signer = signer_from_file(service.data_dir / DEFAULT_KEY_FILE)
        log(f"building {folder.name}")
        generated = asyncio.run(
            network.connected(
                service.owner_url(), lambda conn: populate(conn, options, root, signer)
            )
        )
    except BaseException:
        service.stop()
        raise
    marker.write_text(json.dumps(generated, indent=2) + "\n")
    log(f"built in {generated['total_seconds']:.0f} s ({generated['database_bytes'] / 1e9:.2f} GB)")
    return service, generated


def history_folder(root: Path = DATA_ROOT, options: HistoryOptions | None = None) -> Path:
    """The folder of the data set (built first if missing), its service stopped: start
    ``safetyreport serve`` with ``SAFETYREPORT_DATA_DIR=<folder>/data`` on it."""
    options = options or HistoryOptions()
    service, _generated = build(options, root)
    service.stop()
    return service.workdir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = HistoryOptions()
    parser.add_argument("--clinics", type=int, default=defaults.clinics, help="clinics")
    parser.add_argument("--years", type=int, default=defaults.years, help="years of data")
    parser.add_argument("--sessions", type=int, default=defaults.sessions, help="dosed sessions")
    parser.add_argument("--reports", type=int, default=defaults.reports, help="reports")
    parser.add_argument("--audit", type=int, default=defaults.audit, help="audit entries")
    parser.add_argument("--first-year", type=int, default=defaults.first_year, help="(UTC)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="where folders live")


def options_from(args: argparse.Namespace) -> HistoryOptions:
    if not 1 <= args.clinics <= 999 or args.years < 1:
        raise SystemExit("error: 1-999 clinics and at least one year")
    if args.sessions and args.sessions < args.clinics:
        raise SystemExit("error: no sessions, or at least one per clinic")
    if min(args.reports, args.audit) < 0 or (args.reports and not args.sessions):
        raise SystemExit("error: reports need sessions; sizes are not negative")
    return HistoryOptions(
        clinics=args.clinics,
        years=args.years,
        sessions=args.sessions,
        reports=args.reports,
        audit=args.audit,
        first_year=args.first_year,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.history", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        folder = history_folder(args.data_root, options_from(args))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
