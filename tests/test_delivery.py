"""Webhook delivery: the real sender, a real PostgreSQL and a real HTTP receiver.

Alerts are raised the way users raise them (a nurse posts a blood-pressure report in
crisis range); the receiver is an HTTP server on 127.0.0.1 that records every request
and answers with scripted statuses. Every wait is bounded; no test asserts on timing.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import socket
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import httpx
import pytest
import standardwebhooks
from standardwebhooks.webhooks import WebhookVerificationError

from safetyreport.alerts.webhooks import (
    BATCH_SIZE,
    DELIVERY_TASK,
    claim_due,
    delivering,
    standard_webhooks_secret,
)
from safetyreport.app import create_app
from safetyreport.audit.chain import SYSTEM_CLI
from safetyreport.auth.permissions import Role
from safetyreport.auth.users import add_clinic, add_user
from safetyreport.background import BackgroundRunner, Backoff
from safetyreport.db.embedded import app_url
from safetyreport.db.pool import create_pool, transaction
from safetyreport.settings import APP_DB_ROLE, Settings
from tests.helpers.reports import bp_report
from tests.helpers.service import running_app
from tests.helpers.waiting import eventually
from tests.helpers.world import PASSWORD

SECRET = "delivery-test-secret-of-32-bytes+"
# Each wait for the sender is bounded by this; none should come close.
WAIT_SECONDS = 15.0
Headers = dict[str, str]


# --- the receiver -------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def notification_id(self) -> str:
        return self.headers["x-safetyreport-notification-id"]


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # Room for every connection two senders open at once (the default backlog is 5).
    request_queue_size = 128


@dataclass
class Receiver:
    """An HTTP server in a thread: records POSTs, answers ``statuses`` then 200s."""

    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def record(self, request: Received) -> int:
        with self._lock:
            self.received.append(request)
            return self.statuses.pop(0) if self.statuses else 200

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver.record(Received(self.path, headers, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


def closed_port_url() -> str:
    """A URL nobody listens on: the port was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


# --- the service ----------------------------------------------------------------------


def with_webhooks(settings: Settings, *urls: str, max_attempts: int = 3) -> Settings:
    alerts = replace(
        settings.alerts,
        webhook_urls=urls,
        webhook_secret=SECRET,
        delivery_max_attempts=max_attempts,
        delivery_backoff_base=timedelta(seconds=0.1),
        delivery_backoff_cap=timedelta(seconds=0.5),
    )
    return replace(settings, alerts=alerts)


def without_sender(settings: Settings) -> Settings:
    """Notifications are still enqueued, but the app's own sender (which refuses to run
    without a secret) delivers nothing: as if no sender were running."""
    return replace(settings, alerts=replace(settings.alerts, webhook_secret=None))


@contextlib.asynccontextmanager
async def sender(settings: Settings, database_url: str) -> AsyncIterator[None]:
    """A sender as another service process would run it: its own pool, its own runner."""
    pool = await create_pool(app_url(settings, database_url), max_size=4)
    runner = BackgroundRunner(pool, backoff=Backoff(base=0.05, cap=0.5))
    try:
        async with delivering(settings.alerts, poll_interval=timedelta(seconds=0.05)) as task:
            assert task is not None
            runner.add(task)
            runner.start()
            try:
                yield
            finally:
                assert runner.status()[DELIVERY_TASK].running  # a sender never dies
                assert await runner.stop() == {}
    finally:
        await pool.close()


async def seed(db: asyncpg.Connection[Any]) -> None:
    await add_clinic(db, "C1", "Clinic C1", SYSTEM_CLI)
    users: tuple[tuple[str, Role], ...] = (("nina", "nurse"), ("adam", "admin"))
    for username, role in users:
        await add_user(
            db,
            username=username,
            password=PASSWORD,
            role=role,
            clinics=["C1"],
            all_clinics=False,
            actor=SYSTEM_CLI,
        )


async def login(http: httpx.AsyncClient, username: str) -> Headers:
    response = await http.post(
        "/api/v1/auth/login", json={"username": username, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


async def raise_alerts(
    http: httpx.AsyncClient, db: asyncpg.Connection[Any], *patients: str
) -> list[uuid.UUID]:
    """Nina reports 185/100 with chest pain for each patient: bp-hypertensive-crisis
    opens an alert each."""
    headers = await login(http, "nina")
    alert_ids: list[uuid.UUID] = []
    for patient in patients:
        response = await http.post(
            "/api/v1/reports",
            json=bp_report(
                patient_ref=patient, systolic=185, diastolic=100, symptoms=["chest_pain"]
            ),
            headers={**headers, "Idempotency-Key": f"crisis-{patient}"},
        )
        assert response.status_code == 201, response.text
        alert_ids.append(
            await db.fetchval(
                "SELECT a.id FROM alerts a JOIN alert_reports ar ON ar.alert_id = a.id"
                " WHERE ar.report_id = $1 AND a.rule_id = 'bp-hypertensive-crisis'",
                uuid.UUID(response.json()["id"]),
            )
        )
    assert None not in alert_ids
    return alert_ids


async def raise_alert(
    http: httpx.AsyncClient, db: asyncpg.Connection[Any], patient: str = "PT-001"
) -> uuid.UUID:
    [alert_id] = await raise_alerts(http, db, patient)
    return alert_id


# --- waiting and reading the ledger ----------------------------------------------------


async def notifications(db: asyncpg.Connection[Any]) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM notifications ORDER BY created_at, id")


async def attempts_of(db: asyncpg.Connection[Any], notification_id: uuid.UUID) -> list[Any]:
    return await db.fetch(
        "SELECT * FROM notification_attempts WHERE notification_id = $1 ORDER BY id",
        notification_id,
    )


def all_in(
    db: asyncpg.Connection[Any], status: str, count: int = 1
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        rows = await notifications(db)
        return len(rows) == count and all(r["status"] == status for r in rows)

    return check


# --- delivery ------------------------------------------------------------------------


async def test_delivers_one_signed_post_with_the_alert_payload(
    db: asyncpg.Connection[Any], settings: Settings, receiver: Receiver
) -> None:
    await seed(db)
    async with running_app(with_webhooks(settings, receiver.url + "/hook")) as http:
        alert_id = await raise_alert(http, db)
        await eventually(all_in(db, "delivered"), "the notification to be delivered")

    [row] = await notifications(db)
    assert (row["alert_id"], row["event"], row["channel"]) == (alert_id, "opened", "webhook")
    assert row["attempts"] == 1
    assert row["delivered_at"] is not None
    [attempt] = await attempts_of(db, row["id"])
    assert attempt["status_code"] == 200
    assert attempt["error"] is None
    assert attempt["duration_ms"] >= 0

    [post] = receiver.requests()
    assert post.path == "/hook"
    assert post.headers["content-type"] == "application/json"
    assert post.notification_id == str(row["id"])
    timestamp = post.headers["x-safetyreport-timestamp"]
    assert timestamp.isdigit()
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + post.body, hashlib.sha256)
    assert hmac.compare_digest(
        post.headers["x-safetyreport-signature"], "sha256=" + expected.hexdigest()
    )
    body = json.loads(post.body)
    assert body == row["payload"]
    assert body["event"] == "opened"
    assert body["notification_id"] == str(row["id"])
    assert body["alert"]["id"] == str(alert_id)
    assert body["alert"]["rule_id"] == "bp-hypertensive-crisis"
    assert body["alert"]["severity"] == "critical"


async def test_a_delivery_verifies_with_the_standard_webhooks_library(
    db: asyncpg.Connection[Any], settings: Settings, receiver: Receiver
) -> None:
    await seed(db)
    async with running_app(with_webhooks(settings, receiver.url + "/hook")) as http:
        alert_id = await raise_alert(http, db)
        await eventually(all_in(db, "delivered"), "the notification to be delivered")

    [post] = receiver.requests()
    # The receiver knows the secret as Standard Webhooks libraries take it.
    hook = standardwebhooks.Webhook(standard_webhooks_secret(SECRET))
    payload = hook.verify(post.body, post.headers)
    assert payload["alert"]["id"] == str(alert_id)
    assert post.headers["webhook-id"] == post.notification_id
    assert post.headers["webhook-timestamp"] == post.headers["x-safetyreport-timestamp"]
    # A body changed in transit, or signed with another secret, does not verify.
    with pytest.raises(WebhookVerificationError):
        hook.verify(post.body.replace(b"critical", b"info"), post.headers)
    other = standardwebhooks.Webhook(standard_webhooks_secret("another-secret-of-32-bytes-or-more"))
    with pytest.raises(WebhookVerificationError):
        other.verify(post.body, post.headers)


async def test_a_server_error_is_retried_and_delivered_once(
    db: asyncpg.Connection[Any], settings: Settings, receiver: Receiver
) -> None:
    receiver.statuses = [500]
    await seed(db)
    async with running_app(with_webhooks(settings, receiver.url)) as http:
        await raise_alert(http, db)
        await eventually(all_in(db, "delivered"), "the notification to be delivered")

    [row] = await notifications(db)
    assert row["attempts"] == 2
    assert [a["status_code"] for a in await attempts_of(db, row["id"])] == [500, 200]
    first, second = receiver.requests()
    assert first.notification_id == second.notification_id == str(row["id"])
    assert json.loads(first.body) == json.loads(second.body) == row["payload"]


async def test_an_unreachable_receiver_fails_after_the_last_attempt(
    db: asyncpg.Connection[Any], settings: Settings
) -> None:
    await seed(db)
    async with running_app(with_webhooks(settings, closed_port_url(), max_attempts=3)) as http:
        await raise_alert(http, db)
        await eventually(all_in(db, "failed"), "the notification to fail")

    [row] = await notifications(db)
    assert row["attempts"] == 3
    assert row["delivered_at"] is None
    attempts = await attempts_of(db, row["id"])
    assert len(attempts) == 3
    for attempt in attempts:
        assert attempt["status_code"] is None
        assert attempt["error"]


# --- restarts and several senders ------------------------------------------------------


async def test_a_sender_started_later_delivers_what_was_committed_once(
    db: asyncpg.Connection[Any], settings: Settings, database_url: str, receiver: Receiver
) -> None:
    await seed(db)
    configured = with_webhooks(settings, receiver.url)
    async with running_app(without_sender(configured)) as http:
        await raise_alert(http, db, "PT-001")
        [pending] = await notifications(db)
        assert (pending["status"], pending["attempts"]) == ("pending", 0)
        assert receiver.requests() == []

        async with sender(configured, database_url):
            await eventually(all_in(db, "delivered"), "the notification to be delivered")
        assert [r.notification_id for r in receiver.requests()] == [str(pending["id"])]

        # Another sender starts: it delivers the new alert's notification and never
        # the one already acknowledged.
        async with sender(configured, database_url):
            await raise_alert(http, db, "PT-002")
            await eventually(all_in(db, "delivered", count=2), "both notifications to be delivered")

    ids = [r.notification_id for r in receiver.requests()]
    assert len(ids) == 2
    assert set(ids) == {str(r["id"]) for r in await notifications(db)}
    for row in await notifications(db):
        assert row["attempts"] == 1
        assert len(await attempts_of(db, row["id"])) == 1


async def test_a_claim_whose_sender_died_is_sent_after_the_lease(
    db: asyncpg.Connection[Any], settings: Settings, database_url: str, receiver: Receiver
) -> None:
    await seed(db)
    configured = with_webhooks(settings, receiver.url)
    async with running_app(without_sender(configured)) as http:
        await raise_alert(http, db)
    # A sender claims the row, then dies before posting it.
    pool = await create_pool(app_url(settings, database_url), max_size=1)
    try:
        async with transaction(pool) as conn:
            [claimed] = await claim_due(conn)
    finally:
        await pool.close()
    row = await db.fetchrow("SELECT *, next_attempt_at > now() AS leased FROM notifications")
    assert row is not None
    assert (row["id"], row["status"], row["attempts"], row["leased"]) == (
        claimed.id,
        "pending",
        1,
        True,
    )
    # The lease runs out (rather than waiting its minute, end it now).
    await db.execute("UPDATE notifications SET next_attempt_at = now()")

    async with sender(configured, database_url):
        await eventually(all_in(db, "delivered"), "the notification to be delivered")

    assert [r.notification_id for r in receiver.requests()] == [str(claimed.id)]
    assert [a["status_code"] for a in await attempts_of(db, claimed.id)] == [200]


async def test_two_senders_deliver_each_notification_exactly_once(
    db: asyncpg.Connection[Any], settings: Settings, database_url: str, receiver: Receiver
) -> None:
    await seed(db)
    # 13 crises (and a cluster alert) to two webhooks: more rows than a round claims.
    configured = with_webhooks(settings, receiver.url + "/a", receiver.url + "/b")
    async with running_app(without_sender(configured)) as http:
        await raise_alerts(http, db, *(f"PT-{i:03d}" for i in range(13)))
    rows = await notifications(db)
    assert len(rows) > BATCH_SIZE

    async with sender(configured, database_url), sender(configured, database_url):
        await eventually(
            all_in(db, "delivered", count=len(rows)), "every notification to be delivered"
        )

    received = Counter((r.path, r.notification_id) for r in receiver.requests())
    assert received == Counter({(f"/{r['target'][-1]}", str(r["id"])): 1 for r in rows})
    ledger = await db.fetch("SELECT notification_id, status_code FROM notification_attempts")
    assert sorted(str(a["notification_id"]) for a in ledger) == sorted(str(r["id"]) for r in rows)
    assert {a["status_code"] for a in ledger} == {200}


class Collecting(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_the_sender_survives_database_errors(
    db: asyncpg.Connection[Any], settings: Settings, database_url: str, receiver: Receiver
) -> None:
    await seed(db)
    configured = with_webhooks(settings, receiver.url)
    handler = Collecting(logging.WARNING)
    # The runner logs a task's failures (the app's logging setup replaces the root's
    # handlers, so on the logger itself).
    log = logging.getLogger("safetyreport.background")
    log.addHandler(handler)
    try:
        async with running_app(without_sender(configured)) as http:
            await raise_alert(http, db)
        # Claims now fail in the database, every round.
        await db.execute(f"REVOKE UPDATE ON notifications FROM {APP_DB_ROLE}")
        async with sender(configured, database_url):

            async def warned() -> bool:
                return any("permission denied" in r.getMessage() for r in handler.records)

            await eventually(warned, "the warning about the missing privilege")
            await db.execute(f"GRANT UPDATE ON notifications TO {APP_DB_ROLE}")
            await eventually(all_in(db, "delivered"), "the notification to be delivered")
    finally:
        log.removeHandler(handler)
    assert len(receiver.requests()) == 1


async def test_without_webhooks_there_is_no_sender(settings: Settings) -> None:
    async with delivering(settings.alerts) as task:
        assert task is None
    # Nor with URLs but no secret (settings from the environment refuse that).
    no_secret = without_sender(with_webhooks(settings, "http://127.0.0.1:9"))
    async with delivering(no_secret.alerts) as task:
        assert task is None
    app = create_app(settings)
    async with app.lifespan():
        tasks = app.state.safetyreport.background.status()
        assert DELIVERY_TASK not in tasks
        assert tasks  # the other background tasks run


# --- the ledger API --------------------------------------------------------------------


async def test_admins_read_the_ledger_and_reading_is_audited(
    db: asyncpg.Connection[Any], settings: Settings, receiver: Receiver
) -> None:
    receiver.statuses = [503]
    await seed(db)
    configured = with_webhooks(settings, receiver.url + "/a", receiver.url + "/b")
    async with running_app(configured) as http:
        alert_id = await raise_alert(http, db)
        await eventually(all_in(db, "delivered", count=2), "both notifications to be delivered")
        admin = await login(http, "adam")
        nurse = await login(http, "nina")

        listed = await http.get("/api/v1/notifications", headers=admin)
        assert listed.status_code == 200, listed.text
        page = listed.json()
        assert page["next_cursor"] is None
        assert len(page["items"]) == 2
        item = page["items"][0]
        assert set(item) == {
            "id",
            "alert_id",
            "event",
            "channel",
            "target",
            "status",
            "attempts",
            "created_at",
            "delivered_at",
            "next_attempt_at",
        }
        assert {i["alert_id"] for i in page["items"]} == {str(alert_id)}
        assert {i["status"] for i in page["items"]} == {"delivered"}
        assert sorted(i["attempts"] for i in page["items"]) == [1, 2]

        first = await http.get("/api/v1/notifications?limit=1", headers=admin)
        cursor = first.json()["next_cursor"]
        assert cursor
        second = await http.get(f"/api/v1/notifications?limit=1&cursor={cursor}", headers=admin)
        assert second.json()["next_cursor"] is None
        paged = first.json()["items"] + second.json()["items"]
        assert [i["id"] for i in paged] == [i["id"] for i in page["items"]]

        query = f"/api/v1/notifications?status=delivered&alert={alert_id}"
        assert len((await http.get(query, headers=admin)).json()["items"]) == 2
        failed = await http.get("/api/v1/notifications?status=failed", headers=admin)
        assert failed.json()["items"] == []
        other = await http.get(f"/api/v1/notifications?alert={uuid.uuid4()}", headers=admin)
        assert other.json()["items"] == []
        bad = await http.get("/api/v1/notifications?cursor=nonsense", headers=admin)
        assert bad.status_code == 422

        retried = next(i for i in page["items"] if i["attempts"] == 2)
        detail = await http.get(f"/api/v1/notifications/{retried['id']}", headers=admin)
        assert detail.status_code == 200, detail.text
        body = detail.json()
        assert body["status"] == "delivered"
        assert body["payload"]["alert"]["id"] == str(alert_id)
        assert [a["status_code"] for a in body["attempts"]] == [503, 200]
        assert all(a["attempted_at"] and a["duration_ms"] >= 0 for a in body["attempts"])
        missing = await http.get(f"/api/v1/notifications/{uuid.uuid4()}", headers=admin)
        assert missing.status_code == 404

        assert (await http.get("/api/v1/notifications", headers=nurse)).status_code == 403
        forbidden = await http.get(f"/api/v1/notifications/{retried['id']}", headers=nurse)
        assert forbidden.status_code == 403

    entries = await db.fetch(
        "SELECT * FROM audit_entries WHERE action LIKE 'notification.%' ORDER BY seq"
    )
    assert [e["action"] for e in entries] == ["notification.listed"] * 6 + ["notification.read"]
    assert {(e["chain"], e["actor"], e["actor_role"]) for e in entries} == {
        ("global", "adam", "admin")
    }
    assert all(e["client_addr"] for e in entries)
    assert entries[0]["details"]["notification_ids"] == [i["id"] for i in page["items"]]
    assert entries[-1]["object_id"] == retried["id"]


async def test_credentials_in_webhook_urls_are_masked_in_the_ledger(
    db: asyncpg.Connection[Any], settings: Settings, receiver: Receiver
) -> None:
    """The ledger (list, detail, attempt errors) never shows a URL's credentials."""
    secret_url = receiver.url.replace("://", "://hookuser:hookpass@") + "/hook?token=tok123"
    dead_port = closed_port_url().replace("://", "://deaduser:deadpass@") + "?key=k3y"
    configured = with_webhooks(settings, secret_url, dead_port, max_attempts=1)
    await seed(db)
    async with running_app(configured) as http:
        await raise_alert(http, db)
        await eventually(all_in_any_final(db, count=2), "both notifications to be settled")
        admin = await login(http, "adam")
        listed = await http.get("/api/v1/notifications", headers=admin)
        details = [
            (await http.get(f"/api/v1/notifications/{item['id']}", headers=admin)).text
            for item in listed.json()["items"]
        ]
    shown = listed.text + "".join(details)
    for secret in ("hookuser", "hookpass", "tok123", "deaduser", "deadpass", "k3y"):
        assert secret not in shown
    assert {i["target"] for i in listed.json()["items"]} == {
        receiver.url.replace("://", "://***@") + "/hook?token=***",
        closed_port_url_masked(dead_port),
    }
    # The sender still used the credentials: they are only hidden from view.
    [post] = receiver.requests()
    assert post.headers["authorization"].startswith("Basic ")
    assert post.path == "/hook?token=tok123"
    stored_errors = await db.fetch("SELECT error FROM notification_attempts")
    assert not any("deadpass" in (r["error"] or "") for r in stored_errors)


def all_in_any_final(db: asyncpg.Connection[Any], count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        rows = await notifications(db)
        return len(rows) == count and all(r["status"] != "pending" for r in rows)

    return check


def closed_port_url_masked(url: str) -> str:
    return url.replace("deaduser:deadpass@", "***@").replace("key=k3y", "key=***")
