"""Safety-signal rates benchmark (issue 16): the API against the plain SQL aggregate.

    scripts/bench rates [--clinics 200] [--sessions 1000000] [--sql-runs 5] [--calls 20]

On the network data set of ``bench/network.py`` (built first if its folder is missing,
else reused) and ``safetyreport serve --workers 2`` on it, for each dashboard view:

- **network**: one year by month, ``group=clinic``, one event type (a rule): the
  network's 200 clinics x 12 months, the view a safety officer scans for an outlier;
- **clinic**: one clinic's year by month, every event type (``group=clinic``).

it times, alternating so that the machine's other load hits both alike:

- the plain SQL aggregate over the raw rows (sessions, linked reports, alerts) giving
  the same rows, through ``psql`` (``\\timing``: the server's time plus the transfer);
- ``GET /api/v1/analytics/rates`` with the same parameters over a keep-alive HTTP
  connection opened after each psql run (warm: the first call, not timed, refreshed
  the rollups), wall clock per call as a client sees it;

checks that the API's numbers (sessions, sessions with the event, unlinked reports)
equal the aggregate's, and prints a table: medians (and the API's p95) and the ratio.
``--explain`` adds EXPLAIN ANALYZE of the rollup query of each view.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import asyncpg

from bench.common import BenchError, Service, log, machine_info
from bench.network import ADMIN, ADMIN_PASSWORD, Generated, Options, add_arguments, build
from bench.network import options_from as network_options
from safetyreport.analytics.rates import _sql as rollup_sql
from safetyreport.db.embedded import pgbin

NETWORK_EVENT = "rule:sedation-moaa-s-1"
CLINIC = "N001"


@dataclass(frozen=True)
class View:
    name: str
    description: str
    clinic: str | None
    event_type: str | None


VIEWS = (
    View("network", f"every clinic x 12 months, {NETWORK_EVENT}", None, NETWORK_EVENT),
    View("clinic", f"clinic {CLINIC} x 12 months, every event type", CLINIC, None),
)


@dataclass
class Result:
    view: View
    rows: int
    sql_ms: list[float]
    api_ms: list[float]
    equal: bool
    explain: str = ""


def parse_args(argv: Sequence[str] | None) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="scripts/bench rates", description=__doc__)
    add_arguments(parser)
    parser.add_argument("--sql-runs", type=int, default=5, help="timed psql runs per view")
    parser.add_argument("--calls", type=int, default=20, help="timed API calls per SQL run")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the rollups")
    args = parser.parse_args(argv)
    return network_options(args), args


def raw_sql(year: int, clinic_id: int | None, event_type: str | None) -> str:
    """The plain aggregate over every row: the API's rows for one year by month, grouped
    by clinic (values are the benchmark's own constants, no input)."""
    start, end = f"'{year}-01-01 00:00+00'", f"'{year + 1}-01-01 00:00+00'"
    clinic = "" if clinic_id is None else f"AND clinic_id = {int(clinic_id)}"
    event = "" if event_type is None else "WHERE event_type = '" + event_type + "'"
    return f"""
WITH s AS (
    SELECT id, clinic_id, date_trunc('month', dosed_at AT TIME ZONE 'UTC')::date AS period_start
    FROM treatment_sessions
    WHERE dosed_at >= {start} AND dosed_at < {end} {clinic}
), linked AS (
    SELECT s.id AS session_id, r.id AS report_id, r.kind, v.body ->> 'category' AS category
    FROM s
    JOIN report_versions v ON v.body ? 'session_id' AND v.body ->> 'session_id' = s.id::text
    JOIN reports r ON r.id = v.report_id AND r.current_version = v.version
), events AS (
    SELECT * FROM (
        SELECT session_id, 'kind:' || kind AS event_type FROM linked
        UNION SELECT session_id, 'category:' || category FROM linked WHERE category IS NOT NULL
        UNION SELECT l.session_id, 'rule:' || a.rule_id FROM linked l
            JOIN alert_reports ar ON ar.report_id = l.report_id JOIN alerts a ON a.id = ar.alert_id
        UNION SELECT sr.session_id, 'rule:' || a.rule_id FROM s
            JOIN alert_session_readings sr ON sr.session_id = s.id
            JOIN alerts a ON a.id = sr.alert_id
    ) all_events {event}
), unlinked AS (
    SELECT * FROM (
        SELECT r.clinic_id, date_trunc('month', r.occurred_at AT TIME ZONE 'UTC')::date
                   AS period_start, r.id, r.kind, v.body ->> 'category' AS category
        FROM reports r
        JOIN report_versions v ON v.report_id = r.id AND v.version = r.current_version
        WHERE r.occurred_at >= {start} AND r.occurred_at < {end} {clinic.replace("AND ", "AND r.")}
          AND NOT v.body ? 'session_id'
    ) u
), unlinked_events AS (
    SELECT * FROM (
        SELECT clinic_id, period_start, id, 'kind:' || kind AS event_type FROM unlinked
        UNION SELECT clinic_id, period_start, id, 'category:' || category FROM unlinked
            WHERE category IS NOT NULL
        UNION SELECT u.clinic_id, u.period_start, u.id, 'rule:' || a.rule_id FROM unlinked u
            JOIN alert_reports ar ON ar.report_id = u.id JOIN alerts a ON a.id = ar.alert_id
    ) all_unlinked {event}
), sg AS (
    SELECT period_start, clinic_id, count(*) AS sessions FROM s GROUP BY 1, 2
), eg AS (
    SELECT s.period_start, s.clinic_id, e.event_type, count(*) AS n
    FROM events e JOIN s ON s.id = e.session_id GROUP BY 1, 2, 3
), ug AS (
    SELECT period_start, clinic_id, event_type, count(*) AS n FROM unlinked_events GROUP BY 1, 2, 3
), types AS (
    SELECT event_type FROM eg UNION SELECT event_type FROM ug
    {"" if event_type is None else "UNION SELECT '" + event_type + "'"}
), grid AS (
    SELECT sg.*, types.event_type FROM sg CROSS JOIN types
)
SELECT period_start, c.code AS clinic, event_type, coalesce(grid.sessions, 0) AS sessions,
       coalesce(eg.n, 0) AS events, coalesce(ug.n, 0) AS unlinked
FROM grid
LEFT JOIN eg USING (period_start, clinic_id, event_type)
FULL JOIN ug USING (period_start, clinic_id, event_type)
JOIN clinics c ON c.id = clinic_id
ORDER BY 1, 2, 3
"""  # noqa: S608 (the benchmark's own constants)


def psql_run(owner_url: str, sql: str, output: bool) -> tuple[float, list[tuple[Any, ...]]]:
    """(milliseconds by psql's \\timing, the rows if ``output``)."""
    script = "\\timing on\n" + ("" if output else "\\o /dev/null\n") + sql.strip() + ";\n"
    result = subprocess.run(  # noqa: S603
        [str(pgbin("psql")), owner_url, "-X", "-q", "-A", "-t", "-F", "\t"],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"psql failed: {result.stderr[-2000:]}")
    timings = re.findall(r"^Time: ([0-9.]+) ms", result.stdout, re.MULTILINE)
    if not timings:
        raise BenchError(f"psql printed no timing: {result.stdout[-500:]}")
    rows = []
    if output:
        for line in result.stdout.splitlines():
            if line and not line.startswith("Time:"):
                rows.append(tuple(line.split("\t")))
    return float(timings[-1]), rows


class Api:
    """One keep-alive HTTP connection to the service, signed in."""

    def __init__(self, service: Service) -> None:
        self.token = service.login(ADMIN, ADMIN_PASSWORD)
        self.conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=120)

    def reopen(self) -> None:
        """A new connection (the server closes one idle for 5 s, as while psql runs)."""
        self.conn.close()
        self.conn.connect()

    def rates(self, params: list[tuple[str, str]]) -> tuple[float, dict[str, Any]]:
        try:
            return self._rates(params)
        except (http.client.RemoteDisconnected, ConnectionError):
            log("the server closed the connection; again on a new one")
            self.reopen()
            return self._rates(params)

    def _rates(self, params: list[tuple[str, str]]) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        self.conn.request(
            "GET",
            "/api/v1/analytics/rates?" + urlencode(params),
            headers={"Authorization": f"Bearer {self.token}"},
        )
        response = self.conn.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise BenchError(f"the API answered {response.status}: {body[:500]!r}")
        answer: dict[str, Any] = json.loads(body)
        return elapsed, answer

    def close(self) -> None:
        self.conn.close()


def api_params(view: View, year: int) -> list[tuple[str, str]]:
    params = [
        ("grain", "month"),
        ("start", f"{year}-01-01"),
        ("end", f"{year + 1}-01-01"),
        ("group", "clinic"),
    ]
    if view.clinic:
        params.append(("clinic", view.clinic))
    if view.event_type:
        params.append(("event_type", view.event_type))
    return params


def same_numbers(api: dict[str, Any], sql_rows: list[tuple[Any, ...]]) -> bool:
    from_api = {
        (r["period_start"], r["clinic"], r["event_type"]): (
            r["sessions"],
            r["sessions_with_event"],
            r["unlinked_reports"],
        )
        for r in api["rows"]
    }
    from_sql = {(p, c, e): (int(s), int(n), int(u)) for p, c, e, s, n, u in sql_rows}
    if from_api != from_sql:
        differ = sorted(
            k for k in from_api.keys() | from_sql.keys() if from_api.get(k) != from_sql.get(k)
        )
        for key in differ[:5]:
            log(f"differs at {key}: API {from_api.get(key)}, SQL {from_sql.get(key)}")
        log(f"{len(differ)} rows differ ({len(from_api)} from the API, {len(from_sql)} from SQL)")
        return False
    return True


async def explain(owner_url: str, view: View, year: int, clinic_id: int | None) -> str:
    from datetime import date

    conn = await asyncpg.connect(owner_url)
    try:
        plan = await conn.fetch(
            "EXPLAIN (ANALYZE, BUFFERS) " + rollup_sql(("clinic",)),
            "month",
            date(year, 1, 1),
            date(year + 1, 1, 1),
            None if clinic_id is None else [clinic_id],
            None,
            None,
            None,
            view.event_type,
        )
    finally:
        await conn.close()
    return "\n".join(r[0] for r in plan)


def measure(service: Service, options: Options, args: argparse.Namespace) -> list[Result]:
    owner = service.owner_url()
    ids = dict(asyncio.run(_clinic_ids(owner)))
    api = Api(service)
    results = []
    try:
        for view in VIEWS:
            clinic_id = None if view.clinic is None else ids[view.clinic]
            sql = raw_sql(options.year, clinic_id, view.event_type)
            params = api_params(view, options.year)
            log(f"view {view.name}: warming up (the first call refreshes the rollups)")
            first_ms, answer = api.rates(params)
            log(f"first API call: {first_ms:.0f} ms, {len(answer['rows']):,} rows")
            _, sql_rows = psql_run(owner, sql, output=True)
            equal = same_numbers(answer, sql_rows)
            log(f"the API's numbers {'equal' if equal else 'DIFFER FROM'} the SQL aggregate's")
            sql_ms: list[float] = []
            api_ms: list[float] = []
            for run in range(args.sql_runs):
                log(f"view {view.name}: run {run + 1}/{args.sql_runs}")
                sql_ms.append(psql_run(owner, sql, output=False)[0])
                api.reopen()
                for _ in range(
                    max(1, args.calls // args.sql_runs + (args.calls % args.sql_runs > run))
                ):
                    api_ms.append(api.rates(params)[0])
            plan = (
                asyncio.run(explain(owner, view, options.year, clinic_id)) if args.explain else ""
            )
            results.append(Result(view, len(answer["rows"]), sql_ms, api_ms, equal, plan))
    finally:
        api.close()
    return results


async def _clinic_ids(owner_url: str) -> list[tuple[str, int]]:
    conn = await asyncpg.connect(owner_url)
    try:
        return [(r["code"], r["id"]) for r in await conn.fetch("SELECT code, id FROM clinics")]
    finally:
        await conn.close()


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def render(generated: Generated, results: list[Result]) -> str:
    machine = machine_info()
    seconds = generated.index_analyze_seconds
    vacuum = f"{seconds:.0f} s" if seconds >= 0 else "not recorded"
    lines = [
        f"Safety-signal rates benchmark: {generated.clinics} clinics, "
        f"{generated.dosed_sessions:,} dosed sessions ({generated.sessions:,} in all), "
        f"{generated.reports:,} reports ({generated.linked_reports:,} linked), "
        f"{generated.alerts:,} alerts, year {generated.year}",
        f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory']}, "
        f"Python {machine['python']}, load before {machine['load_before']}",
        f"data set: built in {generated.total_seconds:.0f} s (COPY {generated.load_seconds:.0f} s, "
        f"VACUUM ANALYZE {vacuum}, cold refresh of "
        f"{generated.dirty_periods:,} clinic-periods {generated.refresh_seconds:.0f} s), "
        f"{generated.database_bytes / 1e9:.2f} GB",
        "",
        "| view | rows | SQL aggregate, median ms (runs) | API median ms | API p95 ms (calls) "
        "| SQL / API | same numbers |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        sql = statistics.median(r.sql_ms)
        api = statistics.median(r.api_ms)
        lines.append(
            f"| {r.view.name}: {r.view.description} | {r.rows:,} | {sql:,.0f} ({len(r.sql_ms)}) "
            f"| {api:,.1f} | {p95(r.api_ms):,.1f} ({len(r.api_ms)}) | {sql / api:,.1f}x "
            f"| {'yes' if r.equal else 'NO'} |"
        )
    goal = all(statistics.median(r.api_ms) < 200 for r in results)
    lines += [
        "",
        f"goal (the API under 200 ms for a dashboard view): {'met' if goal else 'NOT met'}",
    ]
    for r in results:
        if r.explain:
            lines += ["", f"EXPLAIN ANALYZE of the rollup query, view {r.view.name}:", r.explain]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    options, args = parse_args(argv)
    try:
        service, generated = build(options)
        try:
            results = measure(service, options, args)
        finally:
            service.stop()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(render(generated, results))
    return 0 if all(r.equal for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
