"""The live alert stream: Server-Sent Events fed by PostgreSQL LISTEN/NOTIFY.

One ``AlertBroker`` per process LISTENs on a dedicated connection (application_name
``safetyreport-listener``). Every alert change commits an ``alert_events`` row and a
NOTIFY carrying its id (see ``events.record``). The broker fetches each new row once,
on that same connection (one query at a time, from its one task, so a process needs no
second connection for it), encodes it once, and offers it to the bounded queue of every
subscriber allowed to see its clinic. The connection is watched (termination listener
and a periodic probe) and replaced with backoff; after a reconnect the broker catches up
on the events it could not have heard about.

``GET /api/v1/alerts/stream`` subscribes, replays the events after ``Last-Event-ID``
from the table, then streams live ones. Delivery is at least once and the SSE id is the
event id, so a client that lost its stream reconnects with the last id it saw. Each
subscription is audited (who, Last-Event-ID, events replayed) in the chain of every
clinic whose events it may carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import anyio
import asyncpg
import msgspec
from litestar import Controller, Request, get
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from safetyreport import audit
from safetyreport.alerts.events import CHANNEL
from safetyreport.alerts.view import ALERT_COLUMNS, ALERT_JOINS, AlertView
from safetyreport.auth.http import principal_of
from safetyreport.auth.permissions import ALERT_STREAM
from safetyreport.auth.service import hash_token
from safetyreport.auth.users import Principal
from safetyreport.db.pool import SERVER_SETTINGS, Conn, init_connection
from safetyreport.errors import Forbidden
from safetyreport.pagination import BIGINT_MAX
from safetyreport.state import AppState, app_state, client_address

_log = logging.getLogger(__name__)

# How operators find the listener in pg_stat_activity (and tests terminate it).
LISTENER_NAME = "safetyreport-listener"

# Events a subscriber may fall behind by before it is dropped; it then reconnects with
# Last-Event-ID and catches up from the table, so one slow client never blocks the rest.
QUEUE_SIZE = 256
# A comment this often keeps proxies and load balancers from closing an idle stream.
KEEPALIVE_SECONDS = 15.0
# How often an open stream re-checks its session: a logout or a disabled user ends it.
SESSION_CHECK_SECONDS = 60.0
# What browsers wait before reconnecting after the stream ends (SSE ``retry``, in ms).
RETRY_MS = 2000
# Rows per query when replaying or catching up, so a long gap never loads all at once.
PAGE_SIZE = 500

# Listener connection.
CONNECT_TIMEOUT_SECONDS = 10.0
BACKOFF_MIN_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
# A silently dead TCP connection fires no termination listener: probe it when idle.
PROBE_IDLE_SECONDS = 30.0
PROBE_TIMEOUT_SECONDS = 10.0
# How long start() waits for the first LISTEN before letting the app serve without it.
START_WAIT_SECONDS = 5.0
# Event ids already published, remembered so a catch-up never publishes one twice.
RECENT_IDS = 10_000

_LISTENER_SETTINGS = {**SERVER_SETTINGS, "application_name": LISTENER_NAME}
_DATABASE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

# The alert is shown as it is now, not as it was at the event: a client showing a
# dashboard wants the latest state, and the event's own ``details`` say what changed.
# An event's clinic is its alert's (``a.clinic_id``).
_EVENT_SELECT = f"""
SELECT e.id AS event_id, e.action, e.at, e.actor, e.details, {ALERT_COLUMNS}
FROM alert_events e
JOIN alerts a ON a.id = e.alert_id {ALERT_JOINS}
"""  # noqa: S608 (constant SQL fragments, no input)
EVENTS_BY_ID = _EVENT_SELECT + "WHERE e.id = ANY($1::bigint[]) ORDER BY e.id"
# $2 NULL: every clinic (admins, and the broker itself).
EVENTS_AFTER = (
    _EVENT_SELECT
    + "WHERE e.id > $1 AND ($2::bigint[] IS NULL OR e.clinic_id = ANY($2::bigint[]))"
    + " ORDER BY e.id LIMIT $3"
)
LATEST_EVENT_ID = "SELECT coalesce(max(id), 0) FROM alert_events"
PROBE = "SELECT 1"
# Read-only, and without the idle timeout: a stream neither keeps a session alive (no
# last_seen_at update) nor is ended for idleness, but a logout, the absolute expiry or a
# disabled user ends it.
SESSION_IS_VALID = """
SELECT EXISTS (
    SELECT 1 FROM sessions s JOIN users u ON u.id = s.user_id
    WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now()
      AND u.disabled_at IS NULL
)
"""


# --- payload --------------------------------------------------------------------


class AlertEventData(msgspec.Struct, frozen=True, kw_only=True):
    """The ``data`` of one ``event: alert`` message."""

    event_id: int
    action: str
    at: datetime
    actor: str
    details: dict[str, Any]
    alert: AlertView


_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One alert event, encoded once and shared by every subscriber that may see it."""

    id: int
    clinic_id: int
    data: str

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> StreamEvent:
        payload = AlertEventData(
            event_id=row["event_id"],
            action=row["action"],
            at=row["at"],
            actor=row["actor"],
            details=row["details"],
            alert=msgspec.convert(dict(row), AlertView),
        )
        return cls(row["event_id"], row["clinic_id"], _encoder.encode(payload).decode())

    def message(self) -> ServerSentEventMessage:
        return ServerSentEventMessage(id=self.id, event="alert", data=self.data)


# --- subscribers ----------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Subscription:
    """One connected stream: the clinics it may see (None: all) and its queue."""

    clinics: frozenset[int] | None
    queue: asyncio.Queue[StreamEvent | None]
    # Why the broker ended it, said to the client before the stream ends; None: open.
    closed: str | None = None

    def may_see(self, event: StreamEvent) -> bool:
        return self.clinics is None or event.clinic_id in self.clinics

    def offer(self, event: StreamEvent) -> bool:
        """Queue ``event``; False (and closed) when the subscriber is too far behind."""
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.close("too far behind")
            return False
        return True

    def close(self, reason: str) -> None:
        self.closed = reason
        # Wakes a reader waiting on an empty queue; a full queue's reader is not waiting.
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)

    async def next(self, idle_seconds: float) -> StreamEvent | None:
        """The next event, or None after ``idle_seconds`` without one or once closed."""
        try:
            async with asyncio.timeout(idle_seconds):
                return await self.queue.get()
        except TimeoutError:
            return None


class _Lost:
    """Put in the inbox by a connection's termination listener; one per connection."""


# --- the broker -----------------------------------------------------------------


@dataclass(eq=False)
class AlertBroker:
    """Listens for alert events on one dedicated connection and fans them out."""

    url: str
    _subscribers: set[Subscription] = field(default_factory=set, init=False)
    # Notified ids (and connection-lost markers) in arrival order.
    _inbox: asyncio.Queue[int | _Lost] = field(default_factory=asyncio.Queue, init=False)
    # Notified but not yet published: kept across a reconnect so none is lost.
    _pending: set[int] = field(default_factory=set, init=False)
    _recent: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_IDS), init=False)
    _recent_set: set[int] = field(default_factory=set, init=False)
    # Highest event id published; None until the first connection.
    _high: int | None = field(default=None, init=False)
    _listening: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    async def start(self) -> None:
        """Start listening; never fails: with the database down the broker keeps retrying."""
        self._task = asyncio.create_task(self._run(), name="alert-listener")
        try:
            async with asyncio.timeout(START_WAIT_SECONDS):
                await self._listening.wait()
        except TimeoutError:
            _log.warning("serving without the alert listener for now; it keeps retrying")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.close_subscriptions()

    def close_subscriptions(self) -> None:
        """End every open stream (its client reconnects with Last-Event-ID).

        For a server shutting down: open streams would otherwise hold it until its
        graceful-shutdown timeout, and the lifespan's stop() only runs after that.
        """
        for subscription in list(self._subscribers):
            subscription.close("the server is shutting down")
        self._subscribers.clear()

    def subscribe(self, clinics: Iterable[int] | None, maxsize: int = QUEUE_SIZE) -> Subscription:
        scope = None if clinics is None else frozenset(clinics)
        subscription = Subscription(scope, asyncio.Queue(maxsize))
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    # The connection loop.

    async def _run(self) -> None:
        delay = BACKOFF_MIN_SECONDS
        while True:
            try:
                conn = await self._connect()
            except _DATABASE_ERRORS as exc:
                _log.warning("alert listener cannot connect (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_SECONDS)
                continue
            delay = BACKOFF_MIN_SECONDS
            try:
                await self._listen(conn)
            except _DATABASE_ERRORS as exc:
                _log.warning("alert listener lost its connection (%s); reconnecting", exc)
            except Exception:
                # A bug here must not end live alerts for good: log it and start over.
                _log.exception("alert listener failed; reconnecting")
            finally:
                self._listening.clear()
                await _close(conn)
            await asyncio.sleep(BACKOFF_MIN_SECONDS)

    async def _connect(self) -> asyncpg.Connection[Any]:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(
            self.url, server_settings=_LISTENER_SETTINGS, timeout=CONNECT_TIMEOUT_SECONDS
        )
        try:
            await init_connection(conn)
        except BaseException:
            await _close(conn)
            raise
        return conn

    async def _listen(self, conn: asyncpg.Connection[Any]) -> None:
        lost = _Lost()
        conn.add_termination_listener(lambda _conn: self._inbox.put_nowait(lost))
        await conn.add_listener(CHANNEL, self._on_notify)
        # LISTEN first, then catch up: an event committed in between is both heard and
        # fetched, and the recent-id set publishes it once.
        await self._catch_up(conn)
        self._listening.set()
        _log.info("alert listener connected (backend pid %d)", conn.get_server_pid())
        while True:
            ids, gone = await self._next_batch(conn, lost)
            if self._subscribers:
                self._pending.update(ids)
            elif ids:
                # Nobody to tell: skip the fetch. A stream that opens later replays what
                # it missed from the database (Last-Event-ID), not from this process.
                self._high = max(self._high or 0, *ids)
            if self._pending:
                await self._publish_pending(conn)
            if gone:
                raise ConnectionError("the listener connection was closed")

    def _on_notify(self, _conn: Conn, _pid: int, _channel: str, payload: object) -> None:
        try:
            self._inbox.put_nowait(int(str(payload)))
        except ValueError:
            _log.warning("ignoring a malformed %s notification: %r", CHANNEL, payload)

    async def _next_batch(
        self, conn: asyncpg.Connection[Any], lost: _Lost
    ) -> tuple[set[int], bool]:
        """Every id waiting in the inbox (waiting for one), and whether the connection is gone."""
        try:
            async with asyncio.timeout(PROBE_IDLE_SECONDS):
                items = [await self._inbox.get()]
        except TimeoutError:
            await conn.fetchval(PROBE, timeout=PROBE_TIMEOUT_SECONDS)
            return set(), False
        while not self._inbox.empty():
            items.append(self._inbox.get_nowait())
        # Markers of earlier connections are stale; only this connection's counts.
        return {i for i in items if isinstance(i, int)}, any(i is lost for i in items)

    # Fetching and publishing.

    async def _catch_up(self, conn: asyncpg.Connection[Any]) -> None:
        """After a reconnect, publish what was committed while nobody was listening."""
        if self._high is None:
            self._high = await conn.fetchval(LATEST_EVENT_ID)
            return
        if self._pending:
            await self._publish_pending(conn)
        while True:
            rows = await conn.fetch(EVENTS_AFTER, self._high, None, PAGE_SIZE)
            self._publish_rows(rows)
            if len(rows) < PAGE_SIZE:
                return

    async def _publish_pending(self, conn: asyncpg.Connection[Any]) -> None:
        rows = await conn.fetch(EVENTS_BY_ID, sorted(self._pending))
        # Cleared only now: if the fetch failed, the next connection fetches them again.
        self._pending.clear()
        self._publish_rows(rows)

    def _publish_rows(self, rows: list[asyncpg.Record]) -> None:
        for row in rows:
            if row["event_id"] not in self._recent_set:
                self._remember(row["event_id"])
                self.publish(StreamEvent.from_row(row))

    def _remember(self, event_id: int) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(event_id)
        self._recent_set.add(event_id)
        self._high = max(self._high or 0, event_id)

    def publish(self, event: StreamEvent) -> None:
        for subscription in list(self._subscribers):
            if subscription.may_see(event) and not subscription.offer(event):
                self._subscribers.discard(subscription)
                _log.warning(
                    "dropped a stream subscriber %d events behind", subscription.queue.maxsize
                )


async def _close(conn: asyncpg.Connection[Any]) -> None:
    if conn.is_closed():
        return
    try:
        await conn.close(timeout=2)
    except Exception:  # already broken: drop it without the goodbye
        conn.terminate()


# --- the route ------------------------------------------------------------------


def _request_context(connection: ASGIConnection[Any, Any, Any, Any]) -> tuple[Principal, AppState]:
    return principal_of(connection), app_state(connection)


async def require_stream_role(
    connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
) -> None:
    """Guard: safety officers and admins only."""
    role = _request_context(connection)[0].role
    if role not in ALERT_STREAM:
        raise Forbidden(f"the {role} role may not follow the alert stream")


LastEventIdHeader = Annotated[
    int | None, HeaderParameter(name="Last-Event-ID", required=False, ge=0, le=BIGINT_MAX)
]
LastEventIdQuery = Annotated[int | None, QueryParameter(ge=0, le=BIGINT_MAX)]


class AlertStreamController(Controller):
    path = "/api/v1/alerts/stream"
    tags = ["alerts"]
    guards = [require_stream_role]

    @get("/", media_type="text/event-stream")
    async def stream(
        self,
        request: Request[Any, Any, Any],
        last_event_id_header: LastEventIdHeader = None,
        last_event_id: LastEventIdQuery = None,
    ) -> ServerSentEvent:
        """New and changed alerts of your clinics as Server-Sent Events (``event: alert``).

        Each message's ``id`` is the event id. Reconnect with the ``Last-Event-ID`` header
        (or ``?last_event_id=`` where headers cannot be set) to receive every event after
        it first. Comments are sent as keep-alives.
        """
        principal, state = _request_context(request)
        # The header wins: a browser's EventSource sends the latest id there, while the
        # query parameter stays whatever the page first opened the stream with.
        after = last_event_id if last_event_id_header is None else last_event_id_header
        token = str(request.auth)
        reader = _Reader(principal, token, client_address(request))
        return ServerSentEvent(_alert_messages(state, reader, after))


@dataclass(frozen=True, slots=True)
class _Reader:
    """Who follows the stream, as its audit entry names them."""

    principal: Principal
    token: str
    client_addr: str


async def _alert_messages(
    state: AppState, reader: _Reader, after: int | None
) -> AsyncIterator[ServerSentEventMessage]:
    # Subscribed before the replay, so an event committed during it is not missed; the
    # replayed ids are then skipped when the same events arrive live.
    scope = reader.principal.scope()
    subscription = state.broker.subscribe(scope)
    replayed: set[int] = set()
    replay_done = recorded = False
    try:
        if after is None:
            # Nothing to replay: recorded before the client hears it is subscribed.
            await _audit_subscription(state.pool, reader, after, 0, complete=True)
            recorded = True
        yield ServerSentEventMessage(comment="connected", data=None, retry=RETRY_MS)
        if after is not None:
            async for event in _replay(state.pool, scope, after):
                replayed.add(event.id)
                yield event.message()
            replay_done = True
            await _audit_subscription(state.pool, reader, after, len(replayed), complete=True)
            recorded = True
        async for message in _live(state.pool, subscription, reader.token, replayed):
            yield message
    finally:
        # Runs when the client disconnects too (Litestar cancels the stream).
        state.broker.unsubscribe(subscription)
        if not recorded:
            await _audit_interrupted(state.pool, reader, after, len(replayed), replay_done)


async def _audit_interrupted(
    pool: asyncpg.Pool, reader: _Reader, after: int | None, replayed: int, complete: bool
) -> None:
    """Record a stream that ended before its subscription was: what it got was read.

    Shielded, because the stream's task is being cancelled.
    """
    with anyio.CancelScope(shield=True):
        try:
            await _audit_subscription(pool, reader, after, replayed, complete=complete)
        except _DATABASE_ERRORS as exc:
            _log.error("could not audit an interrupted stream subscription: %s", exc)


async def _audit_subscription(
    pool: asyncpg.Pool, reader: _Reader, after: int | None, replayed: int, *, complete: bool
) -> None:
    """Record the subscription in the chain of every clinic whose events it may carry."""
    principal = reader.principal
    event = audit.AuditEvent(
        actor=principal.actor(),
        action="alert_stream.subscribed",
        object_type="alert_stream",
        client_addr=reader.client_addr,
        details={"last_event_id": after, "replayed": replayed, "replay_complete": complete},
    )
    clinics: list[str | None] = list(principal.clinic_ids)
    async with pool.acquire() as conn, conn.transaction():
        await audit.append_to_clinics(conn, event, clinics)


async def _replay(
    pool: asyncpg.Pool, clinics: list[int] | None, after: int
) -> AsyncIterator[StreamEvent]:
    """Stored events after ``after`` that ``clinics`` may see, a page at a time."""
    while True:
        # A pooled connection per page, never held while the client reads.
        async with pool.acquire() as conn:
            rows = await conn.fetch(EVENTS_AFTER, after, clinics, PAGE_SIZE)
        for row in rows:
            yield StreamEvent.from_row(row)
        if len(rows) < PAGE_SIZE:
            return
        after = rows[-1]["event_id"]


async def _live(
    pool: asyncpg.Pool, subscription: Subscription, token: str, replayed: set[int]
) -> AsyncIterator[ServerSentEventMessage]:
    loop = asyncio.get_running_loop()
    check_at = loop.time() + SESSION_CHECK_SECONDS
    while True:
        event = await subscription.next(KEEPALIVE_SECONDS)
        if subscription.closed:
            yield _comment(f"{subscription.closed}: reconnect with Last-Event-ID")
            return
        if loop.time() >= check_at:
            if not await _session_is_valid(pool, token):
                yield _comment("session ended: log in again")
                return
            check_at = loop.time() + SESSION_CHECK_SECONDS
        if event is None:
            yield _comment("keep-alive")
        elif event.id in replayed:
            replayed.discard(event.id)
        else:
            yield event.message()


async def _session_is_valid(pool: asyncpg.Pool, token: str) -> bool:
    valid: bool = await pool.fetchval(SESSION_IS_VALID, hash_token(token))
    return valid


def _comment(text: str) -> ServerSentEventMessage:
    # data=None: an empty data line would make browsers dispatch an empty message.
    return ServerSentEventMessage(comment=text, data=None)
