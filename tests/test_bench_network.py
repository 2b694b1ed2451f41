"""The benchmark's network generator (bench/network.py), tiny: two clinics and 400
sessions copied into the test's database, the rollups rebuilt, and the rates API's
numbers equal to the plain SQL aggregate the benchmark compares it with (bench/rates.py)
for both dashboard views."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bench import network
from bench.network import ADMIN, Options, populate
from bench.rates import VIEWS, api_params, raw_sql
from tests.helpers.world import World


async def test_generated_network_rates_equal_the_raw_aggregate(
    world: World, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    await world.user(ADMIN, "admin", all_clinics=True)
    options = Options(clinics=2, sessions=400, reports=80, year=2025, seed=16, root=tmp_path)
    generated = await populate(db, options)
    assert generated.dosed_sessions == 400
    assert generated.sessions > 400  # and about 1% never dosed
    assert generated.reports == 80
    assert 0 < generated.linked_reports < 80
    assert generated.alert_reports > 0
    assert generated.alert_session_readings > 0
    assert await db.fetchval("SELECT count(*) FROM analytics_dirty") == 0
    # The triggers are on again after the load.
    assert not await db.fetchval(
        "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgenabled = 'D'"
    )

    headers = await world.login(ADMIN)
    ids = {r["code"]: r["id"] for r in await db.fetch("SELECT code, id FROM clinics")}
    for view in VIEWS:
        response = await world.client.get(
            "/api/v1/analytics/rates", params=tuple(api_params(view, 2025)), headers=headers
        )
        assert response.status_code == 200, response.text
        from_api = {
            (r["period_start"], r["clinic"], r["event_type"]): (
                r["sessions"],
                r["sessions_with_event"],
                r["unlinked_reports"],
            )
            for r in response.json()["rows"]
        }
        clinic_id = None if view.clinic is None else ids[view.clinic]
        rows = await db.fetch(raw_sql(2025, clinic_id, view.event_type))
        from_sql = {
            (r["period_start"].isoformat(), r["clinic"], r["event_type"]): (
                r["sessions"],
                r["events"],
                r["unlinked"],
            )
            for r in rows
        }
        assert from_api == from_sql, view.name
        assert sum(n for _, n, _ in from_api.values()) > 0, view.name


async def test_batches_are_copied_after_the_rows_they_refer_to(
    world: World, db: asyncpg.Connection[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With batches far smaller than the tables (as at 2,000,000 reports against batches
    of 100,000), a batch of alert links is copied while its alerts and reports are still
    pending: they must be copied first."""
    monkeypatch.setattr(network, "BATCH", 7)
    await world.user(ADMIN, "admin", all_clinics=True)
    options = Options(clinics=2, sessions=400, reports=200, year=2025, seed=17, root=tmp_path)
    loaded = await network.load(db, options)
    assert loaded["reports"] == 200
    assert loaded["alert_reports"] > 7
    assert loaded["alert_session_readings"] > 0
    assert await db.fetchval("SELECT count(*) FROM alert_reports") == loaded["alert_reports"]
