"""The ingest benchmark's PostgreSQL profile (bench/pg_stats.py): counters between two
snapshots of each slice, summed over slices and divided by the reports stored; a nested
statement's counters listed but not counted twice in the totals."""

from __future__ import annotations

import pytest

from bench import pg_stats
from bench.ingest import parse_args


def counters(**values: float) -> dict[str, float]:
    return {name: values.get(name, 0.0) for name in pg_stats.COUNTERS}


def server(**values: float) -> dict[str, float]:
    return {name: values.get(name, 0.0) for name in pg_stats.SERVER}


INSERT = "INSERT INTO reports VALUES ($1)"
MARK = "SELECT analytics_mark($1, $2)"


def test_a_profile_counts_what_each_slice_added_per_report() -> None:
    first = pg_stats.Snapshot(
        server=server(wal_bytes=1000, wal_fpi=5),
        statements={(1, True): (INSERT, counters(calls=10, total_exec_time=4.0))},
    )
    second = pg_stats.Snapshot(
        server=server(wal_bytes=9000, wal_fpi=9),
        statements={
            (1, True): (INSERT, counters(calls=50, total_exec_time=20.0, shared_blks_read=8)),
            # Run inside the insert's trigger: its time is also the insert's.
            (2, False): (MARK, counters(calls=40, total_exec_time=6.0)),
        },
    )
    third = pg_stats.Snapshot(
        server=server(wal_bytes=9000, wal_fpi=9),
        statements={
            (1, True): (INSERT, counters(calls=60, total_exec_time=24.0, shared_blks_read=8)),
            (2, False): (MARK, counters(calls=40, total_exec_time=6.0)),
        },
    )
    profile = pg_stats.Profile()
    profile.add(first, second, reports=40)
    profile.add(second, third, reports=10)
    totals = profile.per_report()
    assert totals["calls"] == pytest.approx(1.0)  # 50 top-level calls, 50 reports
    assert totals["total_exec_time"] == pytest.approx(20.0 / 50)  # the mark not added
    assert totals["shared_blks_read"] == pytest.approx(8 / 50)
    assert totals["server_wal_bytes"] == pytest.approx(8000 / 50)
    assert totals["server_wal_fpi"] == pytest.approx(4 / 50)
    [insert, mark] = profile.top()
    assert (insert.query, insert.toplevel) == (INSERT, True)
    assert insert.per_report["total_exec_time"] == pytest.approx(20.0 / 50)
    # A statement first seen in a later snapshot counts from zero; one that did not run
    # in a slice adds nothing.
    assert (mark.query, mark.toplevel) == (MARK, False)
    assert mark.per_report["calls"] == pytest.approx(40 / 50)
    text = pg_stats.render({8: profile.summary()})
    assert "at 8 connection(s), 50 reports" in text
    assert "| nested | SELECT analytics_mark" in text


def test_the_settings_of_a_run_are_named_values() -> None:
    options = parse_args(["--statements", "--pg-setting", "shared_buffers=2GB"])
    assert options.statements
    assert options.server_settings == {"shared_buffers": "2GB"}
    with pytest.raises(SystemExit):
        parse_args(["--pg-setting", "shared_buffers"])
    with pytest.raises(SystemExit):
        parse_args(["--pg-setting", "x; DROP TABLE reports=1"])
