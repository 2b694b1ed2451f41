"""On call: the roster API and paging by email, with a real SMTP server (aiosmtpd).

The SMTP server runs in this test process (aiosmtpd's controller, on 127.0.0.1) and
keeps every message it accepts; it can be told to refuse the next messages with a
temporary failure. Alerts are raised as users raise them (a nurse posts a crisis
reading); a deadline passes by moving it into the past, then escalation runs.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from email.message import EmailMessage
from typing import Any, cast

import asyncpg
import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from safetyreport.alerts.escalation import escalate_due
from safetyreport.alerts.paging import PAGING_TASK, page_round, paging_task
from safetyreport.audit.chain import SYSTEM_CLI
from safetyreport.auth.permissions import Role
from safetyreport.auth.users import add_clinic, add_user
from safetyreport.db.embedded import app_url
from safetyreport.db.pool import create_pool, transaction
from safetyreport.settings import PagingSettings, Settings, SettingsError
from tests.helpers.reports import bp_report
from tests.helpers.service import running_app
from tests.helpers.waiting import eventually
from tests.helpers.world import PASSWORD

Headers = dict[str, str]
SENDER = "safetyreport@clinic.example"
ROSTER = [
    {"user": "olga", "email": "olga@c1.example"},
    {"user": "sam", "email": "sam.pager@c1.example"},
]


# --- the SMTP server ------------------------------------------------------------------


@dataclass
class Mailbox:
    """What the SMTP server accepted; ``refuse`` next messages get a 451."""

    refuse: int = 0
    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # aiosmtpd calls the handler's hooks by these names.
    async def handle_DATA(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        with self._lock:
            if self.refuse:
                self.refuse -= 1
                return "451 4.3.0 Mailbox busy, try again later"
            content = cast(bytes, envelope.content)
            parsed = email.message_from_bytes(content, policy=email.policy.default)
            self.messages.append((list(envelope.rcpt_tos), parsed))
        return "250 OK"

    def received(self) -> list[tuple[list[str], EmailMessage]]:
        with self._lock:
            return list(self.messages)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield mailbox, port
    controller.stop()


def with_paging(settings: Settings, port: int, *, max_attempts: int = 3) -> Settings:
    paging = PagingSettings(smtp_host="127.0.0.1", smtp_port=port, sender=SENDER, tls="none")
    alerts = replace(
        settings.alerts,
        delivery_max_attempts=max_attempts,
        delivery_backoff_base=timedelta(seconds=0.1),
        delivery_backoff_cap=timedelta(seconds=0.5),
    )
    return replace(settings, paging=paging, alerts=alerts)


# --- the service ----------------------------------------------------------------------


async def seed(db: asyncpg.Connection[Any]) -> None:
    await add_clinic(db, "C1", "Clinic One", SYSTEM_CLI)
    await add_clinic(db, "C2", "Clinic Two", SYSTEM_CLI)
    users: tuple[tuple[str, Role, list[str]], ...] = (
        ("nina", "nurse", ["C1"]),
        ("adam", "admin", ["C1"]),
        ("olga", "safety_officer", ["C1"]),
        ("sam", "safety_officer", ["C1"]),
        ("zed", "admin", ["C2"]),
    )
    for username, role, clinics in users:
        await add_user(
            db,
            username=username,
            password=PASSWORD,
            role=role,
            clinics=clinics,
            all_clinics=False,
            actor=SYSTEM_CLI,
        )


async def login(http: httpx.AsyncClient, username: str) -> Headers:
    response = await http.post(
        "/api/v1/auth/login", json={"username": username, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


async def set_roster(http: httpx.AsyncClient, entries: list[dict[str, str]]) -> None:
    response = await http.put(
        "/api/v1/clinics/C1/on-call", json={"entries": entries}, headers=await login(http, "adam")
    )
    assert response.status_code == 200, response.text


async def raise_alerts(
    http: httpx.AsyncClient, db: asyncpg.Connection[Any], *patients: str
) -> list[uuid.UUID]:
    """A crisis reading with chest pain for each patient: a critical alert each."""
    headers = await login(http, "nina")
    ids: list[uuid.UUID] = []
    for patient in patients:
        response = await http.post(
            "/api/v1/reports",
            json=bp_report(
                patient_ref=patient, systolic=185, diastolic=100, symptoms=["chest_pain"]
            ),
            headers={**headers, "Idempotency-Key": f"crisis-{patient}"},
        )
        assert response.status_code == 201, response.text
        ids.append(
            await db.fetchval(
                "SELECT a.id FROM alerts a JOIN alert_reports ar ON ar.alert_id = a.id"
                " WHERE ar.report_id = $1 AND a.rule_id = 'bp-hypertensive-crisis'",
                uuid.UUID(response.json()["id"]),
            )
        )
    assert None not in ids
    return ids


async def pages(db: asyncpg.Connection[Any]) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM pages ORDER BY created_at, level")


async def attempts_of(db: asyncpg.Connection[Any], page_id: uuid.UUID) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM page_attempts WHERE page_id = $1 ORDER BY id", page_id)


# --- the roster -----------------------------------------------------------------------


async def test_admins_replace_and_read_the_roster_in_order_audited(
    db: asyncpg.Connection[Any], settings: Settings
) -> None:
    await seed(db)
    async with running_app(settings) as http:
        adam = await login(http, "adam")
        response = await http.put(
            "/api/v1/clinics/C1/on-call",
            json={"entries": list(reversed(ROSTER))},
            headers=adam,
        )
        assert response.status_code == 200, response.text
        response = await http.get("/api/v1/clinics/C1/on-call", headers=adam)
        assert response.status_code == 200
        roster = response.json()
        assert roster["clinic"] == "C1"
        assert [(e["position"], e["user"], e["email"]) for e in roster["entries"]] == [
            (1, "sam", "sam.pager@c1.example"),
            (2, "olga", "olga@c1.example"),
        ]

    rows = await db.fetch(
        "SELECT action, actor, details->'after'->0->>'user' AS first,"
        " jsonb_array_length(details->'before') AS before"
        " FROM audit_entries WHERE clinic = 'C1' AND action LIKE 'on_call.%' ORDER BY seq"
    )
    assert [(r["action"], r["actor"]) for r in rows] == [
        ("on_call.replaced", "adam"),
        ("on_call.read", "adam"),
    ]
    assert (rows[0]["first"], rows[0]["before"]) == ("sam", 0)


async def test_the_roster_takes_only_the_clinics_officers_and_admins(
    db: asyncpg.Connection[Any], settings: Settings
) -> None:
    await seed(db)
    async with running_app(settings) as http:
        adam = await login(http, "adam")
        bad = [
            {"user": "nina", "email": "nina@c1.example"},  # a nurse acknowledges nothing
            {"user": "zed", "email": "zed@c2.example"},  # an admin of another clinic
            {"user": "olga", "email": "not an address"},
            {"user": "olga", "email": "olga@c1.example"},
        ]
        response = await http.put("/api/v1/clinics/C1/on-call", json={"entries": bad}, headers=adam)
        assert response.status_code == 422, response.text
        fields = {(e["field"], e["rule"]) for e in response.json()["errors"]}
        assert fields == {
            ("entries[0].user", "on_call_eligible"),
            ("entries[1].user", "on_call_eligible"),
            ("entries[2].email", "email"),
            ("entries[3].user", "unique"),
        }
        assert await db.fetchval("SELECT count(*) FROM on_call") == 0


async def test_another_clinics_roster_is_not_found_and_nurses_are_refused(
    db: asyncpg.Connection[Any], settings: Settings
) -> None:
    await seed(db)
    async with running_app(settings) as http:
        await set_roster(http, ROSTER)
        zed = await login(http, "zed")
        assert (await http.get("/api/v1/clinics/C1/on-call", headers=zed)).status_code == 404
        put = await http.put("/api/v1/clinics/C1/on-call", json={"entries": []}, headers=zed)
        assert put.status_code == 404
        nina = await login(http, "nina")
        assert (await http.get("/api/v1/clinics/C1/on-call", headers=nina)).status_code == 403
        # zed's listing of pages shows none of C1's.
        listed = await http.get("/api/v1/pages", headers=zed)
        assert listed.status_code == 200
        assert listed.json()["items"] == []
        assert (await http.get("/api/v1/pages?clinic=C1", headers=zed)).status_code == 404
    assert await db.fetchval("SELECT count(*) FROM on_call") == 2


# --- paging ---------------------------------------------------------------------------


async def test_a_critical_alert_pages_the_first_on_call_then_the_next_after_the_deadline(
    db: asyncpg.Connection[Any], settings: Settings, smtp: tuple[Mailbox, int]
) -> None:
    mailbox, port = smtp
    settings = with_paging(settings, port)
    await seed(db)
    async with running_app(settings) as http:
        await set_roster(http, ROSTER)
        [alert_id] = await raise_alerts(http, db, "PT-001")

        async def delivered(count: int) -> bool:
            return len(mailbox.received()) >= count

        await eventually(lambda: delivered(1), "the first page to reach the SMTP server")
        [(recipients, first)] = mailbox.received()
        assert recipients == ["olga@c1.example"]
        assert first["To"] == "olga@c1.example"
        assert first["From"] == SENDER
        subject = str(first["Subject"])
        assert "CRITICAL" in subject
        assert "C1" in subject
        rule_name = await db.fetchval(
            "SELECT name FROM alert_rules WHERE id = 'bp-hypertensive-crisis'"
        )
        assert rule_name in subject
        body = first.get_content()
        assert f"/alerts/{alert_id}" in body
        assert "Clinic One" in body
        assert "critical" in body
        assert "PT-001" not in body  # the patient stays in the service

        # Nobody acknowledges: the deadline passes and escalation runs.
        await db.execute(
            "UPDATE alerts SET ack_deadline = now() - interval '1 second' WHERE id = $1",
            alert_id,
        )
        pool = await create_pool(app_url(settings, settings.database.url or ""), max_size=2)
        try:
            async with transaction(pool) as conn:
                assert await escalate_due(conn, settings.alerts) == 1
        finally:
            await pool.close()
        await eventually(lambda: delivered(2), "the next on-call person to be paged")
        recipients, second = mailbox.received()[1]
        assert recipients == ["sam.pager@c1.example"]
        assert "escalated" in str(second["Subject"])

        # The ledger, read by an admin (and the read audited).
        listed = await http.get(
            f"/api/v1/pages?alert={alert_id}", headers=await login(http, "adam")
        )
        assert listed.status_code == 200, listed.text
        items = listed.json()["items"]

    assert [(i["level"], i["user"], i["status"]) for i in items] == [
        (1, "sam", "sent"),
        (0, "olga", "sent"),
    ]
    for item in items:
        [attempt] = item["ledger"]
        assert attempt["error"] is None
    rows = await pages(db)
    assert [f"<{r['id']}@safetyreport>" for r in rows] == [
        m["Message-ID"] for _, m in mailbox.received()
    ]
    audited = await db.fetchval(
        "SELECT count(*) FROM audit_entries WHERE clinic = 'C1' AND action = 'page.listed'"
    )
    assert audited == 1
    # Each page is on the alert's history, in order.
    paged = await db.fetch(
        "SELECT actor, details->>'user' AS user, (details->>'level')::int AS level"
        " FROM alert_events WHERE alert_id = $1 AND action = 'paged' ORDER BY id",
        alert_id,
    )
    assert [(e["actor"], e["user"], e["level"]) for e in paged] == [
        ("system:paging", "olga", 0),
        ("system:paging", "sam", 1),
    ]


async def test_past_the_end_of_the_roster_paging_starts_again_without_disabled_users(
    db: asyncpg.Connection[Any], settings: Settings, smtp: tuple[Mailbox, int]
) -> None:
    mailbox, port = smtp
    paged = with_paging(settings, port)
    await seed(db)
    # The app runs with paging off; this test runs the pager's rounds itself.
    async with running_app(settings) as http:
        await set_roster(http, ROSTER)
        [alert_id] = await raise_alerts(http, db, "PT-001")
    pool = await create_pool(app_url(settings, settings.database.url or ""), max_size=2)

    async def deadline_passes() -> None:
        await db.execute(
            "UPDATE alerts SET ack_deadline = now() - interval '1 second' WHERE id = $1",
            alert_id,
        )
        async with transaction(pool) as conn:
            assert await escalate_due(conn, paged.alerts) == 1
        await page_round(pool, paged.paging, paged.alerts)

    try:
        await page_round(pool, paged.paging, paged.alerts)
        await deadline_passes()
        await deadline_passes()
        await db.execute("UPDATE users SET disabled_at = now() WHERE username = 'olga'")
        await deadline_passes()
    finally:
        await pool.close()
    assert [to for to, _ in mailbox.received()] == [
        ["olga@c1.example"],
        ["sam.pager@c1.example"],
        ["olga@c1.example"],
        ["sam.pager@c1.example"],
    ]
    assert [(r["level"], r["status"]) for r in await pages(db)] == [
        (0, "sent"),
        (1, "sent"),
        (2, "sent"),
        (3, "sent"),
    ]


async def test_an_acknowledged_alert_pages_no_one_more(
    db: asyncpg.Connection[Any], settings: Settings, smtp: tuple[Mailbox, int]
) -> None:
    mailbox, port = smtp
    mailbox.refuse = 1
    paged = with_paging(settings, port)
    url = app_url(settings, settings.database.url or "")
    await seed(db)
    # The app runs with paging off; this test runs the pager's rounds itself.
    async with running_app(settings) as http:
        await set_roster(http, ROSTER)
        [alert_id] = await raise_alerts(http, db, "PT-001")
        pool = await create_pool(url, max_size=2)
        try:
            # The first attempt is refused: the page waits for its retry.
            assert await page_round(pool, paged.paging, paged.alerts) >= 1
            [page] = await pages(db)
            assert (page["status"], page["attempts"]) == ("pending", 1)
            response = await http.post(
                f"/api/v1/alerts/{alert_id}/acknowledge",
                json={},
                headers=await login(http, "olga"),
            )
            assert response.status_code == 200, response.text
            # Acknowledged before the retry: the page is cancelled, the alert no longer
            # escalates, and nobody else is paged.
            await db.execute("UPDATE pages SET next_attempt_at = now() WHERE id = $1", page["id"])
            await page_round(pool, paged.paging, paged.alerts)
            async with transaction(pool) as conn:
                assert await escalate_due(conn, paged.alerts) == 0
            await page_round(pool, paged.paging, paged.alerts)
        finally:
            await pool.close()
    [page] = await pages(db)
    assert page["status"] == "cancelled"
    assert mailbox.received() == []


async def test_an_smtp_failure_is_recorded_and_retried(
    db: asyncpg.Connection[Any], settings: Settings, smtp: tuple[Mailbox, int]
) -> None:
    mailbox, port = smtp
    mailbox.refuse = 1
    settings = with_paging(settings, port)
    await seed(db)
    async with running_app(settings) as http:
        await set_roster(http, ROSTER)
        await raise_alerts(http, db, "PT-001")

        async def sent() -> bool:
            return [r["status"] for r in await pages(db)] == ["sent"]

        await eventually(sent, "the page to be sent after a refusal")

    [page] = await pages(db)
    assert page["attempts"] == 2
    failed, succeeded = await attempts_of(db, page["id"])
    assert "451" in failed["error"]
    assert succeeded["error"] is None
    [(recipients, _)] = mailbox.received()
    assert recipients == ["olga@c1.example"]


async def test_an_unreachable_smtp_server_fails_the_page_after_the_last_attempt(
    db: asyncpg.Connection[Any], settings: Settings
) -> None:
    settings = with_paging(settings, free_port(), max_attempts=2)
    await seed(db)
    async with running_app(settings) as http:
        await set_roster(http, ROSTER)
        await raise_alerts(http, db, "PT-001")

        async def failed() -> bool:
            return [r["status"] for r in await pages(db)] == ["failed"]

        await eventually(failed, "the page to fail")

    [page] = await pages(db)
    errors = [a["error"] for a in await attempts_of(db, page["id"])]
    assert len(errors) == 2
    assert all(errors)


async def test_two_senders_never_page_twice(
    db: asyncpg.Connection[Any], settings: Settings, smtp: tuple[Mailbox, int]
) -> None:
    mailbox, port = smtp
    patients = [f"PT-{n:03}" for n in range(1, 9)]
    # The app raises the alerts with paging off; two senders, as two service processes
    # would, then race to page them.
    await seed(db)
    async with running_app(settings) as http:
        await set_roster(http, ROSTER)
        alert_ids = await raise_alerts(http, db, *patients)
    paged = with_paging(settings, port)
    url = app_url(settings, settings.database.url or "")
    pools = [await create_pool(url, max_size=4) for _ in range(2)]

    async def drain(pool: asyncpg.Pool) -> None:
        # Rounds until one finds nothing to do; the two drains interleave at every await.
        done = await page_round(pool, paged.paging, paged.alerts)
        while done:
            done = await page_round(pool, paged.paging, paged.alerts)

    try:
        await asyncio.gather(*(drain(pool) for pool in pools))
    finally:
        for pool in pools:
            await pool.close()

    # The crisis alerts, and any other critical or urgent alert they raised (a cluster).
    paged_alerts = await db.fetch(
        "SELECT id FROM alerts WHERE status = 'open' AND severity IN ('critical', 'urgent')"
    )
    assert set(alert_ids) <= {a["id"] for a in paged_alerts}
    rows = await pages(db)
    assert sorted(r["alert_id"] for r in rows) == sorted(a["id"] for a in paged_alerts)
    assert all(r["status"] == "sent" and r["attempts"] == 1 for r in rows)
    received = mailbox.received()
    assert len(received) == len(rows)
    assert {m["Message-ID"] for _, m in received} == {f"<{r['id']}@safetyreport>" for r in rows}


# --- settings -------------------------------------------------------------------------


def test_paging_is_off_without_an_smtp_host() -> None:
    settings = Settings.from_env({})
    assert not settings.paging.enabled
    assert paging_task(settings.paging, settings.alerts) is None
    on = Settings.from_env(
        {"SAFETYREPORT_SMTP_HOST": "mail.example", "SAFETYREPORT_SMTP_SENDER": SENDER}
    )
    task = paging_task(on.paging, on.alerts)
    assert task is not None
    assert task.name == PAGING_TASK
    assert (on.paging.smtp_port, on.paging.tls) == (587, "starttls")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SAFETYREPORT_SMTP_HOST": "mail.example"}, "SAFETYREPORT_SMTP_SENDER"),
        (
            {
                "SAFETYREPORT_SMTP_HOST": "mail.example",
                "SAFETYREPORT_SMTP_SENDER": SENDER,
                "SAFETYREPORT_SMTP_TLS": "maybe",
            },
            "SAFETYREPORT_SMTP_TLS",
        ),
        (
            {
                "SAFETYREPORT_SMTP_HOST": "mail.example",
                "SAFETYREPORT_SMTP_SENDER": SENDER,
                "SAFETYREPORT_SMTP_USERNAME": "pager",
            },
            "SAFETYREPORT_SMTP_PASSWORD",
        ),
    ],
)
def test_smtp_settings_are_checked(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://safety.clinic.example", "https://safety.clinic.example"),
        ("https://safety.clinic.example/", "https://safety.clinic.example"),
        ("http://127.0.0.1:8000/safety/", "http://127.0.0.1:8000/safety"),
        ("", None),
    ],
)
def test_the_public_url_is_read_without_its_trailing_slash(raw: str, expected: str | None) -> None:
    assert Settings.from_env({"SAFETYREPORT_PUBLIC_URL": raw}).paging.public_url == expected


@pytest.mark.parametrize(
    "raw",
    [
        "ftp://safety.clinic.example",
        "safety.clinic.example",
        "https://",
        "https://safety.clinic.example/?next=/alerts",
        "https://safety.clinic.example/#top",
        "https://user:secret@safety.clinic.example",
    ],
)
def test_a_public_url_that_is_not_plain_http_or_https_is_refused(raw: str) -> None:
    with pytest.raises(SettingsError, match="SAFETYREPORT_PUBLIC_URL"):
        Settings.from_env({"SAFETYREPORT_PUBLIC_URL": raw})


def of_alert(mailbox: Mailbox, alert_id: uuid.UUID) -> list[tuple[list[str], EmailMessage]]:
    return [(to, m) for to, m in mailbox.received() if f"Alert:     {alert_id}" in m.get_content()]


async def test_a_renewed_alert_pages_again_with_a_link_to_the_public_url(
    db: asyncpg.Connection[Any], settings: Settings, smtp: tuple[Mailbox, int]
) -> None:
    mailbox, port = smtp
    paged = with_paging(settings, port)
    paged = replace(paged, paging=replace(paged.paging, public_url="https://safety.clinic.example"))
    await seed(db)
    # The app runs with paging off; this test runs the pager's rounds itself.
    async with running_app(settings) as http:
        await set_roster(http, ROSTER)
        [alert_id] = await raise_alerts(http, db, "PT-001")
        pool = await create_pool(app_url(settings, settings.database.url or ""), max_size=2)
        try:
            await page_round(pool, paged.paging, paged.alerts)
            olga = await login(http, "olga")
            acknowledged = await http.post(
                f"/api/v1/alerts/{alert_id}/acknowledge", json={}, headers=olga
            )
            assert acknowledged.status_code == 200, acknowledged.text
            # Acknowledged: nothing more to page.
            await page_round(pool, paged.paging, paged.alerts)
            assert len(of_alert(mailbox, alert_id)) == 1
            # A second crisis reading joins the acknowledged alert: it is open again and
            # the on-call person is paged again.
            response = await http.post(
                "/api/v1/reports",
                json=bp_report(
                    patient_ref="PT-001", systolic=185, diastolic=100, symptoms=["chest_pain"]
                ),
                headers={**await login(http, "nina"), "Idempotency-Key": "crisis-again"},
            )
            assert response.status_code == 201, response.text
            await page_round(pool, paged.paging, paged.alerts)
            # Nothing new: the renewal's page is not written twice.
            await page_round(pool, paged.paging, paged.alerts)
        finally:
            await pool.close()

    # (Another alert the second reading raised, if any, is paged on its own.)
    received = of_alert(mailbox, alert_id)
    assert [to for to, _ in received] == [["olga@c1.example"], ["olga@c1.example"]]
    first, again = (m for _, m in received)
    link = f"https://safety.clinic.example/alerts/{alert_id}"
    assert link in first.get_content()
    assert link in again.get_content()
    assert "renewed" not in str(first["Subject"])
    assert "renewed" in str(again["Subject"])
    rows = [r for r in await pages(db) if r["alert_id"] == alert_id]
    assert [(r["alert_id"], r["renewal"], r["level"], r["status"]) for r in rows] == [
        (alert_id, 0, 0, "sent"),
        (alert_id, 1, 0, "sent"),
    ]
    paged_events = await db.fetch(
        "SELECT (details->>'renewal')::int AS renewal FROM alert_events"
        " WHERE alert_id = $1 AND action = 'paged' ORDER BY id",
        alert_id,
    )
    assert [e["renewal"] for e in paged_events] == [0, 1]


async def test_without_a_public_url_the_page_gives_the_alerts_path(
    db: asyncpg.Connection[Any], settings: Settings, smtp: tuple[Mailbox, int]
) -> None:
    mailbox, port = smtp
    paged = with_paging(settings, port)
    assert paged.paging.public_url is None
    await seed(db)
    async with running_app(settings) as http:
        await set_roster(http, ROSTER)
        [alert_id] = await raise_alerts(http, db, "PT-001")
    pool = await create_pool(app_url(settings, settings.database.url or ""), max_size=2)
    try:
        await page_round(pool, paged.paging, paged.alerts)
    finally:
        await pool.close()
    [(_, page)] = mailbox.received()
    assert f"Open it:   /alerts/{alert_id}\r\n" in page.get_content()
