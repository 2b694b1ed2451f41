"""The alert broker: one LISTEN connection per process, fanning alert events out.

Every alert change commits an ``alert_events`` row and a NOTIFY carrying its id (see
``events.record``). The broker LISTENs on a dedicated connection (application_name
``safetyreport-listener``), fetches each new row once, on that same connection (one
query at a time, from its one task, so a process needs no second connection for it),
encodes it once, and offers it to the bounded queue of every subscriber allowed to see
its clinic. The connection is watched (termination listener and a periodic probe).

``listen`` is a long-lived background task: it runs until the connection drops, and the
background runner starts it again with backoff; after a reconnect the broker catches up
on the events it could not have heard about. What a subscriber's HTTP stream sends is
in ``alerts.stream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from safetyreport.alerts.events import CHANNEL
from safetyreport.alerts.view import ALERT_COLUMNS, ALERT_JOINS, AlertView, alert_fields
from safetyreport.db.pool import SERVER_SETTINGS, Conn, connect_to_primary, init_connection

_log = logging.getLogger(__name__)

# How operators find the listener in pg_stat_activity (and tests terminate it).
LISTENER_NAME = "safetyreport-listener"
# Its name among the background tasks (/health).
LISTENER_TASK = "alert listener"

# Events a subscriber may fall behind by before it is dropped; it then reconnects with
# Last-Event-ID and catches up from the table, so one slow client never blocks the rest.
QUEUE_SIZE = 256
# Rows per query when replaying or catching up, so a long gap never loads all at once.
PAGE_SIZE = 500

# Listener connection.
CONNECT_TIMEOUT_SECONDS = 10.0
# A silently dead TCP connection fires no termination listener: probe it when idle.
PROBE_IDLE_SECONDS = 30.0
PROBE_TIMEOUT_SECONDS = 10.0
# How long the app waits at start for the first LISTEN before serving without it.
START_WAIT_SECONDS = 5.0
# Event ids already published, remembered so a catch-up never publishes one twice.
RECENT_IDS = 10_000
# A catch-up looks back this many ids below the highest one published: an event can
# be stored below it without its NOTIFY having reached us (a transaction that committed
# after a later-numbered one while the listener was away; or one whose server went down
# between its commit and its NOTIFY, as in a failover). Well under RECENT_IDS.
CATCH_UP_LOOKBACK = 1_000

_LISTENER_SETTINGS = {**SERVER_SETTINGS, "application_name": LISTENER_NAME}
# What connecting may raise when the database cannot be reached or refuses us.
_CONNECT_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

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
# Events numbered below $1 that committed after it was inserted (migration 0012): not
# visible in the snapshot it was inserted under, and not of its own transaction.
# Bounded by the catch-up's look-back.
LATE_EVENTS = (
    _EVENT_SELECT  # noqa: S608 (constant SQL fragments, no input)
    + "WHERE e.id < $1 AND e.id >= $1 - $3"
    + " AND e.xid <> (SELECT xid FROM alert_events WHERE id = $1)"
    + " AND NOT pg_visible_in_snapshot("
    + "e.xid, (SELECT inserted_snapshot FROM alert_events WHERE id = $1))"
    + " AND ($2::bigint[] IS NULL OR e.clinic_id = ANY($2::bigint[]))"
    + " ORDER BY e.id"
)
LATEST_EVENT_ID = "SELECT coalesce(max(id), 0) FROM alert_events"
PROBE = "SELECT 1"
# A write of our own whose commit waits for the synchronous standby whatever the
# session's setting (see ``confirm_durable``, migration 0012); one statement, one round trip.
_DURABILITY_BARRIER = """
INSERT INTO replication_barriers (backend_pid, at)
SELECT pg_backend_pid(), now() FROM set_config('synchronous_commit', 'on', true)
ON CONFLICT (backend_pid) DO UPDATE SET at = excluded.at
"""


class ListenerCannotConnect(ConnectionError):
    """The listener's connection could not be made (the database is down or refuses it)."""


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
            alert=AlertView(**alert_fields(row)),
        )
        return cls(row["event_id"], row["clinic_id"], _encoder.encode(payload).decode())


async def confirm_durable(conn: Conn) -> None:
    """Return once what ``conn`` has read is on the synchronous standby, if there is one.

    Call it after reading events and before sending them anywhere. A commit whose wait
    for the standby was cut short (its backend terminated while the server shut down for
    a switchover, or its wait cancelled) is visible on the primary without being on the
    standby, and the failover then loses it: streaming it would tell clients of an event
    the database no longer holds. A commit of our own after the read waits until the
    standby has every WAL record before it, that commit included; without synchronous
    replication it returns as soon as it is flushed locally. If the server goes away
    meanwhile the connection fails, and nothing read is sent.
    """
    await conn.execute(_DURABILITY_BARRIER)


async def events_after(
    conn: Conn, clinics: list[int] | None, after: int, limit: int = PAGE_SIZE
) -> list[StreamEvent]:
    """Up to ``limit`` stored events after ``after`` that ``clinics`` may see (None: all)."""
    rows = await conn.fetch(EVENTS_AFTER, after, clinics, limit)
    await confirm_durable(conn)
    return [StreamEvent.from_row(row) for row in rows]


async def late_events(conn: Conn, clinics: list[int] | None, after: int) -> list[StreamEvent]:
    """Events numbered below ``after`` that committed after it, which a client resuming
    with Last-Event-ID ``after`` has not seen (or, rarely, has: it may see one again)."""
    rows = await conn.fetch(LATE_EVENTS, after, clinics, CATCH_UP_LOOKBACK)
    await confirm_durable(conn)
    return [StreamEvent.from_row(row) for row in rows]


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

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    async def wait_listening(self, seconds: float = START_WAIT_SECONDS) -> bool:
        """Whether the listener is (or gets) connected within ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                await self._listening.wait()
        except TimeoutError:
            return False
        return True

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

    # The connection: a long-lived background task (see ``background.LongLived``).

    async def listen(self, alive: Callable[[], None]) -> None:
        """Connect, LISTEN and fan events out until the connection drops (then raise).

        ``alive()`` is called once connected and caught up, and after every batch and
        probe: the listener's last success. The runner starts it again with backoff.
        """
        conn = await self._connect()
        try:
            await self._listen(conn, alive)
        finally:
            self._listening.clear()
            await _close(conn)

    async def _connect(self) -> asyncpg.Connection[Any]:
        try:
            conn = await connect_to_primary(
                self.url, server_settings=_LISTENER_SETTINGS, timeout=CONNECT_TIMEOUT_SECONDS
            )
        except _CONNECT_ERRORS as exc:
            # Whatever the reason, the listener can only wait and try again (a warning).
            raise ListenerCannotConnect(f"cannot connect ({exc})") from exc
        try:
            await init_connection(conn)
        except BaseException:
            await _close(conn)
            raise
        return conn

    async def _listen(self, conn: asyncpg.Connection[Any], alive: Callable[[], None]) -> None:
        lost = _Lost()
        conn.add_termination_listener(lambda _conn: self._inbox.put_nowait(lost))
        await conn.add_listener(CHANNEL, self._on_notify)
        # LISTEN first, then catch up: an event committed in between is both heard and
        # fetched, and the recent-id set publishes it once.
        await self._catch_up(conn)
        self._listening.set()
        alive()
        _log.info("alert listener connected (backend pid %d)", conn.get_server_pid())
        while True:
            ids, gone = await self._next_batch(conn, lost)
            if self._subscribers:
                self._pending.update(ids)
            else:
                # Nobody to tell: skip the fetch. A stream that opens later replays what
                # it missed from the database (Last-Event-ID), not from this process.
                for event_id in ids:
                    self._remember(event_id)
            if self._pending:
                await self._publish_pending(conn)
            if gone:
                raise ConnectionError("the listener connection was closed")
            alive()

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
        after = max(0, self._high - CATCH_UP_LOOKBACK)
        while True:
            rows = await conn.fetch(EVENTS_AFTER, after, None, PAGE_SIZE)
            await confirm_durable(conn)
            self._publish_rows(rows)  # skips the ids already published
            if len(rows) < PAGE_SIZE:
                return
            after = rows[-1]["event_id"]

    async def _publish_pending(self, conn: asyncpg.Connection[Any]) -> None:
        rows = await conn.fetch(EVENTS_BY_ID, sorted(self._pending))
        await confirm_durable(conn)
        # Cleared only now: if either failed, the next connection fetches them again.
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
