"""GET /metrics and /health/ready, against a real PostgreSQL.

Scrapes are parsed with prometheus_client's own parser. Counters are compared with the
database (what committed), as deltas from a scrape taken before: each test's app has a
registry of its own, but the delta says what the action moved.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import asyncpg
import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from prometheus_client.parser import text_string_to_metric_families

from safetyreport.app import create_app
from safetyreport.audit.chain import SYSTEM_CLI
from safetyreport.auth.permissions import Role
from safetyreport.auth.users import add_clinic, add_user
from safetyreport.db.pool import create_pool
from safetyreport.metrics import sampling
from safetyreport.metrics.registry import PoolUsage
from safetyreport.settings import PagingSettings, Settings, SettingsError
from tests.helpers.processes import serving
from tests.helpers.reports import adverse_report, bp_report
from tests.helpers.service import running_app
from tests.helpers.waiting import eventually
from tests.helpers.world import PASSWORD

TOKEN = "metrics-token-for-the-tests-0123456789abcdef"
SCRAPER = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "metrics-test-webhook-secret-32-bytes+"
PATIENT = "PT-SECRET-4711"
Headers = dict[str, str]
Labels = dict[str, str]


# --- the service and its scrapes ---------------------------------------------------------


def with_metrics(settings: Settings) -> Settings:
    return replace(settings, metrics_token=TOKEN)


class Scrape:
    """One scrape of /metrics, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when it is absent (a counter never incremented)."""
        return self.find(name, **labels) or 0.0

    def find(self, name: str, **labels: str) -> float | None:
        matching = [
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        return sum(matching) if matching else None

    def labels_of(self, name: str) -> list[Labels]:
        return [dict(s.labels) for s in self.samples if s.name == name]


async def scrape(http: httpx.AsyncClient) -> Scrape:
    response = await http.get("/metrics", headers=SCRAPER)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return Scrape(response.text)


async def seed(db: asyncpg.Connection[Any]) -> None:
    await add_clinic(db, "C1", "Clinic C1", SYSTEM_CLI)
    users: tuple[tuple[str, Role], ...] = (
        ("nina", "nurse"),
        ("olga", "safety_officer"),
        ("adam", "admin"),
    )
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


async def login(http: httpx.AsyncClient, username: str = "nina") -> Headers:
    response = await http.post(
        "/api/v1/auth/login", json={"username": username, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


async def submit(http: httpx.AsyncClient, headers: Headers, body: dict[str, Any]) -> str:
    response = await http.post(
        "/api/v1/reports", json=body, headers={**headers, "Idempotency-Key": str(uuid.uuid4())}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def crisis(patient: str = PATIENT) -> dict[str, Any]:
    """185/100 with chest pain: a critical alert (bp-hypertensive-crisis)."""
    return bp_report(patient_ref=patient, systolic=185, diastolic=100, symptoms=["chest_pain"])


async def alerts_by_severity(db: asyncpg.Connection[Any]) -> dict[str, int]:
    rows = await db.fetch("SELECT severity, count(*) AS n FROM alerts GROUP BY severity")
    return {r["severity"]: r["n"] for r in rows}


# --- access ---------------------------------------------------------------------------------


async def test_metrics_are_off_without_a_token(settings: Settings) -> None:
    async with running_app(settings) as http:
        response = await http.get("/metrics", headers=SCRAPER)
    assert response.status_code == 404, response.text


async def test_metrics_need_the_token_as_a_bearer(
    db: asyncpg.Connection[Any], settings: Settings
) -> None:
    await seed(db)
    async with running_app(with_metrics(settings)) as http:
        headers = await login(http)
        refused = [
            await http.get("/metrics"),
            await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN[:-1]}x"}),
            await http.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"}),
            # A user's session token is not the metrics token.
            await http.get("/metrics", headers=headers),
        ]
        assert [r.status_code for r in refused] == [401] * 4, [r.text for r in refused]
        assert (await scrape(http)).find("safetyreport_database_up") == 1


def test_the_metrics_token_is_long_enough() -> None:
    assert Settings.from_env({}).metrics_token is None
    assert Settings.from_env({"SAFETYREPORT_METRICS_TOKEN": TOKEN}).metrics_token == TOKEN
    with pytest.raises(SettingsError, match="at least 32"):
        Settings.from_env({"SAFETYREPORT_METRICS_TOKEN": "short"})


def test_metrics_are_not_in_the_api_description() -> None:
    schema = create_app(Settings.from_env({})).openapi_schema.to_schema()
    assert "/metrics" not in schema["paths"]
    assert "/health/ready" in schema["paths"]


# --- counters ---------------------------------------------------------------------------


async def test_reports_and_alerts_are_counted_as_they_commit(
    db: asyncpg.Connection[Any], settings: Settings
) -> None:
    await seed(db)
    async with running_app(with_metrics(settings)) as http:
        before = await scrape(http)
        nurse = await login(http)
        await submit(http, nurse, crisis())
        await submit(http, nurse, crisis("PT-002"))
        await submit(http, nurse, adverse_report(patient_ref="PT-003"))
        # A retry with the same key replays the answer: nothing more is stored.
        body, key = crisis("PT-004"), {"Idempotency-Key": "the-same-key"}
        for _ in range(2):
            response = await http.post("/api/v1/reports", json=body, headers={**nurse, **key})
            assert response.status_code == 201, response.text
        after = await scrape(http)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    stored = "safetyreport_reports_stored_total"
    assert moved(stored, kind="blood_pressure") == 3
    assert moved(stored, kind="adverse_event") == 1
    assert moved(stored) == await db.fetchval("SELECT count(*) FROM reports") == 4
    raised = await alerts_by_severity(db)
    assert raised.get("critical", 0) >= 3
    for severity in ("critical", "urgent", "high", "info"):
        assert moved("safetyreport_alerts_raised_total", severity=severity) == raised.get(
            severity, 0
        ), severity


async def test_a_rolled_back_report_is_not_counted(
    db: asyncpg.Connection[Any], settings: Settings
) -> None:
    """The report and its alerts are written, then the transaction fails before it
    commits (storing the idempotency key raises): nothing committed, nothing counted."""
    await seed(db)
    await db.execute(
        """
        CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
        $$BEGIN RAISE EXCEPTION 'refused by the test'; END$$;
        CREATE TRIGGER refuse BEFORE INSERT ON idempotency_keys
        FOR EACH ROW EXECUTE FUNCTION refuse();
        """
    )
    async with running_app(with_metrics(settings)) as http:
        nurse = await login(http)
        response = await http.post(
            "/api/v1/reports", json=crisis(), headers={**nurse, "Idempotency-Key": "k-1"}
        )
        assert response.status_code == 500, response.text
        after = await scrape(http)
    assert await db.fetchval("SELECT count(*) FROM reports") == 0
    assert after.find("safetyreport_reports_stored_total") is None
    assert after.find("safetyreport_alerts_raised_total") is None
    assert after.value("safetyreport_http_requests_total", status="500") == 1


async def test_escalations_are_counted(db: asyncpg.Connection[Any], settings: Settings) -> None:
    await seed(db)
    settings = replace(
        settings, alerts=replace(settings.alerts, escalation_interval=timedelta(seconds=0.05))
    )
    async with running_app(with_metrics(settings)) as http:
        await submit(http, await login(http), crisis())
        # The deadline passes without an acknowledgement.
        await db.execute(
            "UPDATE alerts SET ack_deadline = now() - interval '1 minute'"
            " WHERE rule_id = 'bp-hypertensive-crisis'"
        )

        async def escalated() -> bool:
            scraped = await scrape(http)
            return scraped.value("safetyreport_alert_escalations_total", severity="critical") >= 1

        await eventually(escalated, "the escalation to be counted")
        scraped = await scrape(http)
    levels = await db.fetchval("SELECT sum(escalation_level) FROM alerts")
    assert scraped.value("safetyreport_alert_escalations_total") == levels


def with_webhooks(settings: Settings, url: str, *, max_attempts: int) -> Settings:
    alerts = replace(
        settings.alerts,
        webhook_urls=(url,),
        webhook_secret=SECRET,
        delivery_max_attempts=max_attempts,
        delivery_backoff_base=timedelta(seconds=0.05),
        delivery_backoff_cap=timedelta(seconds=0.2),
    )
    return with_metrics(replace(settings, alerts=alerts))


def free_port() -> int:
    """A port nobody listens on: it was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_failed_webhook_deliveries_are_counted_by_outcome(
    db: asyncpg.Connection[Any], settings: Settings
) -> None:
    await seed(db)
    url = f"http://127.0.0.1:{free_port()}/hook"
    async with running_app(with_webhooks(settings, url, max_attempts=2)) as http:
        await submit(http, await login(http), crisis())
        notes: int = await db.fetchval("SELECT count(*) FROM notifications")
        assert notes >= 1

        async def all_failed() -> bool:
            scraped = await scrape(http)
            failed = "safetyreport_notification_deliveries_total"
            return scraped.value(failed, channel="webhook", outcome="failed") == notes

        await eventually(all_failed, "every notification to fail")
        scraped = await scrape(http)
    deliveries = "safetyreport_notification_deliveries_total"
    assert scraped.value(deliveries, channel="webhook", outcome="retrying") == notes
    assert scraped.value(deliveries, channel="webhook", outcome="delivered") == 0
    attempts = await db.fetchval("SELECT count(*) FROM notification_attempts")
    assert scraped.value(deliveries, channel="webhook") == attempts == 2 * notes
    # Nothing waits any more: the failed rows left the outbox.
    assert scraped.value("safetyreport_outbox_pending", outbox="webhooks") == 0


async def test_the_outbox_age_shows_notifications_waiting(
    db: asyncpg.Connection[Any], settings: Settings
) -> None:
    await seed(db)
    # Enqueued, never sent: this app runs no sender (no secret).
    settings = with_webhooks(settings, "http://127.0.0.1:9/hook", max_attempts=2)
    settings = replace(settings, alerts=replace(settings.alerts, webhook_secret=None))
    async with running_app(settings) as http:
        empty = await scrape(http)
        await submit(http, await login(http), crisis())
        await db.execute("UPDATE notifications SET created_at = now() - interval '90 seconds'")
        waiting = await scrape(http)
    assert empty.value("safetyreport_outbox_oldest_pending_age_seconds", outbox="webhooks") == 0
    notes = await db.fetchval("SELECT count(*) FROM notifications WHERE status = 'pending'")
    assert waiting.value("safetyreport_outbox_pending", outbox="webhooks") == notes >= 1
    age = waiting.value("safetyreport_outbox_oldest_pending_age_seconds", outbox="webhooks")
    assert 90 <= age < 3600
    assert waiting.value("safetyreport_outbox_pending", outbox="pages") == 0


class Mailbox:
    """An SMTP server's handler (aiosmtpd) that accepts every message."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(  # noqa: N802 (aiosmtpd calls it by this name)
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        content = cast(bytes, envelope.content)
        self.messages.append(email.message_from_bytes(content, policy=email.policy.default))
        return "250 OK"


@pytest.fixture
def smtp_port() -> Iterator[int]:
    port = free_port()
    controller = Controller(Mailbox(), hostname="127.0.0.1", port=port)
    controller.start()
    yield port
    controller.stop()


async def test_pages_are_counted_sent_and_failed(
    db: asyncpg.Connection[Any], settings: Settings, smtp_port: int
) -> None:
    await seed(db)
    roster = {"entries": [{"user": "olga", "email": "olga@c1.example"}]}
    for port, outcome in ((smtp_port, "delivered"), (free_port(), "failed")):
        paging = PagingSettings(
            smtp_host="127.0.0.1", smtp_port=port, sender="safety@c1.example", tls="none"
        )
        alerts = replace(
            settings.alerts,
            delivery_max_attempts=1,
            delivery_backoff_base=timedelta(seconds=0.05),
        )
        app_settings = with_metrics(replace(settings, paging=paging, alerts=alerts))
        async with running_app(app_settings) as http:
            admin = await login(http, "adam")
            response = await http.put("/api/v1/clinics/C1/on-call", json=roster, headers=admin)
            assert response.status_code == 200, response.text
            await submit(http, await login(http), crisis(f"PT-{outcome}"))

            async def counted(outcome: str = outcome) -> bool:
                scraped = await scrape(http)
                pages = "safetyreport_notification_deliveries_total"
                return scraped.value(pages, channel="page", outcome=outcome) >= 1

            await eventually(counted, f"a page to be counted {outcome}")
    statuses = await db.fetch("SELECT status FROM pages ORDER BY created_at")
    assert {r["status"] for r in statuses} == {"sent", "failed"}


# --- labels, gauges, readiness -------------------------------------------------------------


async def test_routes_are_labelled_by_template_and_no_patient_reference_shows(
    db: asyncpg.Connection[Any], settings: Settings
) -> None:
    await seed(db)
    async with running_app(with_metrics(settings)) as http:
        nurse = await login(http)
        report_id = await submit(http, nurse, crisis())
        assert (await http.get(f"/api/v1/reports/{report_id}", headers=nurse)).status_code == 200
        listed = await http.get("/api/v1/reports", params={"patient_ref": PATIENT}, headers=nurse)
        assert listed.status_code == 200, listed.text
        unknown = await http.get(f"/nothing/here/{PATIENT}/{report_id}", headers=nurse)
        assert unknown.status_code == 404
        invented = await http.request("PT-METHOD", f"/api/v1/reports/{report_id}")
        assert invented.status_code in (400, 405), invented.text
        scraped = await scrape(http)
    requests = "safetyreport_http_requests_total"
    routes = {labels["route"] for labels in scraped.labels_of(requests)}
    assert "/api/v1/reports/{report_id}" in routes
    assert "unmatched" in routes
    assert all(r == "unmatched" or r.startswith("/") for r in routes), routes
    methods = {labels["method"] for labels in scraped.labels_of(requests)}
    assert methods == {"GET", "POST", "other"}, methods
    assert not [r for r in routes if report_id in r or PATIENT in r]
    assert scraped.value(requests, route="/api/v1/reports/{report_id}", status="200") == 1
    assert scraped.value(requests, route="/api/v1/reports", method="POST", status="201") == 1
    duration = "safetyreport_http_request_duration_seconds_count"
    assert scraped.value(duration, route="/api/v1/reports/{report_id}") == 1
    # No patient reference and no id anywhere in what a scraper reads.
    assert PATIENT not in scraped.text
    assert report_id not in scraped.text


async def test_the_database_the_pools_and_the_tasks_are_shown(settings: Settings) -> None:
    async with running_app(with_metrics(settings)) as http:

        async def purged() -> bool:
            scraped = await scrape(http)
            last = "safetyreport_background_task_last_success_timestamp_seconds"
            return scraped.find(last, task="idempotency purge") is not None

        await eventually(purged, "the purge task's first success")
        scraped = await scrape(http)
    assert scraped.find("safetyreport_database_up") == 1
    assert scraped.find("safetyreport_database_primary") == 1
    assert scraped.find("safetyreport_pool_max_size", pool="requests") == 10
    assert scraped.find("safetyreport_pool_size", pool="requests") >= 1  # type: ignore[operator]
    # The scrape itself holds one connection while it reads the pool's state, or none.
    in_use = scraped.find("safetyreport_pool_connections", pool="requests", state="in_use")
    assert in_use is not None
    assert scraped.find("safetyreport_pool_waiters", pool="requests") == 0
    tasks = {labels["task"] for labels in scraped.labels_of("safetyreport_background_task_running")}
    assert {"idempotency purge", "escalation", "audit checkpoints"} <= tasks, tasks
    assert scraped.find("safetyreport_background_task_running", task="escalation") == 1


async def test_the_pool_tells_its_waiters(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire():
            waiting = asyncio.create_task(_hold(pool))

            async def queued() -> bool:
                return sampling.pool_usage(pool).waiting == 1

            await eventually(queued, "the second acquisition to wait")
            assert sampling.pool_usage(pool) == PoolUsage(size=1, idle=0, max_size=1, waiting=1)
        await waiting
        usage = sampling.pool_usage(pool)
        assert (usage.waiting, usage.in_use) == (0, 0)
    finally:
        await pool.close()


async def _hold(pool: asyncpg.Pool) -> None:
    async with pool.acquire():
        pass


async def test_ready_on_a_primary_and_not_without_a_database(settings: Settings) -> None:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=cast("Any", app))
    async with (
        app.lifespan(),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as http,
    ):
        response = await http.get("/health/ready")
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "ready", "database": "primary"}
        # The pool is gone (as when no server answers): not ready, come back later.
        await app.state.safetyreport.pool.close()
        response = await http.get("/health/ready")
        assert response.status_code == 503, response.text
        assert response.json() == {"status": "not ready", "database": "unreachable"}
        assert int(response.headers["Retry-After"]) > 0


# --- several worker processes ------------------------------------------------------------


@pytest.mark.end_to_end  # starts `safetyreport serve --workers 2`
async def test_every_scrape_adds_up_every_workers_counts(
    db: asyncpg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    """Whichever worker answers a scrape, it counts what every worker did."""
    await seed(db)
    env = {"SAFETYREPORT_METRICS_TOKEN": TOKEN}
    async with serving(database_url, tmp_path, env=env, workers=2) as service:

        async def once(method: str, path: str, **kwargs: Any) -> httpx.Response:
            # A connection of its own each time: the kernel hands it to either worker.
            async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as http:
                return await http.request(method, path, **kwargs)

        reports = 6
        for n in range(reports):
            login = await once(
                "POST", "/api/v1/auth/login", json={"username": "nina", "password": PASSWORD}
            )
            nurse = {"Authorization": f"Bearer {login.json()['token']}"}
            response = await once(
                "POST",
                "/api/v1/reports",
                json=bp_report(patient_ref=f"PT-{n:03}"),
                headers={**nurse, "Idempotency-Key": f"key-{n}"},
            )
            assert response.status_code == 201, response.text
        for _ in range(6):
            response = await once("GET", "/metrics", headers=SCRAPER)
            assert response.status_code == 200, response.text
            scraped = Scrape(response.text)
            stored = scraped.value("safetyreport_reports_stored_total", kind="blood_pressure")
            assert stored == reports, response.text
            posted = scraped.value(
                "safetyreport_http_requests_total", route="/api/v1/reports", status="201"
            )
            assert posted == reports
            assert scraped.find("safetyreport_database_primary") == 1
