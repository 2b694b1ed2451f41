"""A year of a network of clinics, for the safety-signal benchmarks (issues 16 and 17).

    .venv/bin/python -m bench.network [--clinics 200] [--sessions 1000000] [--reports 100000]

builds (or finds, built before) ``bench/data/network-<clinics>-<sessions>/``: the data
folder of ``safetyreport serve`` (its embedded PostgreSQL, migrated) holding

- ``--clinics`` clinics (codes N001...) of unequal sizes and an admin of every clinic
  (``bench-admin``, who also created every row);
- ``--sessions`` treatment sessions dosed in ``--year`` (UTC) and 1% more never dosed:
  esketamine nasal 55% (28 / 56 / 84 mg: 10 / 55 / 35%), IV ketamine 35% (weights and
  doses giving each mg/kg band: < 0.5 5%, 0.5-0.75 60%, 0.75-1.0 25%, > 1.0 8%, no
  weight 2%), IM ketamine 6%, oral ketamine 4%;
- ``--reports`` reports, 85% linked to a session of their clinic (``session_id`` in the
  version body, occurring an hour after its dose), 15% linked to none (stock
  incidents among them): blood pressure 40%, dissociation 30%, adverse events 22%
  (categories vomiting, emergence reaction, fall, urological, suicidality, pregnancy
  exposure, other), misuse concerns 5%, stock incidents 3%;
- alerts of eight rules: one per report for 20% of the reports (``alert_reports``) and
  one per reading for 2% of the sessions (``alert_session_readings``), so that the event
  types ``kind:``, ``category:`` and ``rule:`` have low rates like a real network's.

Rows go in with COPY in batches, the user triggers of the loaded tables disabled (the
analytics marks and the alert triggers; foreign keys stay checked). Then every
clinic's month and week with a session or a report is marked dirty and recounted once
(``analytics.rollups.refresh``, as the API does): the cold rebuild of the rollups,
timed. The rows bypass the services, so they have no audit entries and the sessions no
versions; the audit chains stay valid (only the clinics' creations are in them).

The counts and timings go into ``loaded.json`` (rows loaded) and ``generated.json``
(rollups rebuilt: the data set is complete) in the folder; a later run finds
``generated.json`` and reuses the folder, or ``loaded.json`` alone and only rebuilds the
rollups. The free disk space is checked first.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from bench.common import (
    BenchError,
    Service,
    empty_folder,
    log,
    machine_info,
    require_free_disk,
)
from safetyreport import audit
from safetyreport.analytics import rollups
from safetyreport.auth.users import add_clinic
from safetyreport.db.pool import connect

DATA_ROOT = Path(__file__).resolve().parent / "data"
ADMIN = "bench-admin"
ADMIN_PASSWORD = "bench-network-admin-secret"  # noqa: S105 (a throwaway benchmark user)
ACTOR = audit.Actor(name="system:bench")
MARKER = "generated.json"
LOADED_MARKER = "loaded.json"
T = TypeVar("T")
# Tables whose user triggers (analytics marks, alert triggers) are off during the load.
LOADED = (
    "treatment_sessions",
    "reports",
    "report_versions",
    "alerts",
    "alert_reports",
    "alert_session_readings",
)
BATCH = 100_000
# The counts of a data set of clinics and no rows (the baseline of the history benchmark).
NO_ROWS = dict.fromkeys(
    (
        "sessions",
        "dosed_sessions",
        "reports",
        "linked_reports",
        "alerts",
        "alert_reports",
        "alert_session_readings",
    ),
    0,
)

DRUGS = (("esketamine_nasal", 55), ("ketamine_iv", 35), ("ketamine_im", 6), ("ketamine_oral", 4))
ESKETAMINE_DOSES = ((28.0, 10), (56.0, 55), (84.0, 35))
# mg/kg ranges of IV ketamine, each band's share (None: no weight recorded).
IV_MG_PER_KG = (((0.3, 0.49), 5), ((0.5, 0.75), 60), ((0.76, 1.0), 25), ((1.01, 1.5), 8), (None, 2))
KINDS = (
    ("blood_pressure", 40),
    ("dissociation", 30),
    ("adverse_event", 22),
    ("misuse_concern", 5),
    ("stock_incident", 3),
)
CATEGORIES = (
    ("vomiting", 35),
    ("emergence_reaction", 25),
    ("fall", 10),
    ("urological", 10),
    ("suicidality", 5),
    ("pregnancy_exposure", 1),
    ("other", 14),
)
# The rules raised by a report of a kind, and by a reading of a session.
REPORT_RULES = {
    "blood_pressure": ("bp-pre-dose-hold", "bp-markedly-abnormal"),
    "dissociation": ("dissociation-present", "sedation-moaa-s-3", "sedation-moaa-s-1"),
    "adverse_event": ("serious-adverse-event",),
    "misuse_concern": ("serious-adverse-event",),
    "stock_incident": ("controlled-substance-theft-or-loss",),
}
READING_RULES = (
    ("bp-pre-dose-hold", "checklist", 40),
    ("sedation-moaa-s-3", "observation", 30),
    ("sedation-moaa-s-1", "observation", 8),
    ("bp-markedly-abnormal", "observation", 12),
    ("discharge-override", "discharge", 10),
)


@dataclass
class Options:
    clinics: int
    sessions: int
    reports: int
    year: int
    seed: int
    root: Path
    # Years of data from ``year`` on (the history benchmark's six); one for the rates.
    years: int = 1

    @property
    def folder(self) -> Path:
        return self.root / f"network-{self.clinics}-{self.sessions}"

    def span(self) -> tuple[datetime, float]:
        """The first instant of the data and the seconds it spans."""
        start = datetime(self.year, 1, 1, tzinfo=UTC)
        end = datetime(self.year + self.years, 1, 1, tzinfo=UTC)
        return start, (end - start).total_seconds()


@dataclass
class Generated:
    """What a built folder holds and how long building it took (``generated.json``)."""

    clinics: int
    sessions: int
    dosed_sessions: int
    reports: int
    linked_reports: int
    alerts: int
    alert_reports: int
    alert_session_readings: int
    year: int
    load_seconds: float
    index_analyze_seconds: float
    dirty_periods: int
    refresh_seconds: float
    total_seconds: float
    database_bytes: int
    built_at: str
    machine: dict[str, str]


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="bench.network", description=__doc__)
    add_arguments(parser)
    return options_from(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clinics", type=int, default=200, help="clinics (default 200)")
    parser.add_argument("--sessions", type=int, default=1_000_000, help="dosed sessions")
    parser.add_argument("--reports", type=int, default=None, help="reports (default sessions/10)")
    parser.add_argument("--year", type=int, default=2025, help="the year of the doses (UTC)")
    parser.add_argument("--seed", type=int, default=16, help="random seed")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="where folders live")


def options_from(args: argparse.Namespace) -> Options:
    if args.clinics < 1 or args.clinics > 999 or args.sessions < args.clinics:
        raise SystemExit("error: 1-999 clinics and at least one session per clinic")
    reports = args.sessions // 10 if args.reports is None else args.reports
    return Options(
        clinics=args.clinics,
        sessions=args.sessions,
        reports=reports,
        year=args.year,
        seed=args.seed,
        root=args.data_root,
    )


def needed_bytes(options: Options) -> int:
    """A generous estimate of the folder's size while it is built (tables, indexes, WAL)."""
    return options.sessions * 3_000 + options.reports * 6_000 + 1_500_000_000


def check_disk(options: Options) -> None:
    require_free_disk(
        options.root,
        needed_bytes(options),
        f"building {options.sessions:,} sessions",
        "pass a smaller --sessions",
    )


def load_generated(folder: Path) -> Generated | None:
    marker = folder / MARKER
    if not marker.exists():
        return None
    return Generated(**json.loads(marker.read_text()))


def _pick(rng: random.Random, table: Sequence[tuple[Any, int]]) -> Any:
    return rng.choices([v for v, _ in table], weights=[w for _, w in table])[0]


class _Copy:
    """Rows of one table written as CSV and copied in batches; the tables its rows refer
    to (``parents``) are copied first, so that no batch names a row still unwritten."""

    def __init__(
        self,
        conn: asyncpg.Connection[Any],
        table: str,
        columns: Sequence[str],
        parents: Sequence[_Copy] = (),
    ) -> None:
        self.conn, self.table, self.columns = conn, table, list(columns)
        self.parents = list(parents)
        self.out = io.StringIO()
        self.writer = csv.writer(self.out)
        self.pending = 0
        self.total = 0

    async def add(self, row: Sequence[Any]) -> None:
        self.writer.writerow(row)
        self.pending += 1
        if self.pending >= BATCH:
            await self.flush()

    async def flush(self) -> None:
        if not self.pending:
            return
        for parent in self.parents:
            await parent.flush()
        data = self.out.getvalue().encode()
        await self.conn.copy_to_table(
            self.table, source=io.BytesIO(data), columns=self.columns, format="csv"
        )
        self.total += self.pending
        self.pending = 0
        self.out = io.StringIO()
        self.writer = csv.writer(self.out)


def _ts(at: datetime) -> str:
    return at.isoformat()


def _clinic_sizes(rng: random.Random, clinics: int, sessions: int) -> list[int]:
    """Unequal clinics (log-normal weights), every one with at least one session."""
    weights = [rng.lognormvariate(0, 0.6) for _ in range(clinics)]
    total = sum(weights)
    sizes = [max(1, int(sessions * w / total)) for w in weights]
    sizes[0] += sessions - sum(sizes)
    if sizes[0] < 1:
        raise BenchError("too few sessions for so many clinics")
    return sizes


def _dose(rng: random.Random, drug: str) -> tuple[float, float | None]:
    """(dose_mg, weight_kg) of a session of ``drug``."""
    weight = round(rng.uniform(50, 120), 1)
    if drug == "esketamine_nasal":
        return _pick(rng, ESKETAMINE_DOSES), weight
    if drug == "ketamine_iv":
        band = _pick(rng, IV_MG_PER_KG)
        if band is None:
            return round(0.5 * weight, 1), None
        return round(rng.uniform(*band) * weight, 1), weight
    if drug == "ketamine_im":
        return round(rng.uniform(0.5, 1.0) * weight, 1), weight
    return float(rng.choice((150, 200, 300))), weight


CHECKLIST = json.dumps(
    {
        "systolic": 128,
        "diastolic": 82,
        "fasting": True,
        "cns_depressants": False,
        "pregnancy_possible": False,
        "transport_arranged": True,
    }
)


@dataclass
class _Session:
    id: str
    clinic_id: int
    patient_ref: str
    drug: str
    dose_mg: float
    weight_kg: float | None
    dosed_at: datetime


def _sessions(
    rng: random.Random, options: Options, clinic_ids: list[int], sizes: list[int]
) -> Iterator[tuple[_Session | None, list[Any]]]:
    """Each session (None for one never dosed) and its row."""
    start, seconds = options.span()
    for clinic_id, size in zip(clinic_ids, sizes, strict=True):
        patients = max(1, size // 12)
        undosed = max(0, size // 100)
        for i in range(size + undosed):
            drug = _pick(rng, DRUGS)
            dose, weight = _dose(rng, drug)
            at = start + timedelta(seconds=int(rng.uniform(0, seconds - 4 * 3600)))
            session = _Session(
                id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                clinic_id=clinic_id,
                patient_ref=f"P{clinic_id:03d}-{rng.randrange(patients):05d}",
                drug=drug,
                dose_mg=dose,
                weight_kg=weight,
                dosed_at=at,
            )
            dosed = i < size
            created = at - timedelta(minutes=30)
            discharged = at + timedelta(minutes=130)
            row = [
                session.id,
                clinic_id,
                session.patient_ref,
                drug,
                "" if weight is None else weight,
                "under_65",
                "Dr Bench",
                CHECKLIST,
                dose if dosed else "",
                _ts(at) if dosed else "",
                "LOT-1" if dosed else "",
                40 if dosed and drug == "ketamine_iv" else "",
                _ts(discharged) if dosed else "",
                '{"moaa_s": 5, "escort": true}' if dosed else "",
                "{admin}",
                _ts(created),
                _ts(discharged if dosed else created),
                1,
            ]
            yield (session if dosed else None), row


SESSION_COLUMNS = (
    "id",
    "clinic_id",
    "patient_ref",
    "drug",
    "weight_kg",
    "age_band",
    "prescriber",
    "checklist",
    "dose_mg",
    "dosed_at",
    "lot",
    "infusion_minutes",
    "discharged_at",
    "discharge",
    "created_by",
    "created_at",
    "updated_at",
    "version",
)


async def _load(conn: asyncpg.Connection[Any], options: Options, admin: int) -> dict[str, int]:
    rng = random.Random(options.seed)  # noqa: S311 (benchmark data, not secrets)
    clinic_ids: list[int] = [
        r["id"] for r in await conn.fetch("SELECT id FROM clinics ORDER BY code")
    ]
    rule_rows = await conn.fetch("SELECT id, version, severity FROM alert_rules")
    rules = {r["id"]: (r["version"], r["severity"]) for r in rule_rows}
    sizes = _clinic_sizes(rng, options.clinics, options.sessions)

    sessions = _Copy(conn, "treatment_sessions", SESSION_COLUMNS)
    reports = _Copy(
        conn,
        "reports",
        (
            "id",
            "clinic_id",
            "kind",
            "patient_ref",
            "occurred_at",
            "current_version",
            "created_by",
            "created_at",
            "updated_at",
        ),
    )
    versions = _Copy(
        conn,
        "report_versions",
        ("report_id", "version", "body", "created_by", "created_at"),
        parents=[reports],
    )
    alerts = _Copy(
        conn,
        "alerts",
        (
            "id",
            "rule_id",
            "rule_version",
            "clinic_id",
            "group_by",
            "group_key",
            "from_pattern",
            "severity",
            "status",
            "first_seen_at",
            "last_seen_at",
            "resolved_at",
            "resolved_by",
            "resolution_reason",
        ),
    )
    alert_reports = _Copy(
        conn,
        "alert_reports",
        ("alert_id", "report_id", "report_version", "added_at"),
        parents=[alerts, reports],
    )
    readings = _Copy(
        conn,
        "alert_session_readings",
        ("alert_id", "session_id", "reading", "reading_id", "added_at"),
        parents=[alerts, sessions],
    )

    async def alert(rule: str, clinic_id: int, key: str, at: datetime) -> str:
        alert_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        version, severity = rules[rule]
        resolved = at + timedelta(hours=2)
        await alerts.add(
            [
                alert_id,
                rule,
                version,
                clinic_id,
                "patient",
                key,
                "f",
                severity,
                "resolved",
                _ts(at),
                _ts(at),
                _ts(resolved),
                admin,
                "reviewed (bench)",
            ]
        )
        return alert_id

    # Sessions, keeping a sample per clinic for the reports to link to.
    report_share = options.reports / options.sessions
    linked_targets: list[_Session] = []
    dosed = 0
    for session, row in _sessions(rng, options, clinic_ids, sizes):
        row[SESSION_COLUMNS.index("created_by")] = admin
        await sessions.add(row)
        if session is None:
            continue
        dosed += 1
        if rng.random() < report_share * 0.85 * 1.06:
            linked_targets.append(session)
        if rng.random() < 0.02:
            rule, reading, _ = _pick(rng, [((r, k, w), w) for r, k, w in READING_RULES])
            at = session.dosed_at + timedelta(minutes=40)
            alert_id = await alert(rule, session.clinic_id, session.patient_ref, at)
            reading_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            await readings.add([alert_id, session.id, reading, reading_id, _ts(at)])
    await sessions.flush()
    log(f"{sessions.total:,} sessions ({dosed:,} dosed) copied")

    # Reports: linked ones on the sampled sessions, the rest on no session.
    rng.shuffle(linked_targets)
    linked_count = min(len(linked_targets), int(options.reports * 0.85))
    year_start, year_seconds = options.span()
    for i in range(options.reports):
        target = linked_targets[i] if i < linked_count else None
        kind = _pick(rng, KINDS[:-1] if target is not None else KINDS)
        report_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        body: dict[str, Any] = {"kind": kind}
        if target is not None:
            clinic_id = target.clinic_id
            patient: str | None = target.patient_ref
            at = target.dosed_at + timedelta(minutes=60)
            body.update(
                session_id=target.id,
                drug=target.drug,
                dose_mg=target.dose_mg,
                weight_kg=target.weight_kg,
            )
        else:
            clinic_id = rng.choice(clinic_ids)
            patient = None if kind == "stock_incident" else f"P{clinic_id:03d}-U{i:06d}"
            at = year_start + timedelta(seconds=int(rng.uniform(0, year_seconds - 3600)))
            if kind != "stock_incident":
                drug = _pick(rng, DRUGS)
                dose, weight = _dose(rng, drug)
                body.update(drug=drug, dose_mg=dose, weight_kg=weight)
        if kind == "adverse_event":
            body.update(category=_pick(rng, CATEGORIES), severity="moderate")
        body["occurred_at"] = _ts(at)
        await reports.add(
            [
                report_id,
                clinic_id,
                kind,
                "" if patient is None else patient,
                _ts(at),
                1,
                admin,
                _ts(at),
                _ts(at),
            ]
        )
        await versions.add([report_id, 1, json.dumps(body), admin, _ts(at)])
        if rng.random() < 0.20:
            rule = rng.choice(REPORT_RULES[kind])
            alert_id = await alert(rule, clinic_id, patient or f"clinic:{clinic_id}", at)
            await alert_reports.add([alert_id, report_id, 1, _ts(at)])
    for table in (reports, versions, alerts, alert_reports, readings):
        await table.flush()
    log(f"{reports.total:,} reports ({linked_count:,} linked), {alerts.total:,} alerts copied")
    return {
        "sessions": sessions.total,
        "dosed_sessions": dosed,
        "reports": reports.total,
        "linked_reports": linked_count,
        "alerts": alerts.total,
        "alert_reports": alert_reports.total,
        "alert_session_readings": readings.total,
    }


MARK_ALL = """
INSERT INTO analytics_dirty (clinic_id, grain, period_start)
SELECT DISTINCT s.clinic_id, g, analytics_period(g, s.dosed_at)
FROM treatment_sessions s, unnest(ARRAY['month', 'week']) AS g
WHERE s.dosed_at IS NOT NULL
UNION
SELECT DISTINCT r.clinic_id, g, analytics_period(g, r.occurred_at)
FROM reports r, unnest(ARRAY['month', 'week']) AS g
ON CONFLICT DO NOTHING
"""


async def populate(conn: asyncpg.Connection[Any], options: Options) -> Generated:
    """Clinics, the rows (the user ``bench-admin`` must exist) and the rollups, on an
    owner connection (with the service's JSON codecs) to a migrated database."""
    loaded = await load(conn, options)
    return await rebuild_rollups(conn, loaded)


async def load(conn: asyncpg.Connection[Any], options: Options) -> dict[str, Any]:
    """The clinics and the rows, copied with the user triggers off, then VACUUM ANALYZE:
    the counts and the timings (``loaded.json``)."""
    started = time.monotonic()
    for n in range(1, options.clinics + 1):
        await add_clinic(conn, f"N{n:03d}", f"Network clinic {n}", ACTOR)
    admin: int = await conn.fetchval("SELECT id FROM users WHERE username = $1", ADMIN)
    async with conn.transaction():
        for table in LOADED:
            await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        counts = await _load(conn, options, admin) if options.sessions else dict(NO_ROWS)
        for table in LOADED:
            await conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
    loaded = time.monotonic()
    log(f"loaded in {loaded - started:.0f} s; VACUUM ANALYZE")
    for table in LOADED:
        await conn.execute(f"VACUUM ANALYZE {table}")
    return {
        "clinics": options.clinics,
        "year": options.year,
        "load_seconds": round(loaded - started, 1),
        "index_analyze_seconds": round(time.monotonic() - loaded, 1),
        **counts,
    }


async def rebuild_rollups(conn: asyncpg.Connection[Any], loaded: dict[str, Any]) -> Generated:
    """Every clinic-period with a session or a report marked dirty, then one refresh of
    them all (what the API does before reading), timed: the cold rebuild."""
    async with conn.transaction():
        await conn.execute(MARK_ALL)
        dirty: int = await conn.fetchval("SELECT count(*) FROM analytics_dirty")
    log(f"cold refresh of the rollups: {dirty:,} clinic-periods")
    started = time.monotonic()
    async with conn.transaction():
        await rollups.recount_dirty(conn)
    refreshed = time.monotonic()
    log(f"refreshed in {refreshed - started:.0f} s")
    for table in ("analytics_sessions", "analytics_events", "analytics_unlinked"):
        await conn.execute(f"VACUUM ANALYZE {table}")
    size: int = await conn.fetchval("SELECT pg_database_size(current_database())")
    return Generated(
        **loaded,
        dirty_periods=dirty,
        refresh_seconds=round(refreshed - started, 1),
        total_seconds=round(
            loaded["load_seconds"] + max(0, loaded["index_analyze_seconds"]) + refreshed - started,
            1,
        ),
        database_bytes=size,
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=machine_info(),
    )


async def connected(owner_url: str, step: Callable[[asyncpg.Connection[Any]], Awaitable[T]]) -> T:
    conn = await connect(owner_url)
    try:
        await conn.execute("SET synchronous_commit = off")
        return await step(conn)
    finally:
        await conn.close()


def add_admin(service: Service) -> None:
    """The generated data's admin (``ADMIN``), granted every clinic, with the CLI."""
    service.run_cli(
        "user",
        "add",
        ADMIN,
        "--role",
        "admin",
        "--all-clinics",
        "--password-stdin",
        stdin=ADMIN_PASSWORD + "\n",
    )


def build(options: Options) -> tuple[Service, Generated]:
    """The folder's service, started; the data set built first if the folder has none.

    A folder whose rows were loaded (``loaded.json``) but whose rollups were not rebuilt
    (the run was stopped) is finished, not built again."""
    folder = options.folder
    generated = load_generated(folder)
    if generated is not None:
        log(f"reusing {folder} (built {generated.built_at} in {generated.total_seconds:.0f} s)")
        service = Service(folder)
        service.start(workers=2)
        return service, generated
    loaded_file = folder / LOADED_MARKER
    if not loaded_file.exists():
        check_disk(options)
        empty_folder(folder)
    service = Service(folder)
    service.start(workers=2)
    try:
        owner = service.owner_url()
        if not loaded_file.exists():
            add_admin(service)
            log(f"building {options.sessions:,} sessions in {folder}")
            loaded = asyncio.run(connected(owner, lambda conn: load(conn, options)))
            loaded_file.write_text(json.dumps(loaded, indent=2) + "\n")
        else:
            log(f"rows loaded before in {folder}; rebuilding the rollups")
            loaded = json.loads(loaded_file.read_text())
        generated = asyncio.run(connected(owner, lambda conn: rebuild_rollups(conn, loaded)))
    except BaseException:
        service.stop()
        raise
    (folder / MARKER).write_text(json.dumps(asdict(generated), indent=2) + "\n")
    log(f"built in {generated.total_seconds:.0f} s")
    return service, generated


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        service, generated = build(options)
        service.stop()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(generated), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
