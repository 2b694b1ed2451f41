"""The live alert stream a subscriber reads: a replay from the table, then live events.

A subscription replays the events after ``Last-Event-ID`` from the table, then streams
the live ones the broker (``alerts.broker``) offers it. Delivery is at least once and
the SSE id is the event id, so a client that lost its stream reconnects with the last
id it saw; the replay then includes the events numbered below it that committed after
it (ids follow insertion, not commit order), and only events the synchronous standby
has (``broker.confirm_durable``). Each subscription is audited (who, Last-Event-ID,
events replayed) in the chain of every clinic whose events it may carry.

The stream outlives the request's transaction, so it takes pooled connections of its
own, briefly, through the db layer: one per replayed page, one per audit entry, one per
session check, never held while the client reads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import anyio
import asyncpg
from litestar.response import ServerSentEventMessage

from safetyreport.alerts.broker import (
    PAGE_SIZE,
    AlertBroker,
    StreamEvent,
    Subscription,
    events_after,
    late_events,
)
from safetyreport.auth.service import hash_token
from safetyreport.caller import Caller
from safetyreport.db.pool import Conn, connection, transaction

_log = logging.getLogger(__name__)

# A comment this often keeps proxies and load balancers from closing an idle stream.
KEEPALIVE_SECONDS = 15.0
# How often an open stream re-checks its session: a logout or a disabled user ends it.
SESSION_CHECK_SECONDS = 60.0
# What browsers wait before reconnecting after the stream ends (SSE ``retry``, in ms).
RETRY_MS = 2000

_DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

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


async def session_is_valid(conn: Conn, token: str) -> bool:
    valid: bool = await conn.fetchval(SESSION_IS_VALID, hash_token(token))
    return valid


async def record_subscription(
    conn: Conn, caller: Caller, after: int | None, replayed: int, *, complete: bool
) -> None:
    """Record the subscription in the chain of every clinic whose events it may carry."""
    details = {"last_event_id": after, "replayed": replayed, "replay_complete": complete}
    await caller.audit_each_clinic(
        conn,
        list(caller.principal.clinic_ids),
        "alert_stream.subscribed",
        object_type="alert_stream",
        details_for=lambda _clinic: details,
    )


async def alert_messages(
    pool: asyncpg.Pool, broker: AlertBroker, caller: Caller, token: str, after: int | None
) -> AsyncIterator[ServerSentEventMessage]:
    """The messages of one subscription: replayed events after ``after``, then live ones."""
    # Subscribed before the replay, so an event committed during it is not missed; the
    # replayed ids are then skipped when the same events arrive live.
    scope = caller.principal.scope()
    subscription = broker.subscribe(scope)
    replayed: set[int] = set()
    replay_done = recorded = False
    try:
        if after is None:
            # Nothing to replay: recorded before the client hears it is subscribed.
            await _record(pool, caller, after, 0, complete=True)
            recorded = True
        yield ServerSentEventMessage(comment="connected", data=None, retry=RETRY_MS)
        if after is not None:
            async for event in _replay(pool, scope, after):
                replayed.add(event.id)
                yield _message(event)
            replay_done = True
            await _record(pool, caller, after, len(replayed), complete=True)
            recorded = True
        async for message in _live(pool, subscription, token, replayed):
            yield message
    finally:
        # Runs when the client disconnects too (Litestar cancels the stream).
        broker.unsubscribe(subscription)
        if not recorded:
            await _record_interrupted(pool, caller, after, len(replayed), replay_done)


async def _record(
    pool: asyncpg.Pool, caller: Caller, after: int | None, replayed: int, *, complete: bool
) -> None:
    """Record the subscription in a transaction of its own.

    Shielded: a client that leaves meanwhile must not cut it short, nor cancel it between
    its commit and the caller noting it done (it would then be recorded twice).
    """
    with anyio.CancelScope(shield=True):
        async with transaction(pool) as conn:
            await record_subscription(conn, caller, after, replayed, complete=complete)


async def _record_interrupted(
    pool: asyncpg.Pool, caller: Caller, after: int | None, replayed: int, complete: bool
) -> None:
    """Record a stream that ended before its subscription was: what it got was read."""
    try:
        await _record(pool, caller, after, replayed, complete=complete)
    except _DATABASE_ERRORS as exc:
        _log.error("could not audit an interrupted stream subscription: %s", exc)


async def _replay(
    pool: asyncpg.Pool, clinics: list[int] | None, after: int
) -> AsyncIterator[StreamEvent]:
    """Stored events after ``after`` that ``clinics`` may see, a page at a time: first
    those numbered below it that committed after it (``late_events``)."""
    async with connection(pool) as conn:
        late = await late_events(conn, clinics, after)
    for event in late:
        yield event
    while True:
        # A pooled connection per page, never held while the client reads.
        async with connection(pool) as conn:
            events = await events_after(conn, clinics, after)
        for event in events:
            yield event
        if len(events) < PAGE_SIZE:
            return
        after = events[-1].id


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
            async with connection(pool) as conn:
                valid = await session_is_valid(conn, token)
            if not valid:
                yield _comment("session ended: log in again")
                return
            check_at = loop.time() + SESSION_CHECK_SECONDS
        if event is None:
            yield _comment("keep-alive")
        elif event.id in replayed:
            replayed.discard(event.id)
        else:
            yield _message(event)


def _message(event: StreamEvent) -> ServerSentEventMessage:
    return ServerSentEventMessage(id=event.id, event="alert", data=event.data)


def _comment(text: str) -> ServerSentEventMessage:
    # data=None: an empty data line would make browsers dispatch an empty message.
    return ServerSentEventMessage(comment=text, data=None)
