"""Event rates per 100 treatment sessions (issue 16): a hand-counted data set (zero
events, a clinic with one session, a session with an event twice counted once, a report
linked to no session beside the rate), the Wilson interval against SciPy's, the CSV
holding the JSON's numbers, the rollups equal to a recount after concurrent writes,
clinic isolation and the audit entries."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient
from scipy.stats import binomtest  # type: ignore[import-untyped]

from safetyreport.analytics.rates import wilson_interval
from tests.helpers.reports import (
    adverse_report,
    audit_rows,
    create_report,
    new_key,
    send_concurrently,
)
from tests.helpers.sessions import SESSIONS, Headers, dosed_session, iso, post
from tests.helpers.world import World

RATES = "/api/v1/analytics/rates"
DEEP_SEDATION = "rule:sedation-moaa-s-1"
# A month wholly in the past, so every dose and report in it is accepted.
MONTH = date(2026, 10, 1)
AT = datetime(2026, 10, 14, 9, 0, tzinfo=UTC)


@pytest.fixture
async def users(world: World) -> dict[str, Headers]:
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("nina", "nurse", ["C1"])
    await world.user("nora", "nurse", ["C2"])
    await world.user("olga", "safety_officer", ["C1"])
    await world.user("aude", "auditor", ["C1"])
    await world.user("adam", "admin", ["C1", "C2"])
    names = ("nina", "nora", "olga", "aude", "adam")
    return {name: await world.login(name) for name in names}


async def observe(
    client: AsyncTestClient[Any], headers: Headers, session_id: str, at: datetime, **vitals: Any
) -> None:
    response = await post(
        client, f"{SESSIONS}/{session_id}/observations", headers, {"observed_at": iso(at), **vitals}
    )
    assert response.status_code == 201, response.text


async def rates(
    client: AsyncTestClient[Any], headers: Headers, **params: Any
) -> list[dict[str, Any]]:
    response = await client.get(
        RATES, params={"start": "2026-10-01", "end": "2026-11-01", **params}, headers=headers
    )
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["rows"]
    return rows


def row_of(rows: list[dict[str, Any]], clinic: str, event_type: str) -> dict[str, Any]:
    [row] = [r for r in rows if r["clinic"] == clinic and r["event_type"] == event_type]
    return row


async def hand_counted(client: AsyncTestClient[Any], users: dict[str, Headers]) -> None:
    """C1: four esketamine sessions in October; two deeply sedated (one of them twice),
    one with a fall reported against it, one with nothing; a fall reported at C1 with no
    session. C2: one session, nothing in it."""
    nina = users["nina"]
    sedated = await dosed_session(client, nina, AT, patient="PT-A")
    await observe(client, nina, sedated, AT + timedelta(minutes=20), moaa_s=1)
    twice = await dosed_session(client, nina, AT + timedelta(days=1), patient="PT-B")
    for minutes in (15, 25):
        await observe(client, nina, twice, AT + timedelta(days=1, minutes=minutes), moaa_s=1)
    fell = await dosed_session(client, nina, AT + timedelta(days=2), patient="PT-C")
    await create_report(
        client,
        nina,
        adverse_report(
            patient_ref="PT-C", session_id=fell, occurred_at=iso(AT + timedelta(days=2, hours=1))
        ),
    )
    await dosed_session(client, nina, AT + timedelta(days=3), patient="PT-D")
    await create_report(
        client, nina, adverse_report(patient_ref="PT-E", occurred_at=iso(AT + timedelta(days=4)))
    )
    await dosed_session(client, users["nora"], AT, patient="PT-Z", clinic="C2")


async def test_rates_on_a_hand_counted_data_set(
    client: AsyncTestClient[Any], users: dict[str, Headers]
) -> None:
    await hand_counted(client, users)
    rows = await rates(client, users["adam"], group="clinic")
    assert {r["period_start"] for r in rows} == {"2026-10-01"}

    sedation = row_of(rows, "C1", DEEP_SEDATION)
    # Two sessions of four: the twice-sedated session counts once.
    assert (sedation["sessions"], sedation["sessions_with_event"]) == (4, 2)
    assert sedation["rate_per_100"] == 50.0
    assert sedation["unlinked_reports"] == 0
    fall = row_of(rows, "C1", "category:fall")
    assert (fall["sessions"], fall["sessions_with_event"], fall["unlinked_reports"]) == (4, 1, 1)
    assert fall["rate_per_100"] == 25.0
    assert row_of(rows, "C1", "kind:adverse_event")["sessions_with_event"] == 1
    # The clinic with one session and no event: zero, with its interval.
    quiet = row_of(rows, "C2", DEEP_SEDATION)
    assert (quiet["sessions"], quiet["sessions_with_event"], quiet["rate_per_100"]) == (1, 0, 0.0)
    assert quiet["ci95_low_per_100"] == 0.0
    assert quiet["ci95_high_per_100"] == pytest.approx(79.3450, abs=1e-3)
    for row in rows:
        assert row["sessions_with_event"] <= row["sessions"]

    # The network as a whole (no clinic): summed, with the same event types.
    network = await rates(client, users["adam"], group="drug")
    [total] = [r for r in network if r["event_type"] == DEEP_SEDATION]
    assert (total["sessions"], total["sessions_with_event"], total["clinic"]) == (5, 2, None)
    assert total["drug"] == "esketamine_nasal"
    # By dose band: every session had 56 mg.
    bands = await rates(client, users["adam"], group="dose_band", event_type=DEEP_SEDATION)
    assert [(r["dose_band"], r["sessions"]) for r in bands] == [("56 mg", 5)]
    by_week = await rates(client, users["adam"], grain="week", event_type=DEEP_SEDATION)
    assert sum(r["sessions"] for r in by_week) == 5
    assert sum(r["sessions_with_event"] for r in by_week) == 2


@pytest.mark.parametrize(("events", "sessions"), [(0, 1), (1, 1), (2, 4), (3, 250), (0, 20)])
def test_the_wilson_interval_is_scipys(events: int, sessions: int) -> None:
    interval = wilson_interval(events, sessions)
    assert interval is not None
    expected = binomtest(events, sessions).proportion_ci(confidence_level=0.95, method="wilson")
    assert interval == pytest.approx((expected.low, expected.high), abs=1e-9)
    assert wilson_interval(0, 0) is None


async def test_the_csv_holds_the_jsons_numbers(
    client: AsyncTestClient[Any], users: dict[str, Headers]
) -> None:
    await hand_counted(client, users)
    rows = await rates(client, users["adam"])
    response = await client.get(
        RATES,
        params={"start": "2026-10-01", "end": "2026-11-01", "format": "csv"},
        headers=users["adam"],
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    parsed = list(csv.DictReader(io.StringIO(response.text)))
    assert len(parsed) == len(rows)
    for json_row, csv_row in zip(rows, parsed, strict=True):
        for name, value in json_row.items():
            assert csv_row[name] == ("" if value is None else str(value)), name


async def test_a_user_sees_the_rates_of_their_clinics_only_and_the_read_is_audited(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    await hand_counted(client, users)
    rows = await rates(client, users["aude"], group="clinic")
    assert {r["clinic"] for r in rows} == {"C1"}
    assert (
        await client.get(RATES, params={"clinic": "C2"}, headers=users["olga"])
    ).status_code == 404
    assert (await client.get(RATES, headers=users["nina"])).status_code == 403
    entries = await audit_rows(db, "analytics.rates_read")
    assert [(e["chain"], e["actor"]) for e in entries] == [("clinic:C1", "aude")]
    assert entries[0]["details"]["grain"] == "month"
    bad = await client.get(RATES, params={"grain": "year"}, headers=users["olga"])
    assert bad.status_code in {400, 422}, bad.text


async def recount(db: asyncpg.Connection[Any]) -> dict[tuple[str, str], tuple[int, int]]:
    """(clinic, event type) -> (sessions, sessions with the event) for October, counted
    from the rows themselves, apart from the rollups and their SQL."""
    sessions = await db.fetch(
        "SELECT s.id, c.code FROM treatment_sessions s JOIN clinics c ON c.id = s.clinic_id"
        " WHERE s.dosed_at >= '2026-10-01' AND s.dosed_at < '2026-11-01'"
    )
    totals: dict[str, int] = {}
    events: dict[tuple[str, str], set[uuid.UUID]] = {}
    for session in sessions:
        totals[session["code"]] = totals.get(session["code"], 0) + 1
        rules = await db.fetch(
            "SELECT a.rule_id FROM alert_session_readings r JOIN alerts a ON a.id = r.alert_id"
            " WHERE r.session_id = $1"
            " UNION SELECT a.rule_id FROM report_versions v"
            " JOIN reports rep ON rep.id = v.report_id AND rep.current_version = v.version"
            " JOIN alert_reports ar ON ar.report_id = rep.id JOIN alerts a ON a.id = ar.alert_id"
            " WHERE v.body ->> 'session_id' = $1::text",
            session["id"],
        )
        for rule in rules:
            events.setdefault((session["code"], f"rule:{rule['rule_id']}"), set()).add(
                session["id"]
            )
    return {(clinic, event): (totals[clinic], len(ids)) for (clinic, event), ids in events.items()}


async def test_the_rollups_equal_a_recount_after_concurrent_writes(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    nina, nora = users["nina"], users["nora"]
    sessions = [
        (
            await dosed_session(
                client, headers, AT + timedelta(hours=i), patient=f"PT-{i}", clinic=clinic
            ),
            headers,
        )
        for i, (headers, clinic) in enumerate(
            [(nina, "C1"), (nina, "C1"), (nina, "C1"), (nora, "C2"), (nora, "C2"), (nina, "C1")]
        )
    ]
    # A first read makes the rollups; the writes after it must reach them.
    await rates(client, users["adam"])
    requests = [
        httpx.Request(
            "POST",
            f"http://testserver.local{SESSIONS}/{session_id}/observations",
            json={"observed_at": iso(AT + timedelta(hours=i, minutes=m)), "moaa_s": moaa_s},
            headers={**headers, "Idempotency-Key": new_key()},
        )
        for i, (session_id, headers) in enumerate(sessions)
        for m, moaa_s in ((10, 1), (20, 3), (30, 0))
        if (i + m) % 3
    ]
    answers = await send_concurrently(client, requests)
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers]
    rows = await rates(client, users["adam"], group="clinic")
    counted = await recount(db)
    assert counted, "the writes raised no alert"
    shown = {
        (r["clinic"], r["event_type"]): (r["sessions"], r["sessions_with_event"])
        for r in rows
        if r["event_type"].startswith("rule:") and r["sessions_with_event"]
    }
    assert shown == counted


# Doses on each side of a month's and an ISO week's first instant (UTC): 2026-06-01 is a
# Monday, so its midnight begins both a month and a week.
_EDGES = [
    datetime(2026, 5, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 6, 1, tzinfo=UTC),
    datetime(2026, 6, 7, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 6, 8, tzinfo=UTC),
    datetime(2026, 6, 30, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 7, 1, tzinfo=UTC),
]


@pytest.mark.parametrize(
    ("grain", "period", "expected"),
    [
        ("month", date(2026, 5, 1), 1),
        ("month", date(2026, 6, 1), 4),
        ("month", date(2026, 7, 1), 1),
        ("week", date(2026, 5, 25), 1),
        ("week", date(2026, 6, 1), 2),
        ("week", date(2026, 6, 8), 1),
        ("week", date(2026, 6, 29), 2),
    ],
)
async def test_a_periods_recount_counts_the_doses_at_its_edges_once(
    world: World, db: asyncpg.Connection[Any], grain: str, period: date, expected: int
) -> None:
    """The recount finds a period's sessions by a range of times (migration 0027): a dose
    at a period's first instant is in it, one a microsecond before is in the period
    before, as by the period of each dose."""
    await world.clinic("C1")
    await world.user("adam", "admin", ["C1"])
    clinic_id = await db.fetchval("SELECT id FROM clinics WHERE code = 'C1'")
    user_id = await db.fetchval("SELECT id FROM users WHERE username = 'adam'")
    for n, at in enumerate(_EDGES):
        await db.execute(
            "INSERT INTO treatment_sessions (id, clinic_id, patient_ref, drug, weight_kg, "
            "checklist, dose_mg, dosed_at, created_by) "
            "VALUES ($1, $2, $3, 'esketamine_nasal', 70, '{}', 56, $4, $5)",
            uuid.uuid4(),
            clinic_id,
            f"PT-{n}",
            at,
            user_id,
        )
    counted = await db.fetchval(
        "SELECT coalesce(sum(n), 0) FROM analytics_recount($1, $2, $3) WHERE part = 'sessions'",
        clinic_id,
        grain,
        period,
    )
    assert counted == expected
    # The expected counts are each dose's own period's.
    firsts = [
        at.date().replace(day=1) if grain == "month" else at.date() - timedelta(at.weekday())
        for at in _EDGES
    ]
    assert firsts.count(period) == expected
