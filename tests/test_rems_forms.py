"""REMS Patient Monitoring Forms and the periodic session check (issue 15): a form made
when an esketamine session is discharged, prefilled from the session (its observations
and a report linked to it), due 7 days after the dose; listed by status, read, and its
submission recorded with a confirmation number (audited; once); an overdue form raising
``rems-form-overdue`` once, however many processes check at the same moment; a session
still open 4 hours after its dose raising ``session-open-too-long``; clinic isolation.

Time is moved the way the escalation tests move it: the dose is recorded in the past
(the service refuses only future times), so that ``now()`` falls on the side of the
boundary a test needs. The app's own check runs once at start-up (its interval is an
hour under test), before any test data exists; the tests run the check themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from safetyreport.audit import verify_chains
from safetyreport.db.embedded import app_url
from safetyreport.db.pool import create_pool, transaction
from safetyreport.rems.checks import check_sessions
from safetyreport.settings import Settings
from tests.helpers.reports import adverse_report, audit_rows, create_report, errors_of
from tests.helpers.sessions import FIT, SESSIONS, Headers, dosed_session, iso, post
from tests.helpers.world import World

FORMS = "/api/v1/rems/forms"
OVERDUE = "rems-form-overdue"
OPEN_TOO_LONG = "session-open-too-long"


@pytest.fixture
async def users(world: World) -> dict[str, Headers]:
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("nina", "nurse", ["C1"])
    await world.user("nora", "nurse", ["C2"])
    await world.user("olga", "safety_officer", ["C1"])
    await world.user("aude", "auditor", ["C1"])
    return {name: await world.login(name) for name in ("nina", "nora", "olga", "aude")}


@pytest.fixture
async def app_pool(settings: Settings, database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool as the service has one: the unprivileged application role."""
    pool = await create_pool(app_url(settings, database_url), max_size=4)
    yield pool
    await pool.close()


async def run_checks(pool: asyncpg.Pool, settings: Settings, limit: int = 100) -> int:
    """One run in a transaction of its own, as the background task runs it."""
    async with transaction(pool) as conn:
        return await check_sessions(conn, settings.alerts, limit=limit)


async def discharged_session(
    client: AsyncTestClient[Any],
    nina: Headers,
    dosed_at: datetime,
    patient: str = "PT-1",
    *,
    observe: bool = True,
) -> str:
    session_id = await dosed_session(client, nina, dosed_at, patient=patient)
    if observe:
        for minutes, systolic in ((5, 131), (40, 146), (110, 128)):
            observed = await post(
                client,
                f"{SESSIONS}/{session_id}/observations",
                nina,
                {
                    "observed_at": iso(dosed_at + timedelta(minutes=minutes)),
                    "systolic": systolic,
                    "diastolic": 84,
                    "pulse": 80,
                    "moaa_s": 5,
                },
            )
            assert observed.status_code == 201, observed.text
    body = {"discharged_at": iso(dosed_at + timedelta(minutes=125)), **FIT}
    if not observe:
        body["override_reason"] = "Transferred home by ambulance crew"
    discharged = await post(client, f"{SESSIONS}/{session_id}/discharge", nina, body)
    assert discharged.status_code == 200, discharged.text
    return session_id


async def form_of(db: asyncpg.Connection[Any], session_id: str) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM rems_forms WHERE session_id = $1::uuid", session_id)
    assert row is not None
    found: asyncpg.Record = row
    return found


async def alerts_of(db: asyncpg.Connection[Any], rule: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT a.id, a.severity, a.group_key, r.session_id, r.reading, r.reading_id"
        " FROM alerts a JOIN alert_session_readings r ON r.alert_id = a.id"
        " WHERE a.rule_id = $1 ORDER BY a.first_seen_at",
        rule,
    )


def time_of(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- the form ----------------------------------------------------------------------------


async def test_the_form_is_prefilled_from_the_session_and_a_linked_report(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    dosed_at = (datetime.now(UTC) - timedelta(hours=3)).replace(microsecond=0)
    session_id = await dosed_session(client, nina, dosed_at, patient="PT-9")
    for minutes, systolic in ((5, 131), (40, 146), (110, 128)):
        observed = await post(
            client,
            f"{SESSIONS}/{session_id}/observations",
            nina,
            {
                "observed_at": iso(dosed_at + timedelta(minutes=minutes)),
                "systolic": systolic,
                "diastolic": 84,
                "moaa_s": 5,
            },
        )
        assert observed.status_code == 201, observed.text
    # No form while the session is open: its monitoring is not over.
    assert await db.fetchval("SELECT count(*) FROM rems_forms") == 0
    fall = await create_report(
        client,
        nina,
        adverse_report(
            patient_ref="PT-9",
            session_id=session_id,
            occurred_at=iso(dosed_at + timedelta(minutes=50)),
        ),
    )
    discharged_at = dosed_at + timedelta(minutes=125)
    discharged = await post(
        client,
        f"{SESSIONS}/{session_id}/discharge",
        nina,
        {"discharged_at": iso(discharged_at), **FIT},
    )
    assert discharged.status_code == 200, discharged.text

    form = await form_of(db, session_id)
    read = await client.get(f"{FORMS}/{form['id']}", headers=users["olga"])
    assert read.status_code == 200, read.text
    view = read.json()
    assert view["session_id"] == session_id
    assert view["status"] == "due"
    assert time_of(view["due_at"]) == dosed_at + timedelta(days=7)
    content = view["content"]
    assert content["patient_ref"] == "PT-9"
    assert content["drug"] == "esketamine_nasal"
    assert (content["dose_mg"], content["lot"]) == (56, "LOT-7")
    assert time_of(content["dosed_at"]) == dosed_at
    assert time_of(content["first_observation_at"]) == dosed_at + timedelta(minutes=5)
    assert time_of(content["last_observation_at"]) == dosed_at + timedelta(minutes=110)
    assert time_of(content["discharged_at"]) == discharged_at
    assert content["minutes_monitored"] == 125
    assert [(v["minutes_after_dose"], v["systolic"]) for v in content["vital_signs"]] == [
        (5, 131),
        (40, 146),
        (110, 128),
    ]
    assert content["discharge"]["moaa_s"] == 5
    [event] = content["adverse_events"]
    assert (event["report_id"], event["kind"], event["category"]) == (
        fall["id"],
        "adverse_event",
        "fall",
    )
    assert event["alert_rules"] == ["fall"]
    rows = await audit_rows(db, "rems_form.read", str(form["id"]))
    assert [(r["chain"], r["actor"]) for r in rows] == [("clinic:C1", "olga")]


async def test_only_esketamine_sessions_have_a_form(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    opened = await post(
        client,
        SESSIONS,
        nina,
        {
            "clinic": "C1",
            "patient_ref": "PT-K",
            "drug": "ketamine_iv",
            "weight_kg": 70,
            "age_band": "under_65",
            "checklist": {
                "systolic": 120,
                "diastolic": 78,
                "fasting": True,
                "cns_depressants": False,
                "pregnancy_possible": False,
                "transport_arranged": True,
            },
        },
    )
    assert opened.status_code == 201, opened.text
    discharged = await post(
        client,
        f"{SESSIONS}/{opened.json()['id']}/discharge",
        nina,
        {"discharged_at": iso(datetime.now(UTC)), **FIT},
    )
    assert discharged.status_code == 200, discharged.text
    assert await db.fetchval("SELECT count(*) FROM rems_forms") == 0


async def test_a_form_is_due_until_7_days_after_the_dose_then_overdue(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    nina, olga = users["nina"], users["olga"]
    now = datetime.now(UTC)
    # A minute either side of the boundary, and a form submitted long ago.
    due = await discharged_session(client, nina, now - timedelta(days=7, minutes=-1), "PT-A")
    overdue = await discharged_session(client, nina, now - timedelta(days=7, minutes=1), "PT-B")
    done = await discharged_session(client, nina, now - timedelta(days=8), "PT-C")
    done_form = await form_of(db, done)
    submitted = await client.post(
        f"{FORMS}/{done_form['id']}/submission",
        json={"confirmation_number": "RMS-1"},
        headers=nina,
    )
    assert submitted.status_code == 201, submitted.text

    async def listed(status: str) -> list[str]:
        response = await client.get(FORMS, params={"status": status}, headers=olga)
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        assert {i["status"] for i in items} <= {status}
        return [i["session_id"] for i in items]

    assert await listed("due") == [due]
    assert await listed("overdue") == [overdue]
    assert await listed("submitted") == [done]
    everything = await client.get(FORMS, headers=users["aude"])
    assert [i["session_id"] for i in everything.json()["items"]] == [done, overdue, due]
    bad = await client.get(FORMS, params={"status": "late"}, headers=olga)
    assert bad.status_code == 422, bad.text
    for session_id in (due, overdue):
        form = await form_of(db, session_id)
        dosed = await db.fetchval(
            "SELECT dosed_at FROM treatment_sessions WHERE id = $1::uuid", session_id
        )
        assert form["due_at"] == dosed + timedelta(days=7)
    rows = await audit_rows(db, "rems_form.listed")
    assert {(r["chain"], r["actor"]) for r in rows} == {
        ("clinic:C1", "olga"),
        ("clinic:C1", "aude"),
    }


async def test_the_list_pages_with_a_cursor(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    now = datetime.now(UTC)
    sessions = [
        await discharged_session(
            client, nina, now - timedelta(hours=3 + i), f"PT-{i}", observe=False
        )
        for i in range(3)
    ]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await client.get(FORMS, params=params, headers=users["olga"])
        assert page.status_code == 200, page.text
        seen += [i["session_id"] for i in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    # The earliest due first: the earliest dose.
    assert seen == list(reversed(sessions))


async def test_a_listed_page_gives_each_form_its_own_sessions_content(
    client: AsyncTestClient[Any], users: dict[str, Headers]
) -> None:
    """The page's forms are prefilled together (a few queries for the page): each still
    shows only its own session's dose, readings and reports."""
    nina = users["nina"]
    now = datetime.now(UTC)
    reports: dict[str, str] = {}
    for i, patient in enumerate(("PT-A", "PT-B", "PT-C")):
        dosed_at = now - timedelta(hours=3 + i)
        session_id = await discharged_session(client, nina, dosed_at, patient, observe=i != 1)
        if i != 2:
            fall = await create_report(
                client,
                nina,
                adverse_report(
                    patient_ref=patient,
                    session_id=session_id,
                    occurred_at=iso(dosed_at + timedelta(minutes=20)),
                ),
            )
            reports[session_id] = fall["id"]
    page = await client.get(FORMS, headers=users["olga"])
    assert page.status_code == 200, page.text
    forms = page.json()["items"]
    assert len(forms) == 3
    for form in forms:
        content = form["content"]
        events = [e["report_id"] for e in content["adverse_events"]]
        assert events == ([reports[form["session_id"]]] if form["session_id"] in reports else [])
        expected_readings = 0 if content["patient_ref"] == "PT-B" else 3
        assert len(content["vital_signs"]) == expected_readings, content


# --- submission --------------------------------------------------------------------------


async def test_recording_the_submission_with_a_confirmation_number(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    session_id = await discharged_session(client, nina, datetime.now(UTC) - timedelta(hours=3))
    form = await form_of(db, session_id)
    path = f"{FORMS}/{form['id']}/submission"

    for body, error in [
        ({"confirmation_number": ""}, ("confirmation_number", "not_empty")),
        ({"confirmation_number": "   "}, ("confirmation_number", "not_empty")),
        ({"confirmation_number": "A" * 41}, ("confirmation_number", "max_length")),
        ({"confirmation_number": "RMS 12;DROP"}, ("confirmation_number", "pattern")),
        ({"confirmation_number": "-RMS"}, ("confirmation_number", "pattern")),
        ({"confirmation_number": 12345}, ("confirmation_number", "type")),
        ({}, ("confirmation_number", "required")),
        ({"confirmation_number": "RMS-1", "extra": 1}, ("extra", "unknown_field")),
    ]:
        refused = await client.post(path, json=body, headers=nina)
        assert errors_of(refused) == [error], body
    assert (await form_of(db, session_id))["submitted_at"] is None

    accepted = await client.post(path, json={"confirmation_number": "RMS-2026-0042"}, headers=nina)
    assert accepted.status_code == 201, accepted.text
    view = accepted.json()
    assert (view["status"], view["confirmation_number"], view["submitted_by"]) == (
        "submitted",
        "RMS-2026-0042",
        "nina",
    )
    assert view["content"]["patient_ref"] == "PT-1"
    stored = await form_of(db, session_id)
    assert stored["submitted_content"]["patient_ref"] == "PT-1"
    [entry] = await audit_rows(db, "rems_form.submitted", str(form["id"]))
    assert (entry["chain"], entry["actor"]) == ("clinic:C1", "nina")
    assert entry["details"]["confirmation_number"] == "RMS-2026-0042"

    again = await client.post(path, json={"confirmation_number": "RMS-2026-0043"}, headers=nina)
    assert again.status_code == 409, again.text
    assert (await form_of(db, session_id))["confirmation_number"] == "RMS-2026-0042"
    # An auditor reads but does not record submissions.
    aude = await client.post(path, json={"confirmation_number": "RMS-9"}, headers=users["aude"])
    assert aude.status_code == 403, aude.text


async def test_another_clinics_form_is_not_found(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    session_id = await discharged_session(
        client, users["nina"], datetime.now(UTC) - timedelta(hours=3)
    )
    form = await form_of(db, session_id)
    nora = users["nora"]
    read = await client.get(f"{FORMS}/{form['id']}", headers=nora)
    assert read.status_code == 404, read.text
    submitted = await client.post(
        f"{FORMS}/{form['id']}/submission", json={"confirmation_number": "RMS-1"}, headers=nora
    )
    assert submitted.status_code == 404, submitted.text
    listed = await client.get(FORMS, headers=nora)
    assert listed.json()["items"] == []
    foreign = await client.get(FORMS, params={"clinic": "C1"}, headers=nora)
    assert foreign.status_code in (403, 404), foreign.text
    assert (await form_of(db, session_id))["submitted_at"] is None


# --- the periodic check ------------------------------------------------------------------


async def test_an_overdue_form_raises_its_alert_once_however_many_check(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    users: dict[str, Headers],
    settings: Settings,
    database_url: str,
    app_pool: asyncpg.Pool,
) -> None:
    nina = users["nina"]
    now = datetime.now(UTC)
    overdue = [
        await discharged_session(client, nina, now - timedelta(days=8), f"PT-{i}", observe=False)
        for i in range(6)
    ]
    not_yet = await discharged_session(client, nina, now - timedelta(days=6), "PT-N", observe=False)
    submitted = await discharged_session(
        client, nina, now - timedelta(days=9), "PT-S", observe=False
    )
    answer = await client.post(
        f"{FORMS}/{(await form_of(db, submitted))['id']}/submission",
        json={"confirmation_number": "RMS-7"},
        headers=nina,
    )
    assert answer.status_code == 201, answer.text

    # Two processes' checks at the same moment, in small batches so that they compete.
    url = app_url(settings, database_url)
    pools = [await create_pool(url, max_size=2) for _ in range(2)]

    async def drain(pool: asyncpg.Pool) -> int:
        total = 0
        while count := await run_checks(pool, settings, limit=2):
            total += count
        return total

    try:
        counts = await asyncio.gather(*(drain(p) for p in pools))
    finally:
        await asyncio.gather(*(p.close() for p in pools))
    assert sum(counts) == len(overdue)

    alerts = await alerts_of(db, OVERDUE)
    assert sorted(str(a["session_id"]) for a in alerts) == sorted(overdue)
    assert {(a["severity"], a["reading"]) for a in alerts} == {("high", "rems_form")}
    for alert in alerts:
        form = await db.fetchrow(
            "SELECT id FROM rems_forms WHERE session_id = $1", alert["session_id"]
        )
        assert form is not None
        assert alert["reading_id"] == form["id"]
    # Checked again later: nothing more.
    assert await run_checks(app_pool, settings) == 0
    assert len(await alerts_of(db, OVERDUE)) == len(overdue)
    assert not {not_yet, submitted} & {str(a["session_id"]) for a in alerts}
    opened = await db.fetch(
        "SELECT e.actor FROM alert_events e JOIN alerts a ON a.id = e.alert_id"
        " WHERE a.rule_id = $1 AND e.action = 'opened'",
        OVERDUE,
    )
    assert len(opened) == len(overdue)
    assert (await verify_chains(db)).ok

    # The alert carries the rule's guidance for the officer.
    detail = await client.get(f"/api/v1/alerts/{alerts[0]['id']}", headers=users["olga"])
    assert detail.status_code == 200, detail.text
    assert "REMS" in detail.text


async def test_a_session_open_4_hours_after_its_dose_raises_an_alert_once(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    users: dict[str, Headers],
    settings: Settings,
    app_pool: asyncpg.Pool,
) -> None:
    nina = users["nina"]
    now = datetime.now(UTC)
    late = await dosed_session(client, nina, now - timedelta(hours=4, minutes=1), "PT-L")
    not_yet = await dosed_session(client, nina, now - timedelta(hours=4, minutes=-1), "PT-E")
    # Open as long, but discharged: nothing to say.
    closed = await discharged_session(client, nina, now - timedelta(hours=5), "PT-D", observe=False)

    assert await run_checks(app_pool, settings) == 1
    [alert] = await alerts_of(db, OPEN_TOO_LONG)
    assert (str(alert["session_id"]), alert["severity"], alert["reading"]) == (
        late,
        "high",
        "open_too_long",
    )
    assert await run_checks(app_pool, settings) == 0
    assert len(await alerts_of(db, OPEN_TOO_LONG)) == 1
    assert not_yet != closed

    # Two minutes on, the other session is past 4 hours too: its own alert, once.
    await db.execute(
        "UPDATE treatment_sessions SET dosed_at = dosed_at - interval '2 minutes'"
        " WHERE id = $1::uuid",
        not_yet,
    )
    assert await run_checks(app_pool, settings) == 1
    assert await run_checks(app_pool, settings) == 0
    assert sorted(str(a["session_id"]) for a in await alerts_of(db, OPEN_TOO_LONG)) == sorted(
        [late, not_yet]
    )
    assert (await verify_chains(db)).ok


async def test_the_app_runs_the_session_checks_in_the_background(
    client: AsyncTestClient[Any],
) -> None:
    health = await client.get("/health")
    assert "session-checks" in health.text
