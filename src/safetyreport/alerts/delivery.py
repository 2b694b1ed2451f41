"""Delivering outbox notifications to webhooks, and the delivery ledger for admins.

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
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec
from litestar import Controller, Request, get
from litestar.params import FromPath, QueryParameter

from safetyreport import __version__, audit
from safetyreport.auth.http import principal_of, require_roles
from safetyreport.auth.permissions import ADMINS, allow
from safetyreport.db.pool import Conn
from safetyreport.errors import NotFound
from safetyreport.pagination import decode_cursor, encode_cursor
from safetyreport.settings import AlertSettings
from safetyreport.state import app_state, client_address
from safetyreport.times import require_utc

_log = logging.getLogger(__name__)

# Rows claimed per round; they are posted concurrently.
BATCH_SIZE = 20
# How long a claim holds a row. Must exceed a round's worst case (one send timeout plus
# recording), or a slow round's rows get posted twice.
LEASE = timedelta(seconds=60)
SEND_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 1.0
# Ceiling of the pause after database errors (it doubles from the poll interval).
ERROR_BACKOFF_CAP_SECONDS = 30.0
MAX_ERROR_CHARS = 500

TIMESTAMP_HEADER = "X-Safetyreport-Timestamp"
SIGNATURE_HEADER = "X-Safetyreport-Signature"
NOTIFICATION_ID_HEADER = "X-Safetyreport-Notification-Id"

# Errors of the database or of reaching it: the sender waits and tries again.
_DATABASE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

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
_INSERT_ATTEMPT = """
INSERT INTO notification_attempts (notification_id, attempted_at, status_code, error, duration_ms)
VALUES ($1, $2, $3, $4, $5)
"""
# Even if the lease ran out meanwhile: the receiver has it, so it is never sent again.
_MARK_DELIVERED = """
UPDATE notifications SET status = 'delivered', delivered_at = now()
WHERE id = $1 AND status <> 'delivered'
"""
# Guarded by the attempt count: a sender that re-claimed the row after our lease ran out
# owns its schedule now.
_MARK_FAILED = """
UPDATE notifications SET status = 'failed'
WHERE id = $1 AND status = 'pending' AND attempts = $2
"""
_RETRY_LATER = """
UPDATE notifications SET next_attempt_at = now() + $3::interval
WHERE id = $1 AND status = 'pending' AND attempts = $2
"""


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


def retry_delay(attempts: int, settings: AlertSettings) -> timedelta:
    """Exponential backoff after the ``attempts``-th failed attempt, capped."""
    # The exponent is bounded so that many attempts cannot overflow the float.
    factor = 2.0 ** min(attempts - 1, 60)
    seconds = settings.delivery_backoff_base.total_seconds() * factor
    return timedelta(seconds=min(seconds, settings.delivery_backoff_cap.total_seconds()))


async def claim_due(pool: asyncpg.Pool, limit: int = BATCH_SIZE) -> list[Claimed]:
    """Take the lease on up to ``limit`` due notifications (committed before returning)."""
    async with pool.acquire() as conn, conn.transaction():
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


async def _record(conn: Conn, note: Claimed, outcome: Outcome, settings: AlertSettings) -> None:
    await conn.execute(
        _INSERT_ATTEMPT,
        note.id,
        outcome.attempted_at,
        outcome.status_code,
        outcome.error,
        outcome.duration_ms,
    )
    if outcome.delivered:
        await conn.execute(_MARK_DELIVERED, note.id)
    elif note.attempts >= settings.delivery_max_attempts:
        await conn.execute(_MARK_FAILED, note.id, note.attempts)
        _log.warning(
            "notification %s to %s failed after %d attempts (last: %s)",
            note.id,
            mask_url(note.target),
            note.attempts,
            outcome.error or f"HTTP {outcome.status_code}",
        )
    else:
        await conn.execute(
            _RETRY_LATER, note.id, note.attempts, retry_delay(note.attempts, settings)
        )


async def _deliver_one(
    pool: asyncpg.Pool,
    http: httpx.AsyncClient,
    secret: str,
    note: Claimed,
    settings: AlertSettings,
) -> None:
    outcome = await send(http, secret, note)
    async with pool.acquire() as conn, conn.transaction():
        await _record(conn, note, outcome, settings)


async def deliver_due(
    pool: asyncpg.Pool, http: httpx.AsyncClient, secret: str, settings: AlertSettings
) -> int:
    """One round: claim due notifications, post them concurrently, record each outcome.

    Returns how many were claimed; after the round, raises the first recording error.
    """
    claimed = await claim_due(pool)
    results = await asyncio.gather(
        *(_deliver_one(pool, http, secret, note, settings) for note in claimed),
        return_exceptions=True,
    )
    # Unrecorded rows are not lost: their lease runs out and they are sent again.
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return len(claimed)


async def run_delivery(
    pool: asyncpg.Pool, settings: AlertSettings, *, poll_interval: float = POLL_SECONDS
) -> None:
    """Deliver due notifications until cancelled."""
    secret = settings.webhook_secret
    if not settings.webhook_urls or secret is None:
        if settings.webhook_urls:
            _log.error("webhook URLs are configured without a secret: not delivering")
        # Nothing is enqueued without webhooks; just wait to be cancelled.
        await asyncio.Event().wait()
        return
    client = httpx.AsyncClient(
        timeout=SEND_TIMEOUT_SECONDS,
        follow_redirects=False,
        headers={"User-Agent": f"safetyreport/{__version__}"},
    )
    async with client as http:
        errors = 0
        while True:
            try:
                claimed = await deliver_due(pool, http, secret, settings)
            except Exception as exc:  # the sender outlives any one round's failure
                errors += 1
                pause = min(poll_interval * 2 ** min(errors, 10), ERROR_BACKOFF_CAP_SECONDS)
                # Database trouble is expected now and then; anything else is a bug.
                log = _log.warning if isinstance(exc, _DATABASE_ERRORS) else _log.exception
                log("notification delivery: %s; retrying in %.1f s", _describe(exc), pause)
                await asyncio.sleep(pause)
                continue
            errors = 0
            # More may be due right away after a round with work.
            await asyncio.sleep(0 if claimed else poll_interval)


# --- the ledger -------------------------------------------------------------------

# Optional filters as NULL-able parameters, so the statement stays one constant. The
# clinic scope ($6, $2: NULL for admins of every clinic) keeps an admin of some clinics
# to their notifications: a payload carries the alert, its clinic and its patient.
_LIST = """
SELECT id, alert_id, event, channel, target, status, attempts, created_at, delivered_at,
       next_attempt_at
FROM notifications
WHERE ($1::text IS NULL OR status = $1)
  AND ($2::uuid IS NULL OR alert_id = $2)
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
  AND ($6::bigint[] IS NULL
       OR alert_id IN (SELECT id FROM alerts WHERE clinic_id = ANY($6::bigint[])))
ORDER BY created_at DESC, id DESC
LIMIT $5
"""
_READ = """
SELECT id, alert_id, event, channel, target, status, created_at, delivered_at,
       next_attempt_at, payload
FROM notifications
WHERE id = $1
  AND ($2::bigint[] IS NULL
       OR alert_id IN (SELECT id FROM alerts WHERE clinic_id = ANY($2::bigint[])))
"""
_ATTEMPTS = """
SELECT id, attempted_at, status_code, error, duration_ms
FROM notification_attempts WHERE notification_id = $1 ORDER BY id
"""

Status = Literal["pending", "delivered", "failed"]


class NotificationView(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    alert_id: uuid.UUID
    event: str
    channel: str
    target: str
    status: Status
    # Claims so far (a claim whose sender died counts too).
    attempts: int
    created_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime


class AttemptView(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int | None


class NotificationDetail(msgspec.Struct, frozen=True, kw_only=True):
    """One notification with its payload and every recorded attempt, oldest first."""

    id: uuid.UUID
    alert_id: uuid.UUID
    event: str
    channel: str
    target: str
    status: Status
    created_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime
    payload: dict[str, Any]
    attempts: list[AttemptView]


class NotificationPage(msgspec.Struct, frozen=True):
    items: list[NotificationView]
    next_cursor: str | None


def _decode_cursor(cursor: str | None) -> tuple[datetime | None, uuid.UUID | None]:
    if cursor is None:
        return None, None
    after, notification_id = decode_cursor(cursor, tuple[datetime, uuid.UUID])
    return require_utc("cursor", after), notification_id


def _view(row: asyncpg.Record) -> NotificationView:
    fields = {f: row[f] for f in NotificationView.__struct_fields__}
    return NotificationView(**{**fields, "target": mask_url(row["target"])})


async def _audit_read(
    conn: Conn,
    request: Request[Any, Any, Any],
    action: str,
    object_id: str | None,
    details: dict[str, Any],
) -> None:
    # Notifications span clinics and only admins read them: the global chain.
    await audit.append(
        conn,
        audit.AuditEvent(
            actor=principal_of(request).actor(),
            action=action,
            object_type="notification",
            object_id=object_id,
            client_addr=client_address(request),
            details=details,
        ),
    )


class DeliveryController(Controller):
    path = "/api/v1/notifications"
    tags = ["notifications"]
    guards = [require_roles]
    opt = allow(ADMINS)

    @get("/")
    async def list_notifications(
        self,
        request: Request[Any, Any, Any],
        status: Annotated[Status | None, QueryParameter()] = None,
        alert: Annotated[uuid.UUID | None, QueryParameter()] = None,
        cursor: Annotated[str | None, QueryParameter()] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    ) -> NotificationPage:
        """The delivery ledger of your clinics, newest first, a page at a time (admins only)."""
        after, after_id = _decode_cursor(cursor)
        pool = app_state(request).pool
        async with pool.acquire() as conn, conn.transaction():
            scope = principal_of(request).scope()
            rows = await conn.fetch(_LIST, status, alert, after, after_id, limit + 1, scope)
            items = [_view(r) for r in rows[:limit]]
            more = len(rows) > limit
            details: dict[str, Any] = {
                "filters": {
                    "status": status,
                    "alert": str(alert) if alert else None,
                    "cursor": cursor,
                },
                "count": len(items),
                "notification_ids": [str(i.id) for i in items],
            }
            await _audit_read(conn, request, "notification.listed", None, details)
        return NotificationPage(
            items, encode_cursor(items[-1].created_at, items[-1].id) if more else None
        )

    @get("/{notification_id:uuid}")
    async def read_notification(
        self, request: Request[Any, Any, Any], notification_id: FromPath[uuid.UUID]
    ) -> NotificationDetail:
        """One notification: its payload and every delivery attempt (admins only)."""
        pool = app_state(request).pool
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_READ, notification_id, principal_of(request).scope())
            if row is None:
                raise NotFound(f"no notification {notification_id}")
            attempts = [AttemptView(**dict(a)) for a in await conn.fetch(_ATTEMPTS, row["id"])]
            details = {"alert_id": str(row["alert_id"]), "status": row["status"]}
            await _audit_read(conn, request, "notification.read", str(row["id"]), details)
        fields = {f: row[f] for f in NotificationDetail.__struct_fields__ if f != "attempts"}
        fields["target"] = mask_url(row["target"])
        return NotificationDetail(**fields, attempts=attempts)
