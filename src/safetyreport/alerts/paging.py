"""Paging the on-call roster by email (SMTP) for critical and urgent alerts.

An open critical or urgent alert at escalation level L pages the person at position
L + 1 of its clinic's roster (``on_call``): the first when it opens, the next each time
escalation (``escalation.py``) raises its level because nobody acknowledged it in time.
Past the end of the roster it starts again from the first: someone is always paged. A
renewed alert (a new report joined it, ``evaluate.py``; ``alerts.renewals`` counts these)
pages the person at its level again. An acknowledged or resolved alert pages no one.

One background task (``paging``) does two things each round, each in transactions of
its own:

1. It writes a page (an outbox row in ``pages``) for each open alert whose current level
   and renewal has none, and records it as a ``paged`` event on the alert (its history,
   the live stream, the audit trail). ``UNIQUE (alert_id, renewal, level)`` makes this
   idempotent, so
   several service processes write each page once. Pages still waiting when their
   alert is acknowledged or resolved are cancelled.
2. It claims due pages with a lease (``FOR UPDATE SKIP LOCKED``, as webhooks.py does),
   sends them outside any transaction, and records each attempt in ``page_attempts``
   with its outcome: sent, retried with backoff, or failed after
   ``SAFETYREPORT_DELIVERY_MAX_ATTEMPTS``. A sender that dies after sending but before
   recording leaves the page to be sent again when the lease runs out (at least once);
   the Message-ID is the page's id, so a mail client can tell the copies apart.

The email names the clinic, the severity, the rule, the level and the alert's id and
page; not the patient, whose reference stays in the service. Paging is off when no SMTP
host is configured.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime

import aiosmtplib
import asyncpg
import msgspec

from safetyreport import audit
from safetyreport.alerts import events
from safetyreport.alerts.webhooks import retry_delay
from safetyreport.audit.chain import format_time
from safetyreport.background import PeriodicOnPool
from safetyreport.db.pool import Conn, transaction
from safetyreport.ids import new_id
from safetyreport.metrics import facts
from safetyreport.settings import AlertSettings, PagingSettings

_log = logging.getLogger(__name__)

PAGED_SEVERITIES = ("critical", "urgent")
SYSTEM_PAGING = audit.Actor(name="system:paging")
BATCH_SIZE = 20
# Must exceed a round's worst case (one send timeout plus recording).
LEASE = timedelta(seconds=60)
SEND_TIMEOUT_SECONDS = 15.0
POLL_INTERVAL = timedelta(seconds=1)
MAX_ERROR_CHARS = 500
# Its name among the background tasks (/health).
PAGING_TASK = "paging"

# The roster entry for the alert's level: position (level mod roster size) + 1, among
# users not disabled since they were put on it. NULLIF:
# a clinic with no roster gives OFFSET NULL over no rows (no page) rather than an error.
_NEEDING_PAGE = """
SELECT a.id, a.clinic_id, c.code AS clinic, c.name AS clinic_name, a.rule_id,
       r.name AS rule_name, a.severity, a.escalation_level, a.renewals, a.first_seen_at,
       a.ack_deadline, a.report_count, o.position, o.user_id, o.email, u.username
FROM alerts a
JOIN clinics c ON c.id = a.clinic_id
JOIN alert_rules r ON r.id = a.rule_id
JOIN LATERAL (
    SELECT oc.position, oc.user_id, oc.email
    FROM on_call oc JOIN users ou ON ou.id = oc.user_id
    WHERE oc.clinic_id = a.clinic_id AND ou.disabled_at IS NULL
    ORDER BY oc.position
    OFFSET a.escalation_level % NULLIF(
        (SELECT count(*) FROM on_call n JOIN users nu ON nu.id = n.user_id
         WHERE n.clinic_id = a.clinic_id AND nu.disabled_at IS NULL), 0)
    LIMIT 1
) o ON true
JOIN users u ON u.id = o.user_id
WHERE a.status = 'open' AND a.severity = ANY($2::text[])
  AND NOT EXISTS (SELECT 1 FROM pages p
                  WHERE p.alert_id = a.id AND p.renewal = a.renewals
                    AND p.level = a.escalation_level)
ORDER BY a.first_seen_at
LIMIT $1
"""
# Someone acknowledged (or resolved) the alert: a page not yet out would only disturb.
_CANCEL_SETTLED = """
UPDATE pages p SET status = 'cancelled'
FROM alerts a
WHERE p.status = 'pending' AND a.id = p.alert_id AND a.status <> 'open'
"""
_INSERT_PAGE = """
INSERT INTO pages (id, alert_id, clinic_id, renewal, level, position, user_id, email,
                   subject, body)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (alert_id, renewal, level) DO NOTHING
"""
# The lease is taken by pushing next_attempt_at forward; the attempt is counted here so
# that retries stay bounded across crashes.
_CLAIM = """
WITH due AS (
    SELECT id FROM pages
    WHERE status = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE pages p
SET next_attempt_at = now() + $2::interval, attempts = p.attempts + 1
FROM due
WHERE p.id = due.id
RETURNING p.id, p.email, p.subject, p.body, p.attempts
"""
_INSERT_ATTEMPT = """
INSERT INTO page_attempts (page_id, attempted_at, error, duration_ms) VALUES ($1, $2, $3, $4)
"""
_MARK_SENT = "UPDATE pages SET status = 'sent', sent_at = now() WHERE id = $1 AND status <> 'sent'"
# Guarded by the attempt count: a sender that re-claimed the page after our lease ran
# out owns its schedule now.
_MARK_FAILED = """
UPDATE pages SET status = 'failed' WHERE id = $1 AND status = 'pending' AND attempts = $2
"""
_RETRY_LATER = """
UPDATE pages SET next_attempt_at = now() + $3::interval
WHERE id = $1 AND status = 'pending' AND attempts = $2
"""


class ClaimedPage(msgspec.Struct, frozen=True):
    id: uuid.UUID
    email: str
    subject: str
    body: str
    attempts: int


class PageOutcome(msgspec.Struct, frozen=True):
    attempted_at: datetime
    duration_ms: int
    error: str | None = None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _one_line(text: str) -> str:
    """Rule and clinic names on one line: a line break in a header would end it."""
    return _CONTROL.sub(" ", text).strip()


def alert_link(alert_id: uuid.UUID, public_url: str | None) -> str:
    """The alert's page: a full URL with SAFETYREPORT_PUBLIC_URL, else the path."""
    return f"{public_url or ''}/alerts/{alert_id}"


def _compose(row: asyncpg.Record, public_url: str | None) -> tuple[str, str]:
    """The subject and body of the page for an alert at its current level and renewal."""
    severity = str(row["severity"]).upper()
    level = row["escalation_level"]
    why = []
    if row["renewals"]:
        why.append("renewed: a new report joined it")
    if level:
        why.append(f"escalated, level {level}")
    again = f" ({'; '.join(why)})" if why else ""
    subject = _one_line(f"[{severity}] {row['clinic']}: {row['rule_name']}{again}")
    deadline = row["ack_deadline"]
    lines = [
        f"A {row['severity']} alert needs acknowledgement{again}.",
        "",
        f"Clinic:    {row['clinic_name']} ({row['clinic']})",
        f"Severity:  {row['severity']}",
        f"Rule:      {row['rule_name']} ({row['rule_id']})",
        f"Alert:     {row['id']}",
        f"Open it:   {alert_link(row['id'], public_url)}",
        f"Raised:    {format_time(row['first_seen_at'])}",
        f"Reports:   {row['report_count']}",
        f"Acknowledge by: {format_time(deadline) if deadline else 'no deadline'}",
        "",
        f"You are number {row['position']} on {row['clinic']}'s on-call roster. If the",
        "alert is not acknowledged by then, the next person on the roster is paged.",
        "Patient details are in the service, not in this email.",
    ]
    return subject, "\n".join(lines) + "\n"


async def enqueue_pages(
    conn: Conn,
    settings: AlertSettings,
    *,
    limit: int = BATCH_SIZE,
    public_url: str | None = None,
) -> int:
    """Write a page for each open critical or urgent alert whose level (in its current
    renewal) has none, and cancel pending pages of alerts no longer open; how many were
    written. ``public_url``: where the email's link points (SAFETYREPORT_PUBLIC_URL).

    Each page is also an event on its alert (history, live stream, audit entry).
    """
    await conn.execute(_CANCEL_SETTLED)
    rows = await conn.fetch(_NEEDING_PAGE, limit, list(PAGED_SEVERITIES))
    if not rows:
        return 0
    # Chains before alerts, as report submissions and escalation do (no deadlock).
    await audit.lock_chains(conn, sorted({r["clinic"] for r in rows}))
    written = 0
    for row in rows:
        subject, body = _compose(row, public_url)
        page_id = new_id()
        status = await conn.execute(
            _INSERT_PAGE,
            page_id,
            row["id"],
            row["clinic_id"],
            row["renewals"],
            row["escalation_level"],
            row["position"],
            row["user_id"],
            row["email"],
            subject,
            body,
        )
        if status != "INSERT 0 1":
            continue  # another process wrote this level's page first
        written += 1
        await events.record(
            conn,
            alert_id=row["id"],
            actor=SYSTEM_PAGING,
            action="paged",
            details={
                "page_id": str(page_id),
                "level": row["escalation_level"],
                "renewal": row["renewals"],
                "position": row["position"],
                "user": row["username"],
            },
            settings=settings,
        )
    return written


async def claim_due(conn: Conn, limit: int = BATCH_SIZE) -> list[ClaimedPage]:
    """Take the lease on up to ``limit`` due pages (when the caller commits)."""
    rows = await conn.fetch(_CLAIM, limit, LEASE)
    return [ClaimedPage(r["id"], r["email"], r["subject"], r["body"], r["attempts"]) for r in rows]


def message(settings: PagingSettings, page: ClaimedPage) -> EmailMessage:
    assert settings.sender is not None  # required with a host (settings.py)
    mail = EmailMessage()
    mail["From"] = settings.sender
    mail["To"] = page.email
    mail["Subject"] = page.subject
    mail["Date"] = format_datetime(datetime.now(UTC))
    mail["Message-ID"] = f"<{page.id}@safetyreport>"
    # Pages are urgent by nature; mail clients that honour these show them so.
    mail["X-Priority"] = "1"
    mail["Importance"] = "high"
    mail.set_content(page.body)
    return mail


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:MAX_ERROR_CHARS]


async def send(settings: PagingSettings, page: ClaimedPage) -> PageOutcome:
    """Hand one page to the SMTP server; never raises (a failure is the outcome)."""
    assert settings.smtp_host is not None
    attempted_at = datetime.now(UTC)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
            await aiosmtplib.send(
                message(settings, page),
                hostname=settings.smtp_host,
                port=settings.smtp_port,
                username=settings.username,
                password=settings.password,
                use_tls=settings.tls == "tls",
                start_tls=settings.tls == "starttls",
                timeout=SEND_TIMEOUT_SECONDS,
            )
    except Exception as exc:  # whatever the server or the network did, record it
        return PageOutcome(attempted_at, _elapsed_ms(started), _describe(exc))
    return PageOutcome(attempted_at, _elapsed_ms(started))


def _elapsed_ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


async def _record(
    conn: Conn, page: ClaimedPage, outcome: PageOutcome, settings: AlertSettings
) -> facts.Delivery:
    """Record the attempt and what follows from it; which that is, for the metrics."""
    await conn.execute(
        _INSERT_ATTEMPT, page.id, outcome.attempted_at, outcome.error, outcome.duration_ms
    )
    if outcome.error is None:
        await conn.execute(_MARK_SENT, page.id)
        return facts.Delivery("page", "delivered")
    if page.attempts >= settings.delivery_max_attempts:
        await conn.execute(_MARK_FAILED, page.id, page.attempts)
        _log.error(
            "page %s failed after %d attempts (last: %s)", page.id, page.attempts, outcome.error
        )
        return facts.Delivery("page", "failed")
    await conn.execute(_RETRY_LATER, page.id, page.attempts, retry_delay(page.attempts, settings))
    return facts.Delivery("page", "retrying")


async def _deliver_one(
    pool: asyncpg.Pool, paging: PagingSettings, alerts: AlertSettings, page: ClaimedPage
) -> None:
    outcome = await send(paging, page)
    async with transaction(pool) as conn:
        delivery = await _record(conn, page, outcome, alerts)
    facts.committed(delivery)


async def deliver_due(pool: asyncpg.Pool, paging: PagingSettings, alerts: AlertSettings) -> int:
    """One round: claim due pages, send them concurrently, record each outcome; how many
    were claimed. Raises the first recording error after the round."""
    async with transaction(pool) as conn:
        claimed = await claim_due(conn)
    results = await asyncio.gather(
        *(_deliver_one(pool, paging, alerts, page) for page in claimed),
        return_exceptions=True,
    )
    # Unrecorded pages are not lost: their lease runs out and they are sent again.
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return len(claimed)


async def page_round(pool: asyncpg.Pool, paging: PagingSettings, alerts: AlertSettings) -> int:
    """Write the pages now due, then deliver; the work done (pages written and claimed)."""
    async with transaction(pool) as conn:
        written = await enqueue_pages(conn, alerts, public_url=paging.public_url)
    return written + await deliver_due(pool, paging, alerts)


def paging_task(
    paging: PagingSettings, alerts: AlertSettings, *, poll_interval: timedelta = POLL_INTERVAL
) -> PeriodicOnPool | None:
    """The paging background task; None when no SMTP host is configured (paging off)."""
    if not paging.enabled:
        return None

    async def unit(pool: asyncpg.Pool) -> int:
        return await page_round(pool, paging, alerts)

    # A round that did anything goes again at once: more may be due right away.
    return PeriodicOnPool(PAGING_TASK, poll_interval, unit, batch=1)
