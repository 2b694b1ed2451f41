"""The goal-2 comparison of ``scripts/bench ingest-history``: medians of the rounds on each
database and their ratio, judged against 15 %."""

from __future__ import annotations

from bench.ingest import Measurement, Report, Row
from bench.ingest_history import compare


def _rounds(app_cpu: list[float], db_cpu: list[float], p99: list[float]) -> list[Measurement]:
    return [
        Measurement(
            rate=100.0, p50_ms=5.0, p99_ms=p, done=1000, failed=0, app_cpu_ms=a, db_cpu_ms=d
        )
        for a, d, p in zip(app_cpu, db_cpu, p99, strict=True)
    ]


def _report(rounds: list[Measurement]) -> Report:
    return Report(machine={}, settings={}, rows=[Row(8, rounds, [], [], 0.0)])


def test_each_figure_is_the_ratio_of_the_medians_judged_against_fifteen_percent() -> None:
    empty = _report(_rounds([5.0, 4.0, 9.0], [3.0, 3.0, 3.0], [100.0, 90.0, 300.0]))
    # Medians: service CPU 5.0 -> 5.5 (1.10), its PG 3.0 -> 3.6 (1.20), p99 100 -> 100.
    full = _report(_rounds([5.5, 5.0, 6.0], [3.6, 3.5, 9.0], [100.0, 95.0, 101.0]))

    text = compare(empty, full)

    assert "| 8 | service CPU ms/report | 5.00 (4.00-9.00) | 5.50 (5.00-6.00) | 1.10 |" in text
    assert (
        "| 8 | its PostgreSQL CPU ms/report | 3.00 (3.00-3.00) | 3.60 (3.50-9.00) | 1.20 |" in text
    )
    assert "| 8 | p99 ms | 100.0 (90.0-300.0) | 100.0 (95.0-101.0) | 1.00 |" in text
    assert "service CPU ms/report at 8: 1.10 ok" in text
    assert "its PostgreSQL CPU ms/report at 8: 1.20 MISSED" in text
    assert "p99 ms at 8: 1.00 ok" in text


def test_a_history_holding_earlier_runs_reports_in_the_windows_is_said() -> None:
    rounds = _rounds([5.0, 5.0, 5.0], [3.0, 3.0, 3.0], [100.0, 100.0, 100.0])
    full = _report(rounds)
    assert "WARNING" not in compare(_report(rounds), full)
    full.totals_before = {"reports": 2_000_000, "recent_reports": 7_000}
    assert "WARNING: the loaded clinics held 7000 reports of the last 31 days" in compare(
        _report(rounds), full
    )


def test_what_postgresql_did_per_report_is_compared_when_counted() -> None:
    rounds = _rounds([5.0, 5.0, 5.0], [3.0, 3.0, 3.0], [100.0, 100.0, 100.0])
    empty, full = _report(rounds), _report(rounds)
    assert "What PostgreSQL did" not in compare(empty, full)
    empty.postgres = {8: {"per_report": {"shared_blks_read": 0.5, "server_wal_fpi": 0.0}}}
    full.postgres = {8: {"per_report": {"shared_blks_read": 2.0, "server_wal_fpi": 1.5}}}
    text = compare(empty, full)
    assert "| 8 | buffers read (not in shared buffers) | 0.50 | 2.00 | 4.00 |" in text
    # No ratio to a zero.
    assert "| 8 | WAL full-page images | 0.00 | 1.50 | - |" in text
