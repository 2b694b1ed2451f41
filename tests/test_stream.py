"""The live alert stream, over real HTTP against a real PostgreSQL.

The app runs in uvicorn on this test's event loop (so a stream can stay open while
other requests are made, which AsyncTestClient cannot do). Users are seeded with the
owner connection rather than the ``world`` fixture, whose AsyncTestClient would start a
second app, and with it a second listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from litestar import Litestar

from safetyreport.alerts import events, stream
from safetyreport.alerts.broker import LISTENER_NAME, LISTENER_TASK, AlertBroker
from safetyreport.app import create_app
from safetyreport.audit.chain import SYSTEM_CLI
from safetyreport.auth.permissions import Role
from safetyreport.auth.users import add_clinic, add_user
from safetyreport.background import BackgroundRunner, LongLived
from safetyreport.db.embedded import app_url
from safetyreport.db.pool import connect
from safetyreport.settings import Settings
from tests.helpers.reports import bp_report
from tests.helpers.waiting import eventually
from tests.helpers.world import PASSWORD

STREAM = "/api/v1/alerts/stream"
WAIT = 5.0  # seconds: "within a second" in production, generous here
Headers = dict[str, str]


# --- a real server ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Live:
    app: Litestar
    http: httpx.AsyncClient

    @property
    def broker(self) -> AlertBroker:
        broker: AlertBroker = self.app.state.safetyreport.broker
        return broker

    async def login(self, username: str) -> Headers:
        response = await self.http.post(
            "/api/v1/auth/login", json={"username": username, "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}

    async def logins(self, *usernames: str) -> list[Headers]:
        return [await self.login(username) for username in usernames]

    async def submit(self, headers: Headers, clinic: str = "C1", patient: str = "PT-001") -> None:
        """A hypertensive emergency (185/100 with chest pain): bp-hypertensive-crisis."""
        body = bp_report(
            clinic, patient_ref=patient, systolic=185, diastolic=100, symptoms=["chest_pain"]
        )
        response = await self.http.post(
            "/api/v1/reports", json=body, headers={**headers, "Idempotency-Key": str(uuid.uuid4())}
        )
        assert response.status_code == 201, response.text


@contextlib.asynccontextmanager
async def live_server(settings: Settings) -> AsyncIterator[Live]:
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_config=None, lifespan="on", ws="none", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))

    async def started() -> bool:
        if task.done():
            pytest.fail(f"uvicorn stopped: {task.exception()!r}")
        return server.started

    try:
        await eventually(started, "uvicorn started")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield Live(app, http)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)
        sock.close()


# --- reading Server-Sent Events ---------------------------------------------------


@dataclass(slots=True)
class Message:
    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads("\n".join(self.data))
        return parsed


class Reader:
    """Parses the SSE lines of one streaming response, a message at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def message(self) -> Message | None:
        """The next message (comments included); None when the stream has ended."""
        message = Message()
        async for line in self._lines:
            if not line:
                return message
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                message.comments.append(value)
            elif name == "data":
                message.data.append(value)
            elif name in ("id", "event"):
                setattr(message, name, value)
        return None

    async def alert(self) -> Message:
        """The next ``event: alert`` message, skipping comments; fails after WAIT s."""
        async with asyncio.timeout(WAIT):
            while True:
                message = await self.message()
                assert message is not None, "the stream ended"
                if message.event is not None:
                    assert message.event == "alert"
                    return message

    async def comment(self, text: str) -> None:
        async with asyncio.timeout(WAIT):
            while (message := await self.message()) is not None:
                if any(text in c for c in message.comments):
                    return
        pytest.fail(f"the stream ended before the comment {text!r}")

    async def ended(self) -> None:
        async with asyncio.timeout(WAIT):
            while await self.message() is not None:
                pass


@contextlib.asynccontextmanager
async def following(
    live: Live, headers: Headers, last_event_id: int | None = None, query: str = ""
) -> AsyncIterator[Reader]:
    """An open stream, once subscribed (its first comment says so)."""
    if last_event_id is not None:
        headers = {**headers, "Last-Event-ID": str(last_event_id)}
    async with live.http.stream("GET", STREAM + query, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = Reader(response)
        await reader.comment("connected")
        yield reader


def event_id(message: Message) -> int:
    assert message.id is not None
    return int(message.id)


# --- seeding ----------------------------------------------------------------------


async def _user(db: asyncpg.Connection[Any], name: str, role: Role, clinics: list[str]) -> None:
    all_clinics = not clinics
    await add_user(
        db,
        username=name,
        password=PASSWORD,
        role=role,
        clinics=clinics,
        all_clinics=all_clinics,
        actor=SYSTEM_CLI,
    )


@pytest.fixture
async def seeded(db: asyncpg.Connection[Any]) -> None:
    """C1 and C2, a nurse and an officer in each, an admin and an auditor of all clinics."""
    for code in ("C1", "C2"):
        await add_clinic(db, code, f"Clinic {code}", SYSTEM_CLI)
    await _user(db, "nina", "nurse", ["C1"])
    await _user(db, "nadia", "nurse", ["C2"])
    await _user(db, "olga", "safety_officer", ["C1"])
    await _user(db, "oscar", "safety_officer", ["C2"])
    await _user(db, "adam", "admin", [])
    await _user(db, "audrey", "auditor", [])


@pytest.fixture
async def live(seeded: None, settings: Settings) -> AsyncIterator[Live]:
    async with live_server(settings) as server:
        yield server


async def listener_pids(db: asyncpg.Connection[Any]) -> list[int]:
    rows = await db.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
        " AND datname = current_database()",
        LISTENER_NAME,
    )
    return [r["pid"] for r in rows]


async def visible_event_ids(db: asyncpg.Connection[Any], clinic: str, after: int) -> list[int]:
    rows = await db.fetch(
        "SELECT e.id FROM alert_events e JOIN clinics c ON c.id = e.clinic_id"
        " WHERE c.code = $1 AND e.id > $2 ORDER BY e.id",
        clinic,
        after,
    )
    return [r["id"] for r in rows]


# --- live delivery and clinic isolation -------------------------------------------


async def test_officer_receives_an_alert_raised_after_connecting(
    live: Live, db: asyncpg.Connection[Any]
) -> None:
    nurse, officer = await live.login("nina"), await live.login("olga")
    async with following(live, officer) as olga:
        await live.submit(nurse)
        message = await olga.alert()

    stored = await db.fetchrow("SELECT * FROM alert_events ORDER BY id DESC LIMIT 1")
    assert stored is not None
    assert event_id(message) == stored["id"]
    data = message.json()
    assert data["event_id"] == stored["id"]
    assert data["action"] == "opened"
    assert data["actor"] == "nina"
    assert data["details"]["rule_id"] == "bp-hypertensive-crisis"
    alert = data["alert"]
    assert alert["id"] == str(stored["alert_id"])
    assert alert["rule_id"] == "bp-hypertensive-crisis"
    assert alert["rule_name"] == "Hypertensive emergency"
    assert (alert["severity"], alert["status"], alert["clinic"]) == ("critical", "open", "C1")
    assert (alert["escalation_level"], alert["report_count"], alert["assigned_to"]) == (0, 1, None)
    assert (alert["group_by"], alert["group_key"], alert["revision"]) == ("patient", "PT-001", 1)
    assert alert["acknowledged_at"] is None
    for name in ("first_seen_at", "last_seen_at", "ack_deadline"):
        assert datetime.fromisoformat(alert[name]).utcoffset() == timedelta(0), name
    assert datetime.fromisoformat(data["at"]) == stored["at"]


async def test_a_changed_alert_is_streamed_too(live: Live) -> None:
    nurse, officer = await live.login("nina"), await live.login("olga")
    async with following(live, officer) as olga:
        await live.submit(nurse)
        opened = (await olga.alert()).json()
        response = await live.http.post(
            f"/api/v1/alerts/{opened['alert']['id']}/acknowledge", json={}, headers=officer
        )
        assert response.status_code == 200, response.text
        changed = (await olga.alert()).json()
    assert changed["event_id"] > opened["event_id"]
    assert (changed["action"], changed["actor"]) == ("acknowledged", "olga")
    assert changed["alert"]["id"] == opened["alert"]["id"]
    assert changed["alert"]["status"] == "acknowledged"
    assert changed["alert"]["acknowledged_by"] == "olga"


async def test_officers_only_receive_alerts_of_their_clinics(live: Live) -> None:
    nurse1, nurse2, olga_h, oscar_h, adam_h = await live.logins(
        "nina", "nadia", "olga", "oscar", "adam"
    )
    async with (
        following(live, olga_h) as olga,
        following(live, oscar_h) as oscar,
        following(live, adam_h) as adam,
    ):
        await live.submit(nurse1, "C1")
        assert (await olga.alert()).json()["alert"]["clinic"] == "C1"
        await live.submit(nurse2, "C2")
        # Messages arrive in commit order: had the C1 alert reached oscar, it would
        # come before the C2 one.
        assert (await oscar.alert()).json()["alert"]["clinic"] == "C2"
        assert (await adam.alert()).json()["alert"]["clinic"] == "C1"
        assert (await adam.alert()).json()["alert"]["clinic"] == "C2"
        await live.submit(nurse1, "C1", patient="PT-002")
        assert (await olga.alert()).json()["alert"]["clinic"] == "C1"


# --- Last-Event-ID ----------------------------------------------------------------


async def test_reconnecting_with_last_event_id_catches_up_without_repeats(
    live: Live, db: asyncpg.Connection[Any]
) -> None:
    nurse1, nurse2, officer = await live.logins("nina", "nadia", "olga")
    await live.submit(nurse1, patient="PT-000")  # before anyone listens
    async with following(live, officer) as olga:
        await live.submit(nurse1, patient="PT-001")
        first = event_id(await olga.alert())

    # Committed while olga is away: one of her clinic's, one she may not see.
    await live.submit(nurse1, patient="PT-002")
    await live.submit(nurse2, "C2", patient="PT-003")
    missed = await visible_event_ids(db, "C1", first)
    assert missed  # (a third report in a clinic also raises a cluster pattern alert)

    async with following(live, officer, last_event_id=first) as olga:
        assert [event_id(await olga.alert()) for _ in missed] == missed
        await live.submit(nurse1, patient="PT-004")
        latest = await visible_event_ids(db, "C1", missed[-1])
        # Then the new events: nothing older, nothing twice.
        assert [event_id(await olga.alert()) for _ in latest] == latest


async def note(conn: asyncpg.Connection[Any], alert_id: uuid.UUID, settings: Settings) -> int:
    """An event on ``alert_id`` recorded in ``conn``'s transaction; its id."""
    return await events.record(
        conn,
        alert_id=alert_id,
        actor=SYSTEM_CLI,
        action="noted",
        details={"note": "for the stream"},
        settings=settings.alerts,
    )


async def test_resuming_replays_an_event_numbered_below_last_event_id_that_committed_after_it(
    live: Live, db: asyncpg.Connection[Any], database_url: str, settings: Settings
) -> None:
    nurse1, nurse2, admin = await live.logins("nina", "nadia", "adam")
    await live.submit(nurse1, "C1", patient="PT-001")
    await live.submit(nurse2, "C2", patient="PT-002")
    alerts = dict(
        await db.fetch("SELECT c.code, a.id FROM alerts a JOIN clinics c ON c.id = a.clinic_id")
    )
    slow = await connect(database_url)
    try:
        async with slow.transaction():
            late = await note(slow, alerts["C1"], settings)  # numbered first ...
            async with db.transaction():
                seen = await note(db, alerts["C2"], settings)  # ... committed first
    finally:
        await slow.close()
    assert late < seen

    # A client that saw ``seen`` resumes from it: it is sent ``late``, then only what is new.
    async with following(live, admin, last_event_id=seen) as adam:
        assert event_id(await adam.alert()) == late
        await live.submit(nurse1, "C1", patient="PT-003")
        assert event_id(await adam.alert()) > seen


async def test_last_event_id_from_the_query_and_the_header_wins(
    live: Live, db: asyncpg.Connection[Any]
) -> None:
    nurse, officer = await live.login("nina"), await live.login("olga")
    for patient in ("PT-001", "PT-002", "PT-003"):
        await live.submit(nurse, patient=patient)
    ids = await visible_event_ids(db, "C1", 0)
    assert len(ids) >= 3

    async with following(live, officer, query=f"?last_event_id={ids[0]}") as olga:
        assert [event_id(await olga.alert()) for _ in ids[1:]] == ids[1:]
    async with following(
        live, officer, last_event_id=ids[1], query=f"?last_event_id={ids[0]}"
    ) as olga:
        assert event_id(await olga.alert()) == ids[2]
    async with following(live, officer, last_event_id=0) as olga:
        assert [event_id(await olga.alert()) for _ in ids] == ids


async def test_a_malformed_last_event_id_is_rejected(live: Live) -> None:
    officer = await live.login("olga")
    response = await live.http.get(STREAM, headers={**officer, "Last-Event-ID": "yesterday"})
    assert response.status_code in (400, 422), response.text


@pytest.mark.parametrize(
    ("header", "query"),
    [
        (str(2**63), ""),
        (str(10**30), ""),
        (None, f"?last_event_id={2**63}"),
        (None, "?last_event_id=-1"),
    ],
)
async def test_an_out_of_range_last_event_id_is_422(
    live: Live, header: str | None, query: str
) -> None:
    """Beyond bigint the replay query used to fail inside the already-started stream."""
    officer = await live.login("olga")
    headers = officer if header is None else {**officer, "Last-Event-ID": header}
    response = await live.http.get(STREAM + query, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["rule"] == "range"


async def test_the_largest_last_event_id_replays_nothing(live: Live) -> None:
    officer = await live.login("olga")
    async with following(live, officer, last_event_id=2**63 - 1) as olga:
        nurse = await live.login("nina")
        await live.submit(nurse)
        await olga.alert()


# --- auditing the stream ----------------------------------------------------------


async def subscriptions(db: asyncpg.Connection[Any]) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT * FROM audit_entries WHERE action = 'alert_stream.subscribed' ORDER BY chain, seq"
    )


async def test_each_subscription_is_audited_with_what_it_replayed(
    live: Live, db: asyncpg.Connection[Any]
) -> None:
    nurse, officer = await live.login("nina"), await live.login("olga")
    for patient in ("PT-001", "PT-002"):
        await live.submit(nurse, patient=patient)
    ids = await visible_event_ids(db, "C1", 0)
    async with following(live, officer, last_event_id=ids[0]) as olga:
        for _ in ids[1:]:
            await olga.alert()
    async with following(live, officer):
        pass

    async def two_recorded() -> bool:
        return len(await subscriptions(db)) == 2

    await eventually(two_recorded, "both subscriptions audited")
    # The first is recorded once its replay is sent, so it may commit after the second.
    first, second = sorted(await subscriptions(db), key=lambda e: e["details"]["replayed"] == 0)
    assert {e["chain"] for e in (first, second)} == {"clinic:C1"}
    assert (first["actor"], first["actor_role"], first["clinic"]) == (
        "olga",
        "safety_officer",
        "C1",
    )
    assert first["client_addr"] == "127.0.0.1"
    assert first["details"] == {
        "last_event_id": ids[0],
        "replayed": len(ids) - 1,
        "replay_complete": True,
    }
    assert second["details"] == {"last_event_id": None, "replayed": 0, "replay_complete": True}


async def test_a_subscription_of_every_clinic_is_audited_in_each_clinics_chain(
    live: Live, db: asyncpg.Connection[Any]
) -> None:
    admin = await live.login("adam")
    async with following(live, admin, last_event_id=0):
        pass

    async def recorded() -> bool:
        return len(await subscriptions(db)) == 2

    await eventually(recorded, "the admin's subscription audited in both clinics")
    entries = await subscriptions(db)
    assert [e["chain"] for e in entries] == ["clinic:C1", "clinic:C2"]
    assert {e["actor"] for e in entries} == {"adam"}
    assert all(e["details"]["last_event_id"] == 0 for e in entries)


async def test_a_refused_subscription_is_not_recorded_as_one(
    live: Live, db: asyncpg.Connection[Any]
) -> None:
    nurse = await live.login("nina")
    assert (await live.http.get(STREAM, headers=nurse)).status_code == 403
    assert await subscriptions(db) == []


# --- the listener connection ------------------------------------------------------


async def test_listener_reconnects_after_its_backend_is_terminated(
    live: Live, db: asyncpg.Connection[Any]
) -> None:
    nurse, officer = await live.login("nina"), await live.login("olga")
    [old] = await listener_pids(db)
    async with following(live, officer) as olga:
        assert await db.fetchval("SELECT pg_terminate_backend($1)", old)

        async def replaced() -> bool:
            return len(pids := await listener_pids(db)) == 1 and pids != [old]

        await eventually(replaced, "a new listener connection")
        await live.submit(nurse)
        message = await olga.alert()
    assert message.json()["alert"]["rule_id"] == "bp-hypertensive-crisis"


async def test_events_committed_while_the_listener_is_down_are_caught_up(
    live: Live, db: asyncpg.Connection[Any]
) -> None:
    nurse, officer = await live.login("nina"), await live.login("olga")
    database = await db.fetchval("SELECT current_database()")
    # Open a few pool connections now: while CONNECT is revoked, requests must not need
    # new ones (the listener does, and is refused).
    await asyncio.gather(*(live.http.get("/api/v1/me", headers=nurse) for _ in range(4)))
    async with following(live, officer) as olga:
        await db.execute(f'REVOKE CONNECT ON DATABASE "{database}" FROM PUBLIC')
        try:
            [pid] = await listener_pids(db)
            await db.execute("SELECT pg_terminate_backend($1)", pid)

            async def gone() -> bool:
                return not await listener_pids(db) and not live.broker.listening

            await eventually(gone, "the listener gone")
            await live.submit(nurse)  # NOTIFY reaches nobody
            assert await listener_pids(db) == []
        finally:
            await db.execute(f'GRANT CONNECT ON DATABASE "{database}" TO PUBLIC')
        async with asyncio.timeout(20):  # the listener's backoff, then the catch-up
            message = await olga.alert()
    assert message.json()["alert"]["rule_id"] == "bp-hypertensive-crisis"


async def test_broker_starts_with_the_database_down_and_connects_later(
    settings: Settings,
    database_url: str,
    db: asyncpg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database = await db.fetchval("SELECT current_database()")
    await db.execute(f'REVOKE CONNECT ON DATABASE "{database}" FROM PUBLIC')
    broker = AlertBroker(app_url(settings, database_url))
    # The listener is supervised by the background runner, as in the app.
    runner = BackgroundRunner(pool=None)
    runner.add(LongLived(LISTENER_TASK, broker.listen))
    caplog.set_level(logging.WARNING, logger="safetyreport.background")
    try:
        runner.start()
        async with asyncio.timeout(WAIT):
            assert not await broker.wait_listening(0.5)  # although it cannot connect
        await db.execute(f'GRANT CONNECT ON DATABASE "{database}" TO PUBLIC')

        async def listening() -> bool:
            return broker.listening

        await eventually(listening, "the broker connected")
        assert len(await listener_pids(db)) == 1
    finally:
        await db.execute(f'GRANT CONNECT ON DATABASE "{database}" TO PUBLIC')
        async with asyncio.timeout(WAIT):
            assert await runner.stop() == {}
    assert "alert listener failed: ListenerCannotConnect: cannot connect" in caplog.text
    assert await listener_pids(db) == []


# --- subscribers ------------------------------------------------------------------


async def test_a_disconnected_client_is_unsubscribed(live: Live) -> None:
    officer = await live.login("olga")
    async with following(live, officer):
        assert live.broker.subscriber_count == 1

    async def unsubscribed() -> bool:
        return live.broker.subscriber_count == 0

    await eventually(unsubscribed, "the subscriber removed")


async def test_a_subscriber_too_far_behind_is_dropped(live: Live) -> None:
    nurse = await live.login("nina")
    slow = live.broker.subscribe(None, maxsize=1)
    await live.submit(nurse, patient="PT-001")
    await live.submit(nurse, patient="PT-002")

    async def dropped() -> bool:
        return slow.closed is not None

    await eventually(dropped, "the slow subscriber dropped")
    assert slow.closed == "too far behind"
    assert live.broker.subscriber_count == 0
    # It keeps what it had; its client catches up on the rest with Last-Event-ID.
    assert slow.queue.qsize() == 1


async def test_closing_the_subscriptions_ends_open_streams(live: Live) -> None:
    """What a shutting-down server does, so open streams do not hold it up."""
    async with following(live, await live.login("olga")) as olga:
        live.broker.close_subscriptions()
        await olga.comment("the server is shutting down: reconnect with Last-Event-ID")
        await olga.ended()


async def test_keep_alive_comments(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "KEEPALIVE_SECONDS", 0.1)
    async with following(live, await live.login("olga")) as olga:
        await olga.comment("keep-alive")


async def test_logging_out_ends_the_stream(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "KEEPALIVE_SECONDS", 0.1)
    monkeypatch.setattr(stream, "SESSION_CHECK_SECONDS", 0.1)
    officer = await live.login("olga")
    async with following(live, officer) as olga:
        response = await live.http.post("/api/v1/auth/logout", headers=officer)
        assert response.status_code == 204
        await olga.comment("session ended")
        await olga.ended()


# --- who may follow the stream ----------------------------------------------------


@pytest.mark.parametrize(("username", "status"), [("nina", 403), ("audrey", 403)])
async def test_nurses_and_auditors_may_not_follow(live: Live, username: str, status: int) -> None:
    response = await live.http.get(STREAM, headers=await live.login(username))
    assert response.status_code == status, response.text


async def test_no_token_gets_401(live: Live) -> None:
    response = await live.http.get(STREAM)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.end_to_end
@pytest.mark.parametrize(
    "first",
    [
        "safetyreport.state",
        "safetyreport.auth.http",
        "safetyreport.alerts.broker",
        "safetyreport.alerts.stream",
        "safetyreport.alerts.stream_routes",
    ],
)
def test_modules_import_in_any_order(first: str) -> None:
    """state.py imports the broker, which the stream's routes use: no cycle may bite."""
    code = f"import {first}; import safetyreport.app"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
