"""Delivering outbox notifications to webhooks.

Outbox rows (``notifications``) are written in the transaction that opens or escalates
an alert (see ``events.enqueue``). A sender claims due rows with a lease in a short
transaction, posts them outside any transaction, then records the attempt in the ledger
(``notification_attempts``) and the outcome on the row. Several service processes may
run senders on one database: claims skip rows another sender holds.

Delivery is at least once. A sender that dies after claiming (or after posting but
before recording) leaves the row pending; once the lease runs out another sender posts
it again, so receivers drop duplicates by ``X-Safetyreport-Notification-Id``. A row
whose 2xx has been recorded is never sent again.

Receivers verify ``X-Safetyreport-Signature`` (``sha256=`` + hex HMAC-SHA256 with the
shared secret over ``"{X-Safetyreport-Timestamp}.{body}"``) and reject old timestamps.
Every post is also signed as the Standard Webhooks specification says (``webhook-id``,
``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256 over
"{id}.{timestamp}.{body}">``), so off-the-shelf libraries verify it. Its key is the same
secret: the UTF-8 bytes of ``SAFETYREPORT_WEBHOOK_SECRET``, which such a library takes as
``"whsec_" + base64(secret)`` (``standard_webhooks_secret``).

The sender is a background task (``delivering``); admins read the ledger through
``alerts.notifications``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec

from safetyreport import __version__
from safetyreport.background import PeriodicOnPool
from safetyreport.db.pool import Conn, connection, transaction
from safetyreport.metrics import facts
from safetyreport.settings import AlertSettings

_log = logging.getLogger(__name__)

# Rows claimed per round; they are posted concurrently.
BATCH_SIZE = 20
# How long a claim holds a row. Must exceed a round's worst case (one send timeout plus
# recording), or a slow round's rows get posted twice.
LEASE = timedelta(seconds=60)
SEND_TIMEOUT_SECONDS = 10.0
POLL_INTERVAL = timedelta(seconds=1)
MAX_ERROR_CHARS = 500
# Its name among the background tasks (/health).
DELIVERY_TASK = "notification delivery"

TIMESTAMP_HEADER = "X-Safetyreport-Timestamp"
SIGNATURE_HEADER = "X-Safetyreport-Signature"
NOTIFICATION_ID_HEADER = "X-Safetyreport-Notification-Id"
# Standard Webhooks (https://www.standardwebhooks.com/); the id is the notification's,
# the same on every retry, so receivers drop duplicates by it.
STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
STANDARD_SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)

_json = msgspec.json.Encoder()

# --- the sender -------------------------------------------------------------------

# The lease is taken by pushing next_attempt_at forward: a crashed sender's rows come
# due again by themselves. Counting the attempt here bounds retries even across crashes.
_CLAIM = """
WITH due AS (
    SELECT id FROM notifications
    WHERE status = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE notifications n
SET next_attempt_at = now() + $2::interval, attempts = n.attempts + 1
FROM due
WHERE n.id = due.id
RETURNING n.id, n.target, n.payload, n.attempts
"""
# An attempt and what follows from it are one statement, which commits by itself: a
# transaction around two would take four round trips for every notification sent.
_INSERT_ATTEMPT = """
WITH attempt AS (
    INSERT INTO notification_attempts
        (notification_id, attempted_at, status_code, error, duration_ms)
    VALUES ($1, $2, $3, $4, $5)
)
"""
# Even if the lease ran out meanwhile: the receiver has it, so it is never sent again.
_MARK_DELIVERED = (
    _INSERT_ATTEMPT
    + """
UPDATE notifications SET status = 'delivered', delivered_at = now()
WHERE id = $1 AND status <> 'delivered'
"""
)
# Guarded by the attempt count: a sender that re-claimed the row after our lease ran out
# owns its schedule now.
_MARK_FAILED = (
    _INSERT_ATTEMPT
    + """
UPDATE notifications SET status = 'failed'
WHERE id = $1 AND status = 'pending' AND attempts = $6
"""
)
_RETRY_LATER = (
    _INSERT_ATTEMPT
    + """
UPDATE notifications SET next_attempt_at = now() + $7::interval
WHERE id = $1 AND status = 'pending' AND attempts = $6
"""
)


class Claimed(msgspec.Struct, frozen=True):
    """A notification this sender holds the lease on; ``attempts`` counts this one."""

    id: uuid.UUID
    target: str
    payload: dict[str, Any]
    attempts: int


class Outcome(msgspec.Struct, frozen=True):
    attempted_at: datetime
    duration_ms: int
    status_code: int | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: what receivers recompute to trust a body."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def standard_webhooks_secret(secret: str) -> str:
    """The secret as Standard Webhooks libraries take it: ``whsec_`` + base64 of its key
    (the UTF-8 bytes of ``SAFETYREPORT_WEBHOOK_SECRET``)."""
    return STANDARD_SECRET_PREFIX + base64.b64encode(secret.encode()).decode()


def sign_standard(secret: str, message_id: str, timestamp: str, body: bytes) -> str:
    """The ``webhook-signature`` header's value (version 1 of the specification)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def retry_delay(attempts: int, settings: AlertSettings) -> timedelta:
    """Exponential backoff after the ``attempts``-th failed attempt, capped."""
    # The exponent is bounded so that many attempts cannot overflow the float.
    factor = 2.0 ** min(attempts - 1, 60)
    seconds = settings.delivery_backoff_base.total_seconds() * factor
    return timedelta(seconds=min(seconds, settings.delivery_backoff_cap.total_seconds()))


async def claim_due(conn: Conn, limit: int = BATCH_SIZE) -> list[Claimed]:
    """Take the lease on up to ``limit`` due notifications (when the caller commits)."""
    rows = await conn.fetch(_CLAIM, limit, LEASE)
    return [Claimed(r["id"], r["target"], r["payload"], r["attempts"]) for r in rows]


def _describe(exc: BaseException) -> str:
    """The error and its causes, e.g. ``ConnectError: [Errno 111] Connection refused``."""
    texts: list[str] = []
    cause: BaseException | None = exc
    while cause is not None and len(texts) < 4:
        text = str(cause).strip()
        if text and text not in texts:
            texts.append(text)
        cause = cause.__cause__ or cause.__context__
    return ": ".join([type(exc).__name__, *texts])[:MAX_ERROR_CHARS]


def _elapsed_ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


MAX_ANSWER_BYTES = 64 * 1024
_MASK = "***"


def mask_url(url: str) -> str:
    """``url`` without its secrets: the userinfo and every query value become ``***``.

    Webhook URLs may carry credentials (``https://user:token@host/`` or ``?token=``);
    the ledger, its API and the log show them masked.
    """
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        netloc = f"{_MASK}@{host}" if "@" in parts.netloc else host
        query = urlencode(
            [(key, _MASK) for key, _ in parse_qsl(parts.query, keep_blank_values=True)],
            safe="*",
        )
    except ValueError:
        return _MASK
    return urlunsplit(parts._replace(netloc=netloc, query=query, fragment=""))


def _without_target(text: str, target: str) -> str:
    """An error message with the target URL (as httpx may quote it) masked."""
    return text.replace(target, mask_url(target)) if target else text


async def send(http: httpx.AsyncClient, secret: str, note: Claimed) -> Outcome:
    """POST one notification; never raises (any failure is the attempt's outcome)."""
    body = _json.encode(note.payload)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        NOTIFICATION_ID_HEADER: str(note.id),
        STANDARD_ID_HEADER: str(note.id),
        STANDARD_TIMESTAMP_HEADER: timestamp,
        STANDARD_SIGNATURE_HEADER: sign_standard(secret, str(note.id), timestamp, body),
    }
    attempted_at = datetime.now(UTC)
    started = time.perf_counter()
    try:
        # A hard bound on the whole exchange: httpx's timeouts apply per read, and the
        # lease must outlast the round.
        async with (
            asyncio.timeout(SEND_TIMEOUT_SECONDS),
            http.stream("POST", note.target, content=body, headers=headers) as response,
        ):
            # Only the status counts; reading a short answer to its end lets the
            # connection serve the next notification. A long one is cut off instead.
            status = response.status_code
            received = 0
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received > MAX_ANSWER_BYTES:
                    break
    except Exception as exc:  # whatever the receiver or the network did, record it
        error = _without_target(_describe(exc), note.target)
        return Outcome(attempted_at, _elapsed_ms(started), error=error)
    return Outcome(attempted_at, _elapsed_ms(started), status_code=status)


async def _record(
    conn: Conn, note: Claimed, outcome: Outcome, settings: AlertSettings
) -> facts.Delivery:
    """Record the attempt and what follows from it (one statement); which that is, for
    the metrics."""
    attempt = (
        note.id,
        outcome.attempted_at,
        outcome.status_code,
        outcome.error,
        outcome.duration_ms,
    )
    if outcome.delivered:
        await conn.execute(_MARK_DELIVERED, *attempt)
        return facts.Delivery("webhook", "delivered")
    if note.attempts >= settings.delivery_max_attempts:
        await conn.execute(_MARK_FAILED, *attempt, note.attempts)
        _log.warning(
            "notification %s to %s failed after %d attempts (last: %s)",
            note.id,
            mask_url(note.target),
            note.attempts,
            outcome.error or f"HTTP {outcome.status_code}",
        )
        return facts.Delivery("webhook", "failed")
    await conn.execute(_RETRY_LATER, *attempt, note.attempts, retry_delay(note.attempts, settings))
    return facts.Delivery("webhook", "retrying")


async def _deliver_one(
    pool: asyncpg.Pool,
    http: httpx.AsyncClient,
    secret: str,
    note: Claimed,
    settings: AlertSettings,
) -> None:
    outcome = await send(http, secret, note)
    async with connection(pool) as conn:
        delivery = await _record(conn, note, outcome, settings)
    facts.committed(delivery)


async def deliver_due(
    pool: asyncpg.Pool, http: httpx.AsyncClient, secret: str, settings: AlertSettings
) -> int:
    """One round: claim due notifications, post them concurrently, record each outcome.

    Each step has a transaction of its own: the claim commits before the posts (made
    outside any transaction), and each outcome is recorded on its own. Returns how many
    were claimed; after the round, raises the first recording error.
    """
    async with transaction(pool) as conn:
        claimed = await claim_due(conn)
    results = await asyncio.gather(
        *(_deliver_one(pool, http, secret, note, settings) for note in claimed),
        return_exceptions=True,
    )
    # Unrecorded rows are not lost: their lease runs out and they are sent again.
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return len(claimed)


@contextlib.asynccontextmanager
async def delivering(
    settings: AlertSettings, *, poll_interval: timedelta = POLL_INTERVAL
) -> AsyncIterator[PeriodicOnPool | None]:
    """The background task delivering due notifications, with the HTTP client it posts
    with for as long as the block lasts; None without webhooks (nothing is enqueued)."""
    secret = settings.webhook_secret
    if not settings.webhook_urls or secret is None:
        if settings.webhook_urls:
            _log.error("webhook URLs are configured without a secret: not delivering")
        yield None
        return
    client = httpx.AsyncClient(
        timeout=SEND_TIMEOUT_SECONDS,
        follow_redirects=False,
        headers={"User-Agent": f"safetyreport/{__version__}"},
    )
    async with client as http:

        async def deliver(pool: asyncpg.Pool) -> int:
            return await deliver_due(pool, http, secret, settings)

        # A round that claimed anything goes again at once: more may be due right away.
        yield PeriodicOnPool(DELIVERY_TASK, poll_interval, deliver, batch=1)
