"""What PostgreSQL did for the service's reports, per report: its statements
(pg_stat_statements), the buffers they touched, the WAL written and the checkpoints'
writes (issue 17, goal 2: where PostgreSQL's CPU per report goes with six years stored).

``scripts/bench ingest --statements`` (and ``ingest-history --statements``) turns it on:
the embedded server is restarted with pg_stat_statements loaded (``ALTER SYSTEM``, reset
at the end of the run, so the data folder keeps no setting of the benchmark's), and the
counters are read before and after each wrk slice, when only the service writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg

# pg_stat_statements with the statements run inside functions and triggers too (the
# report's rules and the rollups' marks), and I/O timing.
STATEMENT_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "pg_stat_statements.max": "10000",
    "track_io_timing": "on",
}
# Counters of a statement, summed over its calls (pg_stat_statements' column names).
COUNTERS = (
    "calls",
    "total_exec_time",
    "rows",
    "shared_blks_hit",
    "shared_blks_read",
    "shared_blks_dirtied",
    "shared_blks_written",
    "wal_records",
    "wal_fpi",
    "wal_bytes",
)
# The server's counters, per report (the WAL of every process, the checkpointer's and
# the background writer's writes, the service database's buffer hits and reads).
SERVER = (
    "wal_records",
    "wal_fpi",
    "wal_bytes",
    "checkpoints",
    "checkpoint_buffers",
    "bgwriter_buffers",
    "db_blks_hit",
    "db_blks_read",
)
_SERVER_QUERY = """
SELECT w.wal_records, w.wal_fpi, w.wal_bytes::bigint,
       c.num_timed + c.num_requested AS checkpoints, c.buffers_written AS checkpoint_buffers,
       b.buffers_clean AS bgwriter_buffers,
       d.blks_hit AS db_blks_hit, d.blks_read AS db_blks_read
FROM pg_stat_wal w, pg_stat_checkpointer c, pg_stat_bgwriter b, pg_stat_database d
WHERE d.datname = current_database()
"""
# Top-level statements only in the totals (a nested one's counters are also its
# caller's); nested ones are listed beside them.
_STATEMENTS_QUERY = f"""
SELECT queryid, toplevel, query, {", ".join(COUNTERS)}
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%pg_stat_wal%'
"""  # noqa: S608 (the module's own column names)


@dataclass
class Snapshot:
    server: dict[str, float]
    # (queryid, toplevel) -> (query text, counters)
    statements: dict[tuple[int, bool], tuple[str, dict[str, float]]]


async def snapshot(conn: asyncpg.Connection[Any]) -> Snapshot:
    server = await conn.fetchrow(_SERVER_QUERY)
    assert server is not None
    rows = await conn.fetch(_STATEMENTS_QUERY)
    return Snapshot(
        server={k: float(server[k]) for k in SERVER},
        statements={
            (r["queryid"], r["toplevel"]): (r["query"], {k: float(r[k]) for k in COUNTERS})
            for r in rows
        },
    )


@dataclass
class StatementCost:
    query: str
    toplevel: bool
    # Each counter per report.
    per_report: dict[str, float]


@dataclass
class Profile:
    """The counters between snapshots, summed over slices, and the reports they stored."""

    reports: int = 0
    server: dict[str, float] = field(default_factory=dict)
    _sums: dict[tuple[int, bool], tuple[str, dict[str, float]]] = field(default_factory=dict)

    def add(self, before: Snapshot, after: Snapshot, reports: int) -> None:
        self.reports += reports
        for name in SERVER:
            self.server[name] = (
                self.server.get(name, 0.0) + after.server[name] - before.server[name]
            )
        for key, (query, counters) in after.statements.items():
            earlier = before.statements.get(key, (query, {}))[1]
            grown = {k: v - earlier.get(k, 0.0) for k, v in counters.items()}
            if grown["calls"] <= 0:
                continue
            sums = self._sums.setdefault(key, (query, dict.fromkeys(COUNTERS, 0.0)))[1]
            for k, v in grown.items():
                sums[k] += v

    def per_report(self) -> dict[str, float]:
        """The server's counters and the top-level statements' sums, per report."""
        if not self.reports:
            return {}
        totals = {f"server_{k}": v / self.reports for k, v in self.server.items()}
        for k in COUNTERS:
            summed = sum(sums[k] for (_, top), (_, sums) in self._sums.items() if top)
            totals[k] = summed / self.reports
        return totals

    def top(self, count: int = 12) -> list[StatementCost]:
        """The statements that took the most execution time per report."""
        if not self.reports:
            return []
        costs = [
            StatementCost(
                query=" ".join(text.split())[:160],
                toplevel=top,
                per_report={k: v / self.reports for k, v in sums.items()},
            )
            for (_, top), (text, sums) in self._sums.items()
        ]
        costs.sort(key=lambda c: c.per_report["total_exec_time"], reverse=True)
        return costs[:count]

    def summary(self) -> dict[str, Any]:
        """What the report keeps (JSON): the reports, the totals and the top statements."""
        return {
            "reports": self.reports,
            "checkpoints": self.server.get("checkpoints", 0.0),
            "per_report": self.per_report(),
            "top": [asdict(c) for c in self.top()],
        }


def render(summaries: dict[int, dict[str, Any]]) -> str:
    """Per concurrency: the per-report totals, then the statements costing the most."""
    lines = ["", "PostgreSQL per report (pg_stat_statements, pg_stat_wal, checkpointer):"]
    for connections, summary in summaries.items():
        totals = summary["per_report"]
        if not totals:
            continue
        lines.append("")
        lines.append(
            f"at {connections} connection(s), {summary['reports']} reports: "
            f"exec {totals['total_exec_time']:.2f} ms, statements {totals['calls']:.1f},"
            f" buffers hit {totals['shared_blks_hit']:.0f} read {totals['shared_blks_read']:.1f}"
            f" dirtied {totals['shared_blks_dirtied']:.1f}"
            f" written {totals['shared_blks_written']:.2f};"
            f" WAL {totals['server_wal_bytes'] / 1024:.1f} KiB"
            f" ({totals['server_wal_fpi']:.2f} full pages, {totals['server_wal_records']:.0f}"
            f" records); checkpoint writes {totals['server_checkpoint_buffers']:.2f},"
            f" bgwriter {totals['server_bgwriter_buffers']:.2f}"
            f" (checkpoints in all: {summary['checkpoints']:.0f})"
        )
        lines.append("")
        lines.append(
            "| ms | calls | hit | read | dirtied | written | WAL full pages | top | statement |"
        )
        lines.append("|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for cost in summary["top"]:
            p = cost["per_report"]
            query = cost["query"].replace("|", "\\|")
            lines.append(
                f"| {p['total_exec_time']:.3f} | {p['calls']:.2f} | {p['shared_blks_hit']:.1f}"
                f" | {p['shared_blks_read']:.2f} | {p['shared_blks_dirtied']:.2f}"
                f" | {p['shared_blks_written']:.2f} | {p['wal_fpi']:.2f}"
                f" | {'yes' if cost['toplevel'] else 'nested'} | {query} |"
            )
    return "\n".join(lines)
