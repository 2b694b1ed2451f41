"""Safety signals (issue 16): the p-chart's limits and the funnel's against numbers worked
by hand, the "rate above control limit" alert raised once per period (two runs at the
same moment, a run again later) and never below the minimum sessions (19 against 20),
clinic isolation and the audit entries of the new endpoints, and a read that recounts the
rollups never deadlocking with a write that holds its chain.

The sessions with an event (MOAA/S 1, rule:sedation-moaa-s-1) are made through the API;
the many sessions without one are copies of an API-made session inserted in SQL
(tests/helpers/sessions.py clone_sessions), their rollups marked dirty by the triggers.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from safetyreport import audit
from safetyreport.analytics import rollups
from safetyreport.analytics.charts import curve_sessions
from safetyreport.analytics.signals import RULE_ID, Signal, SignalRun, run_signals, shown_to
from safetyreport.audit import verify_chains
from safetyreport.db.embedded import app_url
from safetyreport.db.pool import create_pool, transaction
from safetyreport.settings import Settings
from tests.helpers.reports import audit_rows
from tests.helpers.sessions import Headers, clone_sessions, dosed_session, iso, post
from tests.helpers.web import form_login
from tests.helpers.world import World

CHART = "/api/v1/analytics/control-chart"
FUNNEL = "/api/v1/analytics/funnel"
RUN = "/api/v1/analytics/signals/run"
DEEP_SEDATION = "rule:sedation-moaa-s-1"
# Doses on a Wednesday of October 2026: in the month of October and the ISO week of
# 26 October, both complete on 4 November 2026 (the "today" of the signal runs).
AT = datetime(2026, 10, 28, 9, 0, tzinfo=UTC)
TODAY = date(2026, 11, 4)
OCTOBER = {"start": "2026-10-01", "end": "2026-11-01"}


@pytest.fixture
async def users(world: World) -> dict[str, Headers]:
    for code in ("C1", "C2", "C3"):
        await world.clinic(code)
    await world.user("nina", "nurse", ["C1", "C2", "C3"])
    await world.user("olga", "safety_officer", ["C1"])
    await world.user("aude", "auditor", ["C3"])
    await world.user("adam", "admin", ["C1", "C2", "C3"])
    names = ("nina", "olga", "aude", "adam")
    return {name: await world.login(name) for name in names}


@pytest.fixture
async def app_pool(settings: Settings, database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool as the service has one: the unprivileged application role."""
    pool = await create_pool(app_url(settings, database_url), max_size=4)
    yield pool
    await pool.close()


async def clinic_month(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nina: Headers,
    clinic: str,
    sessions: int,
    events: int,
) -> None:
    """``sessions`` sessions at ``clinic`` dosed from AT, ``events`` of them with a
    MOAA/S of 1 (through the API), the others quiet (one through the API, copied)."""
    for i in range(events):
        session_id = await dosed_session(
            client, nina, AT + timedelta(minutes=i), patient=f"PT-{clinic}-{i}", clinic=clinic
        )
        observed = await post(
            client,
            f"/api/v1/sessions/{session_id}/observations",
            nina,
            {"observed_at": iso(AT + timedelta(minutes=i + 20)), "moaa_s": 1},
        )
        assert observed.status_code == 201, observed.text
    quiet = await dosed_session(client, nina, AT, patient=f"PT-{clinic}-Q", clinic=clinic)
    await clone_sessions(db, quiet, sessions - events - 1)


async def chart(client: AsyncTestClient[Any], headers: Headers, **params: Any) -> dict[str, Any]:
    response = await client.get(
        CHART, params={"event_type": DEEP_SEDATION, **OCTOBER, **params}, headers=headers
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


# --- the p-chart and the funnel, by hand ----------------------------------------------


@pytest.fixture
async def worked(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    """October 2026: C1 100 sessions with 6 deeply sedated, C2 50 with 2, C3 20 with 8."""
    for clinic, sessions, events in (("C1", 100, 6), ("C2", 50, 2), ("C3", 20, 8)):
        await clinic_month(client, db, users["nina"], clinic, sessions, events)


# The worked example. p̄ = (6 + 2 + 8) / (100 + 50 + 20) = 16 / 170 = 0.0941176;
# p̄ (1 - p̄) = 0.0941176 * 0.9058824 = 0.0852595.
P_BAR = 16 / 170
# sigma_i = sqrt(0.0852595 / n_i): n 100 -> 0.0291992, n 50 -> 0.0412939, n 20 -> 0.0652915.
# C1: 9.4118 +- 3 * 2.91992 = 0.6520 .. 18.1715 per 100; rate 6.0: inside.
# C2: 9.4118 - 3 * 4.12939 < 0 -> 0 .. 21.7999; rate 4.0: inside.
# C3: 9.4118 - 3 * 6.52915 < 0 -> 0 .. 28.9992; rate 40.0: above, 20 sessions: a signal.
HAND_CHART = {
    "C1": (100, 6, 6.0, 0.6520, 18.1715, False),
    "C2": (50, 2, 4.0, 0.0, 21.7999, False),
    "C3": (20, 8, 40.0, 0.0, 28.9992, True),
}


async def test_the_p_chart_limits_are_the_worked_examples(
    client: AsyncTestClient[Any], users: dict[str, Headers], worked: None
) -> None:
    answer = await chart(client, users["adam"])
    assert (answer["sigma"], answer["min_sessions"]) == (3.0, 20)
    assert answer["centre"] == [
        {"period_start": "2026-10-01", "sessions": 170, "events": 16, "centre_per_100": 9.4118}
    ]
    points = {p["clinic"]: p for p in answer["points"]}
    assert set(points) == set(HAND_CHART)
    for clinic, (n, x, rate, lcl, ucl, signal) in HAND_CHART.items():
        point = points[clinic]
        assert point["period_start"] == "2026-10-01"
        assert (point["sessions"], point["events"], point["rate_per_100"]) == (n, x, rate)
        assert point["centre_per_100"] == 9.4118
        assert point["lcl_per_100"] == pytest.approx(lcl, abs=1e-3), clinic
        assert point["ucl_per_100"] == pytest.approx(ucl, abs=1e-3), clinic
        assert (point["above"], point["signal"]) == (signal, signal), clinic
        # The formula's own numbers, to the last digit.
        sigma = math.sqrt(P_BAR * (1 - P_BAR) / n)
        assert point["ucl_per_100"] == round(100 * min(1.0, P_BAR + 3 * sigma), 4)

    # By week: the same sessions, all in the week of 26 October.
    weekly = await chart(client, users["adam"], grain="week")
    assert {p["period_start"] for p in weekly["points"]} == {"2026-10-26"}
    # An event type nobody had: zero everywhere, never above.
    none = await chart(client, users["adam"], event_type="category:fall")
    assert {(p["events"], p["above"]) for p in none["points"]} == {(0, False)}


async def test_the_funnel_limits_are_the_worked_examples(
    client: AsyncTestClient[Any], users: dict[str, Headers], worked: None
) -> None:
    response = await client.get(
        FUNNEL,
        params={"event_type": DEEP_SEDATION, "period_start": "2026-10-17"},
        headers=users["adam"],
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    # The month holding the day asked for.
    assert (answer["period_start"], answer["sessions"], answer["events"]) == (
        "2026-10-01",
        170,
        16,
    )
    assert answer["centre_per_100"] == 9.4118
    # p̄ +- z sigma_i, z 1.959964 (95%) and 3.090232 (99.8%), sigma_i as in the chart:
    # C1: 9.4118 -+ 1.959964 * 2.91992 = 3.6888 .. 15.1347; -+ 3.090232 * 2.91992 =
    #     0.3885 .. 18.4350. C2: 1.3183 .. 17.5052; 0 .. 22.1726. C3: 0 .. 22.2087;
    #     0 .. 29.5883 (rate 40: above 99.8%).
    hand = {
        "C1": (100, 6.0, 3.6888, 15.1347, 0.3885, 18.4350, "inside"),
        "C2": (50, 4.0, 1.3183, 17.5052, 0.0, 22.1726, "inside"),
        "C3": (20, 40.0, 0.0, 22.2087, 0.0, 29.5883, "above_998"),
    }
    clinics = {c["clinic"]: c for c in answer["clinics"]}
    assert set(clinics) == set(hand)
    for clinic, (n, rate, l95, u95, l998, u998, position) in hand.items():
        row = clinics[clinic]
        assert (row["sessions"], row["rate_per_100"], row["position"]) == (n, rate, position)
        for name, value in (
            ("lower95_per_100", l95),
            ("upper95_per_100", u95),
            ("lower998_per_100", l998),
            ("upper998_per_100", u998),
        ):
            assert row[name] == pytest.approx(value, abs=1e-3), (clinic, name)
    # The curve, for drawing: from 1 to the largest clinic's sessions, narrowing.
    curve = answer["curve"]
    assert [c["sessions"] for c in curve] == curve_sessions(100)
    assert (curve[0]["sessions"], curve[-1]["sessions"]) == (1, 100)
    assert curve[-1]["upper95_per_100"] == clinics["C1"]["upper95_per_100"]
    # n 1: 9.4118 + 1.959964 * sqrt(0.0852595) * 100 = 66.6411.
    assert curve[0]["upper95_per_100"] == pytest.approx(66.6411, abs=1e-3)
    uppers = [c["upper998_per_100"] for c in curve]
    assert uppers == sorted(uppers, reverse=True)
    # Filtered as the charts are: every session here had 56 mg of esketamine.
    for params, sessions in (({"dose_band": "56 mg"}, 170), ({"drug": "ketamine_iv"}, 0)):
        filtered = await client.get(
            FUNNEL,
            params={"event_type": DEEP_SEDATION, "period_start": "2026-10-17", **params},
            headers=users["adam"],
        )
        assert filtered.status_code == 200, filtered.text
        assert filtered.json()["sessions"] == sessions, params


async def test_a_user_sees_their_clinics_points_against_the_networks_line_and_is_audited(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    users: dict[str, Headers],
    worked: None,
) -> None:
    answer = await chart(client, users["olga"])
    # The centre line is the network's; the points are C1's only.
    assert answer["centre"][0]["centre_per_100"] == 9.4118
    assert {p["clinic"] for p in answer["points"]} == {"C1"}
    funnel = await client.get(
        FUNNEL,
        params={"event_type": DEEP_SEDATION, "period_start": "2026-10-01"},
        headers=users["aude"],
    )
    assert funnel.status_code == 200, funnel.text
    assert [c["clinic"] for c in funnel.json()["clinics"]] == ["C3"]
    # Another clinic named is not found; a nurse may not read signals.
    for path in (CHART, FUNNEL):
        other = await client.get(
            path, params={"event_type": DEEP_SEDATION, "clinic": "C2"}, headers=users["olga"]
        )
        assert other.status_code == 404, other.text
        nurse = await client.get(path, params={"event_type": DEEP_SEDATION}, headers=users["nina"])
        assert nurse.status_code == 403, nurse.text
    bad = await client.get(
        CHART,
        params={"event_type": DEEP_SEDATION, "start": "2026-11-01", "end": "2026-10-01"},
        headers=users["olga"],
    )
    assert bad.status_code == 422, bad.text
    assert bad.json()["errors"][0]["rule"] == "after_start"

    charts = await audit_rows(db, "analytics.control_chart_read")
    assert [(e["chain"], e["actor"]) for e in charts] == [("clinic:C1", "olga")]
    assert charts[0]["details"]["event_type"] == DEEP_SEDATION
    funnels = await audit_rows(db, "analytics.funnel_read")
    assert [(e["chain"], e["actor"]) for e in funnels] == [("clinic:C3", "aude")]
    assert funnels[0]["details"]["period_start"] == "2026-10-01"
    assert (await verify_chains(db)).ok


# --- the signal alert -------------------------------------------------------------------


async def run(pool: asyncpg.Pool, settings: Settings) -> SignalRun:
    """One run as the background task runs it: the rollups recounted, then the check in
    a transaction of its own."""
    await rollups.refresh(pool)
    async with transaction(pool) as conn:
        return await run_signals(conn, settings.alerts, today=TODAY)


def sedation(run_: SignalRun) -> list[tuple[str, str, date]]:
    # Sessions made through the API and left open also raise session-open-too-long (the
    # app's background check), an event type of their own; only sedation is looked at.
    return sorted(
        (s.clinic, s.grain, s.period_start) for s in run_.raised if s.event_type == DEEP_SEDATION
    )


async def test_the_signal_alert_is_raised_once_per_period_and_not_below_the_minimum(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    users: dict[str, Headers],
    settings: Settings,
    database_url: str,
    app_pool: asyncpg.Pool,
) -> None:
    # p̄ = (2 + 6 + 6) / (200 + 20 + 19) = 14 / 239 = 0.0585774. UCL at 20 sessions:
    # 0.0585774 + 3 sqrt(0.0585774 * 0.9414226 / 20) = 0.2161 < 6/20 = 0.30: a signal.
    # At 19: 0.2202 < 6/19 = 0.3158: above, but 19 sessions are below the minimum (20).
    # C1 at 200: 0.1084 > 2/200.
    for clinic, sessions, events in (("C1", 200, 2), ("C2", 20, 6), ("C3", 19, 6)):
        await clinic_month(client, db, users["nina"], clinic, sessions, events)

    # Two processes' runs at the same moment.
    url = app_url(settings, database_url)
    pools = [await create_pool(url, max_size=2) for _ in range(2)]
    try:
        runs = await asyncio.gather(*(run(p, settings) for p in pools))
    finally:
        await asyncio.gather(*(p.close() for p in pools))
    raised = sorted(item for r in runs for item in sedation(r))
    assert raised == [
        ("C2", "month", date(2026, 10, 1)),
        ("C2", "week", date(2026, 10, 26)),
    ]
    assert (
        runs[0].periods
        == runs[1].periods
        == [
            {"grain": "month", "period_start": "2026-10-01"},
            {"grain": "week", "period_start": "2026-10-26"},
        ]
    )
    # Again later: nothing more.
    assert sedation(await run(app_pool, settings)) == []

    alerts = await db.fetch(
        "SELECT a.id, a.severity, a.status, a.group_by, c.code, e.details, e.actor"
        " FROM alerts a JOIN clinics c ON c.id = a.clinic_id"
        " JOIN alert_events e ON e.alert_id = a.id AND e.action = 'opened'"
        " WHERE a.rule_id = $1 AND e.details ->> 'event_type' = $2"
        " ORDER BY e.details ->> 'grain'",
        RULE_ID,
        DEEP_SEDATION,
    )
    assert [(a["code"], a["severity"], a["status"]) for a in alerts] == [("C2", "high", "open")] * 2
    month = alerts[0]["details"]
    assert (month["grain"], month["period_start"]) == ("month", "2026-10-01")
    assert (month["sessions"], month["events"], month["rate_per_100"]) == (20, 6, 30.0)
    assert month["ucl_per_100"] == pytest.approx(21.6108, abs=1e-3)
    assert month["chart"] == (
        "/analytics?event_type=rule%3Asedation-moaa-s-1&clinic=C2&grain=month"
    )
    assert month["chart_api"].startswith("/api/v1/analytics/control-chart?")
    assert alerts[0]["actor"] == "system:safety-signals"
    # Linked to no report or session reading.
    for alert in alerts:
        assert not await db.fetchval(
            "SELECT count(*) FROM alert_reports WHERE alert_id = $1", alert["id"]
        )
        assert not await db.fetchval(
            "SELECT count(*) FROM alert_session_readings WHERE alert_id = $1", alert["id"]
        )
    rows = await db.fetch(
        "SELECT c.code, s.alert_id FROM signal_alerts s JOIN clinics c ON c.id = s.clinic_id"
        " WHERE s.event_type = $1",
        DEEP_SEDATION,
    )
    assert sorted(r["code"] for r in rows) == ["C2", "C2"]
    assert {r["alert_id"] for r in rows} == {a["id"] for a in alerts}
    # Audited in the clinic's chain, as every alert's opening.
    opened = await db.fetch(
        "SELECT chain FROM audit_entries WHERE action = 'alert.opened'"
        " AND details ->> 'rule_id' = $1 AND details ->> 'event_type' = $2",
        RULE_ID,
        DEEP_SEDATION,
    )
    assert [e["chain"] for e in opened] == ["clinic:C2", "clinic:C2"]
    assert (await verify_chains(db)).ok
    # The officer sees it in the alert queue with its guidance.
    detail = await client.get(f"/api/v1/alerts/{alerts[0]['id']}", headers=users["adam"])
    assert detail.status_code == 200, detail.text
    assert "control chart" in detail.text
    # Its page renders, with no report or reading to show (the alert's link goes there).
    signed_in = await form_login(client, "adam")
    assert signed_in.status_code in {302, 303}, signed_in.text
    page = await client.get(f"/alerts/{alerts[0]['id']}")
    assert page.status_code == 200, page.text
    assert "Event rate above the control limit" in page.text

    # With a minimum of 19 sessions, C3's 19 is a signal too (and C2's stays raised).
    nineteen = replace(settings, alerts=replace(settings.alerts, signal_min_sessions=19))
    assert sedation(await run(app_pool, nineteen)) == [
        ("C3", "month", date(2026, 10, 1)),
        ("C3", "week", date(2026, 10, 26)),
    ]


async def test_an_admin_runs_the_check_now_and_the_run_is_audited(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    refused = await client.post(RUN, headers=users["olga"])
    assert refused.status_code == 403, refused.text
    response = await client.post(RUN, headers=users["adam"])
    assert response.status_code == 200, response.text
    answer = response.json()
    assert [p["grain"] for p in answer["periods"]] == ["month", "week"]
    assert (answer["min_sessions"], answer["raised"], answer["raised_total"]) == (20, [], 0)
    entries = await audit_rows(db, "analytics.signals_run")
    assert [(e["chain"], e["actor"]) for e in entries] == [("global", "adam")]
    assert entries[0]["details"]["periods"] == answer["periods"]


def test_a_run_shows_an_admin_the_signals_of_their_clinics_only() -> None:
    def signal(clinic: str) -> Signal:
        return Signal(
            clinic=clinic,
            event_type=DEEP_SEDATION,
            grain="month",
            period_start=date(2026, 10, 1),
            sessions=20,
            events=6,
            rate_per_100=30.0,
            centre_per_100=5.8577,
            ucl_per_100=21.6108,
        )

    whole = SignalRun(
        periods=[], min_sessions=20, raised=[signal("C1"), signal("C2")], raised_total=2
    )
    assert shown_to(whole, None) == whole
    mine = shown_to(whole, {"C2", "C3"})
    assert ([s.clinic for s in mine.raised], mine.raised_total) == (["C2"], 2)


async def test_a_read_that_recounts_never_deadlocks_with_a_write_holding_its_chain(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    users: dict[str, Headers],
    database_url: str,
    app_pool: asyncpg.Pool,
) -> None:
    """A write locks its clinic's audit chain, then its trigger marks the period dirty. A
    read that took (deleted) that mark and then, in the same transaction, appended its
    audit entry to the chain, waited on the write while the write waited on it. The
    recount now commits in a transaction of its own before the read's (which takes the
    chain): it waits on nothing, and the write waits on it at most until it commits."""
    await dosed_session(client, users["nina"], AT, patient="PT-W", clinic="C1")
    clinic_id = await db.fetchval("SELECT id FROM clinics WHERE code = 'C1'")
    writer = await asyncpg.connect(database_url)

    async def read() -> int:
        recounted = await rollups.refresh(app_pool)
        async with transaction(app_pool) as conn:
            # What the read's audit entry does next: take the clinic's chain.
            await audit.lock_chains(conn, ["C1"])
        return recounted

    try:
        async with writer.transaction():
            await writer.execute(
                "SELECT chain FROM audit_chains WHERE chain = 'clinic:C1' FOR UPDATE"
            )
            reading = asyncio.create_task(read())
            await asyncio.sleep(0.5)
            # The write marks the period it touches, holding its chain.
            await writer.execute("SELECT analytics_mark($1, $2)", clinic_id, AT)
        assert await asyncio.wait_for(reading, timeout=30) > 0
    finally:
        await writer.close()
    # The write's mark is there for the next read, which recounts it.
    assert await db.fetchval("SELECT count(*) FROM analytics_dirty WHERE clinic_id = $1", clinic_id)
    await rollups.refresh(app_pool)
    sessions = await db.fetchval(
        "SELECT sum(sessions) FROM analytics_sessions WHERE clinic_id = $1 AND grain = 'month'",
        clinic_id,
    )
    assert sessions == 1


async def test_a_disabled_rule_raises_no_alert_and_its_signal_is_not_looked_at_again(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    users: dict[str, Headers],
    settings: Settings,
    app_pool: asyncpg.Pool,
) -> None:
    for clinic, sessions, events in (("C1", 200, 2), ("C2", 20, 6)):
        await clinic_month(client, db, users["nina"], clinic, sessions, events)
    await db.execute("UPDATE alert_rules SET enabled = false WHERE id = $1", RULE_ID)
    found = await run(app_pool, settings)
    assert sedation(found) == [
        ("C2", "month", date(2026, 10, 1)),
        ("C2", "week", date(2026, 10, 26)),
    ]
    assert {s.alert_id for s in found.raised} == {None}
    assert not await db.fetchval("SELECT count(*) FROM alerts WHERE rule_id = $1", RULE_ID)
    # Enabled again: the signals already claimed are not raised late.
    await db.execute("UPDATE alert_rules SET enabled = true WHERE id = $1", RULE_ID)
    assert sedation(await run(app_pool, settings)) == []
