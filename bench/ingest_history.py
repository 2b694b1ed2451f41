"""Ingest with six years of history against an empty database (issue 17, goal 2).

    scripts/bench ingest-history [--history-first] [ingest options] [history sizes]

runs the ingest benchmark (``bench/ingest.py``, every option of ``scripts/bench ingest``
accepted) twice in one run: on a fresh, empty data folder and on the six-year data set
of ``bench/history.py`` (built first if missing: 2,000,000 reports and 5,000,000 audit
entries by default; ``--clinics``, ``--reports``, ``--audit``... choose another one).
The load goes to ``--load-clinics`` of the history's clinics, whose chains and reports
already hold years of rows. Then it prints, per concurrency, the medians over the rounds
(and their spread) of the service's and its PostgreSQL's CPU per report and of the p99
latency on each database, with the ratio history / empty of each median. The goal: each
ratio at most 1.15.

The empty database runs first unless ``--history-first``. Each run adds its reports to
the history folder, dated today: a clinic that took an earlier run's load then holds
them in its pattern windows (up to 30 days), which the empty database's clinics never
do. So the load goes to the history's clinics with no report of the last 31 days first
(200 clinics: 25 runs of 8), and the comparison warns when a loaded clinic had some.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from bench import history
from bench.common import BenchError, log
from bench.ingest import IngestBench, Report, load_tools, median_of, render, spread
from bench.ingest import parse_args as parse_ingest_args

GOAL_RATIO = 1.15
# (figure, its column heading, digits shown)
FIGURES = (
    ("app_cpu_ms", "service CPU ms/report", 2),
    ("db_cpu_ms", "its PostgreSQL CPU ms/report", 2),
    ("p99_ms", "p99 ms", 1),
)


def compare(empty: Report, full: Report) -> str:
    """Per concurrency and figure: empty, history (median, spread) and their ratio."""
    lines = [
        "",
        "Ingest with history against an empty database: medians of the rounds (min-max),"
        " ratio history / empty of the medians",
        "",
        "| connections | figure | empty | history | history / empty |",
        "|---:|---|---:|---:|---:|",
    ]
    verdicts = []
    for before, after in zip(empty.rows, full.rows, strict=True):
        for name, heading, digits in (("rate", "reports/s", 0), *FIGURES):
            base = median_of(before.service, name)
            ratio = median_of(after.service, name) / base if base else 0.0
            lines.append(
                f"| {before.connections} | {heading} | {spread(before.service, name, digits)}"
                f" | {spread(after.service, name, digits)} | {ratio:.2f} |"
            )
            if name != "rate":
                ok = ratio <= GOAL_RATIO
                verdicts.append(
                    f"{heading} at {before.connections}: {ratio:.2f} {'ok' if ok else 'MISSED'}"
                )
    lines += compare_postgres(empty, full)
    lines.append("")
    lines.append(f"history before the run: {full.totals_before}")
    recent = full.totals_before.get("recent_reports", 0)
    if recent:
        lines.append(
            f"WARNING: the loaded clinics held {recent} reports of the last 31 days (earlier"
            " runs' load): the pattern rules' windows read them, and the empty database has"
            " none, so this run measures a busier month, not the years. Build a fresh"
            " folder to compare."
        )
    lines.append(f"goal (each ratio <= {GOAL_RATIO}): " + "; ".join(verdicts))
    return "\n".join(lines)


# (per-report figure of bench/pg_stats.py, its heading, digits shown)
POSTGRES_FIGURES = (
    ("total_exec_time", "statements' execution ms", 3),
    ("shared_blks_hit", "buffers hit", 0),
    ("shared_blks_read", "buffers read (not in shared buffers)", 2),
    ("shared_blks_dirtied", "buffers dirtied", 2),
    ("shared_blks_written", "buffers written by the backends", 2),
    ("server_wal_bytes", "WAL bytes", 0),
    ("server_wal_fpi", "WAL full-page images", 2),
    ("server_checkpoint_buffers", "checkpoint writes", 2),
)


def compare_postgres(empty: Report, full: Report) -> list[str]:
    """With --statements: what PostgreSQL did per report on each database."""
    if not (empty.postgres and full.postgres):
        return []
    lines = [
        "",
        "What PostgreSQL did per report (pg_stat_statements and the server's counters,"
        " summed over the rounds)",
        "",
        "| connections | per report | empty | history | history / empty |",
        "|---:|---|---:|---:|---:|",
    ]
    for connections, before in empty.postgres.items():
        after = full.postgres.get(connections)
        if after is None:
            continue
        for name, heading, digits in POSTGRES_FIGURES:
            base = before["per_report"].get(name, 0.0)
            value = after["per_report"].get(name, 0.0)
            ratio = f"{value / base:.2f}" if base else "-"
            lines.append(
                f"| {connections} | {heading} | {base:.{digits}f} | {value:.{digits}f} | {ratio} |"
            )
    return lines


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="scripts/bench ingest-history",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Every other option is scripts/bench ingest's (see its --help).",
    )
    history.add_arguments(parser)
    parser.add_argument(
        "--history-first", action="store_true", help="run on the history before the empty one"
    )
    # The history's --clinics is the data set's; the load's clinics are ingest's.
    parser.add_argument(
        "--load-clinics", type=int, default=8, help="clinics taking the load (ingest's --clinics)"
    )
    return parser.parse_known_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = parse_args(argv)
    options = parse_ingest_args([*rest, "--clinics", str(args.load_clinics)])
    if options.data_folder is not None:
        print("error: the history folder is this benchmark's; no --data-folder", file=sys.stderr)
        return 2
    tools = load_tools()
    if tools is None:
        return 2
    wrk, pgbench = tools
    try:
        folder = history.history_folder(args.data_root, history.options_from(args))
        data_dir = (folder / "data").resolve()
        runs = [("empty", None), ("history", data_dir)]
        if args.history_first:
            runs.reverse()
        reports: dict[str, Report] = {}
        for name, data_folder in runs:
            log(f"ingest on the {name} database")
            workdir = Path(tempfile.mkdtemp(prefix=f"safetyreport-bench-{name}-"))
            try:
                bench = IngestBench(
                    replace(options, data_folder=data_folder), workdir, wrk, pgbench
                )
                reports[name] = bench.run()
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, _ in runs:
        print(f"\n== on the {name} database ==")
        print(render(reports[name]))
    print(compare(reports["empty"], reports["history"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
