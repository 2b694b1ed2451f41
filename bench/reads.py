"""Reads at year six (issue 17, goal 4): list pages, audit search and a patient's
timeline on six years of history against an empty database.

    scripts/bench reads [--rounds 3] [--calls 100] [--deep-pages 100] [--explain]
                        [--clinics 200 --years 6 --sessions 3000000 --reports 2000000
                         --audit 5000000] [--data-root DIR]

Two data folders of ``bench/history.py``, each built once and reused: the history (six
years of the network: sessions, reports, alerts, audit entries) and the same clinics and
user with no history (``HistoryOptions.empty``). ``safetyreport serve --workers 2`` runs
on each. Into each, once, the benchmark posts the same probe: ``--probe-reports``
blood-pressure reports of one patient (``PROBE-READS`` at clinic N001) over HTTP, some
raising an alert, then ``--probe-resolved`` alerts raised and resolved and one left open,
so that every read below returns rows on both. Then, as the admin of
every clinic, filtered to clinic N001 (an auditor's or a clinic's view):

- ``reports first``: ``GET /api/v1/reports?clinic=N001`` (50 a page, newest first);
- ``reports deep``: the page after ``--deep-pages`` pages of it (keyset cursor), or the
  last page there is (the empty database's probe has 3 pages);
- ``alert queue``: ``GET /api/v1/alerts?clinic=N001&status=open``;
- ``alerts resolved first`` / ``deep``: the resolved alerts, first and a later page
  (what six years pile up);
- ``audit by clinic``: ``GET /api/v1/audit/entries?clinic=N001&limit=50``;
- ``audit by object``: ``GET /api/v1/audit/entries?object=patient:PROBE-READS``;
- ``timeline``: ``GET /api/v1/patients/PROBE-READS/timeline``.

Each round times ``--calls`` calls of each read on each database (one untimed call
first; wall clock at the client over a keep-alive connection), alternating the order of
the databases between rounds so that the machine's other load falls on both alike. The
table shows, per read, the medians over the rounds of p50 and p99, the spread of p99
(min-max over rounds), the rows returned, and the ratio of the p99 medians (the goal:
at most 2). ``--explain`` prints EXPLAIN (ANALYZE, BUFFERS) of each read's main query
on the history database, built by the service's own query functions.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import sys
import time
import urllib.error
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg

from bench import history
from bench.common import BenchError, Service, log, machine_info
from bench.network import ADMIN, ADMIN_PASSWORD
from safetyreport.alerts.evaluate import StoredReport, rules_in_force, window_query
from safetyreport.alerts.queue import AlertFilters
from safetyreport.alerts.queue import list_query as alert_list_query
from safetyreport.alerts.view import Status
from safetyreport.audit.export import AuditFilters
from safetyreport.audit.search import search_query
from safetyreport.auth.users import principal_by_username
from safetyreport.db.pool import connect
from safetyreport.patients.service import _ALERTS as TIMELINE_ALERTS
from safetyreport.patients.service import _REPORTS as TIMELINE_REPORTS
from safetyreport.patients.service import _SESSIONS as TIMELINE_SESSIONS
from safetyreport.reports.service import ReportFilters
from safetyreport.reports.service import list_query as report_list_query

CLINIC = "N001"
PATIENT = "PROBE-READS"
PAGE = 50
# Who posts the probe's reports (an admin may not write reports).
WRITER = "bench-reads-officer"
WRITER_PASSWORD = "probe-writer-throwaway-7f3k"  # noqa: S105 (a throwaway benchmark user)


@dataclass(frozen=True)
class Read:
    name: str
    path: str
    params: dict[str, str]
    # The list to walk to a later page (its first page's params), or None.
    deep: bool = False


READS = (
    Read("reports first", "/api/v1/reports", {"clinic": CLINIC, "limit": str(PAGE)}),
    Read("reports deep", "/api/v1/reports", {"clinic": CLINIC, "limit": str(PAGE)}, deep=True),
    Read("alert queue", "/api/v1/alerts", {"clinic": CLINIC, "status": "open"}),
    Read(
        "alerts resolved first",
        "/api/v1/alerts",
        {"clinic": CLINIC, "status": "resolved", "limit": str(PAGE)},
    ),
    Read(
        "alerts resolved deep",
        "/api/v1/alerts",
        {"clinic": CLINIC, "status": "resolved", "limit": str(PAGE)},
        deep=True,
    ),
    Read("audit by clinic", "/api/v1/audit/entries", {"clinic": CLINIC, "limit": str(PAGE)}),
    Read(
        "audit by object",
        "/api/v1/audit/entries",
        {"object": f"patient:{PATIENT}", "limit": str(PAGE)},
    ),
    Read("timeline", f"/api/v1/patients/{PATIENT}/timeline", {}),
)


@dataclass
class Target:
    """One database's service, its token and each read's URL there."""

    label: str
    service: Service
    token: str = ""
    urls: dict[str, str] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    cursors: dict[str, str | None] = field(default_factory=dict)
    connection: http.client.HTTPConnection | None = None

    def get(self, url: str) -> tuple[int, Any]:
        """GET over the kept-alive connection, opened again if the server closed it idle."""
        try:
            return self._get(url)
        except (http.client.RemoteDisconnected, ConnectionError):
            self.connection = None
            return self._get(url)

    def _get(self, url: str) -> tuple[int, Any]:
        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.service.port, 60)
        self.connection.request("GET", url, headers={"Authorization": f"Bearer {self.token}"})
        response = self.connection.getresponse()
        body = response.read()
        return response.status, json.loads(body) if body else None


@dataclass
class Timing:
    p50: list[float] = field(default_factory=list)  # ms, one per round
    p99: list[float] = field(default_factory=list)


def _url(path: str, params: dict[str, str]) -> str:
    return f"{path}?{urlencode(params)}" if params else path


def _rows(body: Any) -> int:
    if isinstance(body, dict) and "items" in body:
        return len(body["items"])
    if isinstance(body, dict) and "entries" in body:
        return len(body["entries"])
    return 0


def _writer_token(service: Service) -> str:
    """A token of the probe's writer (a safety officer of the clinic), made if new."""
    try:
        return service.login(WRITER, WRITER_PASSWORD)
    except urllib.error.HTTPError:
        pass
    service.run_cli(
        "user",
        "add",
        WRITER,
        "--role",
        "safety_officer",
        "--clinic",
        CLINIC,
        "--password-stdin",
        stdin=WRITER_PASSWORD + "\n",
    )
    return service.login(WRITER, WRITER_PASSWORD)


def _post(target: Target, token: str, path: str, body: dict[str, Any]) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", target.service.port, 60)
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Idempotency-Key": str(uuid.uuid4()),
    }
    connection.request("POST", path, body=json.dumps(body), headers=headers)
    response = connection.getresponse()
    text = response.read()
    connection.close()
    if response.status not in (200, 201):
        raise BenchError(f"POST {path}: {response.status} {text[:500]!r}")
    return json.loads(text)


def _probe_report(at: datetime, *, high: bool) -> dict[str, Any]:
    return {
        "kind": "blood_pressure",
        "clinic": CLINIC,
        "patient_ref": PATIENT,
        "occurred_at": at.isoformat(),
        "drug": "esketamine_nasal",
        "outcome": "resolved",
        "phase": "post_dose",
        "systolic": 185 if high else 132,
        "diastolic": 112 if high else 84,
    }


def seed_probe(target: Target, reports: int, resolved: int) -> None:
    """The probe patient's reports, and alerts raised and resolved (so that the resolved
    list has pages on both databases), posted once into the folder."""
    status, timeline = target.get(f"/api/v1/patients/{PATIENT}/timeline")
    token = ""
    if status != 200:
        log(f"{target.label}: posting {reports} probe reports")
        token = _writer_token(target.service)
        now = datetime.now(UTC).replace(microsecond=0)
        for i in range(reports):
            at = now - timedelta(minutes=reports - i)
            _post(target, token, "/api/v1/reports", _probe_report(at, high=i % 4 == 0))
        status, timeline = target.get(f"/api/v1/patients/{PATIENT}/timeline")
    done = sum(1 for e in timeline["entries"] if e["type"] == "alert" and e["status"] == "resolved")
    if done >= resolved:
        return
    log(f"{target.label}: raising and resolving {resolved - done} probe alerts")
    token = token or _writer_token(target.service)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    for i in range(resolved - done):
        at = start + timedelta(minutes=i)
        _post(target, token, "/api/v1/reports", _probe_report(at, high=True))
        _status, page = target.get(_url("/api/v1/alerts", {"clinic": CLINIC, "status": "open"}))
        for alert in page["items"]:
            path = f"/api/v1/alerts/{alert['id']}/resolve"
            _post(target, token, path, {"reason": "bench probe"})
    # And one left open, for the queue.
    _post(target, token, "/api/v1/reports", _probe_report(datetime.now(UTC), high=True))


def deep_cursor(target: Target, read: Read, pages: int) -> str | None:
    """The cursor of the page after ``pages`` pages, or of the last page there is."""
    cursor: str | None = None
    for _ in range(pages):
        params = read.params if cursor is None else {**read.params, "cursor": cursor}
        status, body = target.get(_url(read.path, params))
        if status != 200:
            raise BenchError(f"{target.label} {read.name}: {status} {str(body)[:300]}")
        following = body.get("next_cursor")
        if following is None:
            break
        cursor = following
    return cursor


def prepare(target: Target, options: argparse.Namespace) -> None:
    target.token = target.service.login(ADMIN, ADMIN_PASSWORD)
    seed_probe(target, options.probe_reports, options.probe_resolved)
    target.get(f"/api/v1/patients/{PATIENT}/timeline")  # an audit entry about the patient
    for read in READS:
        params = dict(read.params)
        if read.deep:
            cursor = deep_cursor(target, read, options.deep_pages)
            target.cursors[read.name] = cursor
            if cursor is not None:
                params["cursor"] = cursor
        url = _url(read.path, params)
        status, body = target.get(url)
        if status != 200:
            raise BenchError(f"{target.label} {read.name}: {status} {str(body)[:300]}")
        target.urls[read.name] = url
        target.rows[read.name] = _rows(body)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def time_read(target: Target, url: str, calls: int) -> tuple[float, float]:
    """p50 and p99 in ms of ``calls`` GETs of ``url`` (after one untimed)."""
    target.get(url)
    took = []
    for _ in range(calls):
        started = time.perf_counter()
        status, _body = target.get(url)
        took.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise BenchError(f"{target.label} {url}: {status}")
    return _percentile(took, 0.50), _percentile(took, 0.99)


def measure(targets: list[Target], rounds: int, calls: int) -> dict[tuple[str, str], Timing]:
    timings: dict[tuple[str, str], Timing] = {}
    for round_ in range(rounds):
        order = targets if round_ % 2 == 0 else list(reversed(targets))
        for read in READS:
            for target in order:
                p50, p99 = time_read(target, target.urls[read.name], calls)
                timing = timings.setdefault((read.name, target.label), Timing())
                timing.p50.append(p50)
                timing.p99.append(p99)
        log(f"round {round_ + 1}/{rounds} done")
    return timings


def render(
    options: argparse.Namespace,
    targets: list[Target],
    timings: dict[tuple[str, str], Timing],
    built: dict[str, Any],
) -> str:
    machine = machine_info()
    empty, full = targets
    lines = [
        f"Reads at year six: {built['reports']:,} reports, {built['audit_entries']:,} audit "
        f"entries, {built['alerts']:,} alerts over {built['years']} years of "
        f"{built['clinics']} clinics, against the same clinics with no history; "
        f"{options.rounds} rounds of {options.calls} calls per read",
        f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory']}, "
        f"Python {machine['python']}, load now {machine['load_before']}",
        "",
        "| read | rows empty / history | p50 empty ms | p50 history ms | p99 empty ms "
        "(min-max) | p99 history ms (min-max) | p99 history / empty |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for read in READS:
        e, h = timings[(read.name, empty.label)], timings[(read.name, full.label)]
        e99, h99 = statistics.median(e.p99), statistics.median(h.p99)
        ratio = h99 / e99 if e99 else 0.0
        lines.append(
            f"| {read.name} | {empty.rows[read.name]} / {full.rows[read.name]} | "
            f"{statistics.median(e.p50):.1f} | {statistics.median(h.p50):.1f} | "
            f"{e99:.1f} ({min(e.p99):.1f}-{max(e.p99):.1f}) | "
            f"{h99:.1f} ({min(h.p99):.1f}-{max(h.p99):.1f}) | {ratio:.2f} |"
        )
    lines.append("")
    lines.append("goal (issue 17): p99 on the history within 2x of the empty database's")
    return "\n".join(lines)


async def explain(owner_url: str, target: Target) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of each read's main query on the history database."""
    conn = await connect(owner_url)
    try:
        principal = await principal_by_username(conn, ADMIN)
        if principal is None:
            raise BenchError(f"no user {ADMIN}")
        queries: list[tuple[str, str, list[Any]]] = []
        for name, cursor in (("reports first", None), ("reports deep", "reports deep")):
            filters = ReportFilters(
                clinic=CLINIC, limit=PAGE, cursor=target.cursors.get(cursor or "")
            )
            queries.append((name, *report_list_query(principal, filters)))
        statuses: tuple[tuple[str, Status, str | None], ...] = (
            ("alert queue", "open", None),
            ("alerts resolved first", "resolved", None),
            ("alerts resolved deep", "resolved", "alerts resolved deep"),
        )
        for name, status, cursor in statuses:
            alert_filters = AlertFilters(
                clinic=CLINIC, status=status, limit=PAGE, cursor=target.cursors.get(cursor or "")
            )
            queries.append((name, *alert_list_query(principal, alert_filters)))
        by_clinic = AuditFilters(clinic=CLINIC)
        by_object = AuditFilters(object=f"patient:{PATIENT}")
        for name, audit_filters in (("audit by clinic", by_clinic), ("audit by object", by_object)):
            queries.append((name, *search_query(principal, audit_filters, cursor=None, limit=PAGE)))
        seed = sorted(principal.clinic_ids.values())
        reports = await conn.fetch(TIMELINE_REPORTS, seed, PATIENT)
        sessions = await conn.fetch(TIMELINE_SESSIONS, seed, PATIENT)
        pairs = sorted({(r["clinic_id"], r["patient_ref"]) for r in [*sessions, *reports]})
        alert_args = [
            [c for c, _ in pairs],
            [p for _, p in pairs],
            [s["id"] for s in sessions],
            [r["id"] for r in reports],
        ]
        queries.append(("timeline sessions", TIMELINE_SESSIONS, [seed, PATIENT]))
        queries.append(("timeline reports", TIMELINE_REPORTS, [seed, PATIENT]))
        queries.append(("timeline alerts", TIMELINE_ALERTS, alert_args))
        queries += await pattern_windows(conn, principal.clinic_ids[CLINIC])
        out = []
        for name, sql, args in queries:
            rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
            out.append(f"--- {name}\n" + "\n".join(r[0] for r in rows))
        return "\n\n".join(out)
    finally:
        await conn.close()


# The generated patient of the clinic with the most reports before the benchmark's own.
_BUSIEST_PATIENT = """
SELECT patient_ref, max(occurred_at) AS latest FROM reports
WHERE clinic_id = $1 AND patient_ref <> '' AND occurred_at < $2
GROUP BY patient_ref ORDER BY count(*) DESC, patient_ref LIMIT 1
"""


async def pattern_windows(
    conn: asyncpg.Connection[Any], clinic_id: int
) -> list[tuple[str, str, list[Any]]]:
    """The window query of each pattern rule in force at the clinic (the rules' own
    ``window_query``), around the latest report of the clinic's busiest generated patient:
    what a report written into the middle of the history would read."""
    row = await conn.fetchrow(_BUSIEST_PATIENT, clinic_id, datetime(2026, 1, 1, tzinfo=UTC))
    if row is None:
        return []
    report = StoredReport(
        id=uuid.uuid4(),
        version=1,
        clinic_id=clinic_id,
        kind="blood_pressure",
        patient_ref=row["patient_ref"],
        occurred_at=row["latest"],
        body={},
        reading_grade=None,
    )
    return [
        (f"pattern window: {rule.id} ({row['patient_ref']})", *window_query(rule, report))
        for rule in await rules_in_force(conn, clinic_id)
        if rule.definition.pattern is not None
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench reads", description=__doc__)
    history.add_arguments(parser)
    parser.add_argument("--rounds", type=int, default=3, help="rounds (at least 3 for spread)")
    parser.add_argument("--calls", type=int, default=100, help="timed calls per read a round")
    parser.add_argument("--deep-pages", type=int, default=100, help="pages before the deep one")
    parser.add_argument("--probe-reports", type=int, default=160, help="the probe's reports")
    parser.add_argument(
        "--probe-resolved", type=int, default=60, help="the probe's alerts raised and resolved"
    )
    parser.add_argument("--explain", action="store_true", help="EXPLAIN the history's reads")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < 1 or args.deep_pages < 1:
        parser.error("at least one round, call and page")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = history.options_from(args)
    targets: list[Target] = []
    try:
        empty_service, _ = history.build(options.empty(), args.data_root)
        targets.append(Target("empty", empty_service))
        full_service, built = history.build(options, args.data_root)
        targets.append(Target("history", full_service))
        for target in targets:
            prepare(target, args)
        timings = measure(targets, args.rounds, args.calls)
        print(render(args, targets, timings, built))
        if args.explain:
            print()
            print(asyncio.run(explain(full_service.owner_url(), targets[1])))
    except (BenchError, asyncpg.PostgresError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for target in targets:
            target.service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
