"""Appending to the hash chains.

Each entry's hash is SHA-256 over a canonical JSON encoding of its content, which
includes its chain, sequence number and the previous entry's hash; those exact bytes
are stored with the entry (``content``) so exports can carry them as they are. Appends
lock the chain's head row, so concurrent writers take turns and a chain never forks.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from safetyreport.db.pool import Conn

GENESIS_HASH = bytes(32)
GLOBAL_CHAIN = "global"

_canonical = msgspec.json.Encoder(order="sorted")


class Actor(msgspec.Struct, frozen=True):
    """Who did something: a user, or a named system actor such as ``cli``."""

    name: str
    id: int | None = None
    role: str | None = None


SYSTEM_CLI = Actor(name="system:cli")


class AuditEvent(msgspec.Struct, frozen=True, kw_only=True):
    actor: Actor
    action: str
    object_type: str | None = None
    object_id: str | None = None
    clinic: str | None = None
    client_addr: str | None = None
    details: dict[str, Any] = msgspec.field(default_factory=dict)


def chain_for(clinic: str | None) -> str:
    return f"clinic:{clinic}" if clinic else GLOBAL_CHAIN


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_content(
    *,
    chain: str,
    seq: int,
    recorded_at: datetime,
    actor_id: int | None,
    actor: str,
    actor_role: str | None,
    action: str,
    object_type: str | None,
    object_id: str | None,
    clinic: str | None,
    client_addr: str | None,
    details: dict[str, Any],
    prev_hash: bytes,
) -> bytes:
    """The exact bytes an entry's hash covers. Changing this breaks every stored chain."""
    return _canonical.encode(
        {
            "chain": chain,
            "seq": seq,
            "recorded_at": format_time(recorded_at),
            "actor_id": actor_id,
            "actor": actor,
            "actor_role": actor_role,
            "action": action,
            "object_type": object_type,
            "object_id": object_id,
            "clinic": clinic,
            "client_addr": client_addr,
            "details": details,
            "prev_hash": prev_hash.hex(),
        }
    )


# The columns an entry's canonical content is made of (all but its hash and content).
CONTENT_FIELDS = (
    "chain",
    "seq",
    "recorded_at",
    "actor_id",
    "actor",
    "actor_role",
    "action",
    "object_type",
    "object_id",
    "clinic",
    "client_addr",
    "details",
    "prev_hash",
)


def content_of_row(row: Mapping[str, Any] | asyncpg.Record, **changes: Any) -> bytes:
    """The canonical content of a stored entry (a row), with any fields replaced."""
    fields = {name: row[name] for name in CONTENT_FIELDS}
    fields.update(changes)
    return canonical_content(**fields)


def entry_hash(content: bytes) -> bytes:
    return hashlib.sha256(content).digest()


_LOCK_HEAD = """
SELECT last_seq, last_hash, clock_timestamp() AS now
FROM audit_chains WHERE chain = $1 FOR UPDATE
"""
_CREATE_HEAD = """
INSERT INTO audit_chains (chain, last_seq, last_hash) VALUES ($1, 0, $2)
ON CONFLICT (chain) DO NOTHING
"""
_INSERT_ENTRY = """
WITH entry AS (
    INSERT INTO audit_entries (
        chain, seq, recorded_at, actor_id, actor, actor_role, action,
        object_type, object_id, clinic, client_addr, details, prev_hash, hash, content
    ) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
)
UPDATE audit_chains SET last_seq = $2, last_hash = $14 WHERE chain = $1
"""


_LOCK_CHAINS = """
SELECT chain FROM audit_chains WHERE chain = ANY($1::text[]) ORDER BY chain FOR UPDATE
"""


async def lock_chains(conn: Conn, clinics: list[str | None]) -> None:
    """Lock the clinics' chain heads now, in a fixed order, until the transaction ends.

    Report submissions lock their clinic's chain before any alert row. Work that would
    otherwise lock an alert first (escalation, acknowledgements) takes the chain here
    first, so the two never wait on each other in a cycle.
    """
    await conn.execute(_LOCK_CHAINS, sorted({chain_for(c) for c in clinics}))


def _entry_row(
    chain: str, seq: int, prev_hash: bytes, recorded_at: datetime, event: AuditEvent
) -> tuple[Any, ...]:
    """The columns of the entry for ``event`` at ``seq`` of ``chain`` (as _INSERT_ENTRY and
    the unnest of _WRITE_HELD take them), its hash computed."""
    content = canonical_content(
        chain=chain,
        seq=seq,
        recorded_at=recorded_at,
        actor_id=event.actor.id,
        actor=event.actor.name,
        actor_role=event.actor.role,
        action=event.action,
        object_type=event.object_type,
        object_id=event.object_id,
        clinic=event.clinic,
        client_addr=event.client_addr,
        details=event.details,
        prev_hash=prev_hash,
    )
    return (
        chain,
        seq,
        recorded_at,
        event.actor.id,
        event.actor.name,
        event.actor.role,
        event.action,
        event.object_type,
        event.object_id,
        event.clinic,
        event.client_addr,
        event.details,
        prev_hash,
        entry_hash(content),
        content.decode(),
    )


# The head of a chain, locked until the transaction ends, as a CTE of a larger statement
# ($CHAIN: the parameter naming the chain): a write that must hold its clinic's chain
# takes it in its first statement (reports.service.insert_report).
LOCK_HEAD_CTE = """head AS (
    SELECT last_seq, last_hash, clock_timestamp() AS now
    FROM audit_chains WHERE chain = $CHAIN FOR UPDATE
)"""


@dataclass(slots=True)
class HeldChain:
    """A chain whose head this transaction has locked. Entries appended to it meanwhile
    (``append``) are kept here, numbered and hashed, and written together with the moved
    head by one statement when ``holding`` ends, just before the commit: what was one
    lock and one insert per entry is one statement for all of them."""

    chain: str
    last_seq: int
    last_hash: bytes
    # The time of the lock: every entry of the transaction is recorded at it.
    recorded_at: datetime
    rows: list[tuple[Any, ...]] = field(default_factory=list)

    def add(self, event: AuditEvent) -> int:
        self.last_seq += 1
        row = _entry_row(self.chain, self.last_seq, self.last_hash, self.recorded_at, event)
        self.last_hash = row[13]
        self.rows.append(row)
        return self.last_seq


# Entries given column by column ($1-$15, one array each, as _entry_row's columns), as
# the CTE of a statement that also moves the heads.
_ENTRIES_FROM_COLUMNS = """WITH entries AS (
    INSERT INTO audit_entries (
        chain, seq, recorded_at, actor_id, actor, actor_role, action,
        object_type, object_id, clinic, client_addr, details, prev_hash, hash, content
    )
    SELECT * FROM unnest(
        $1::text[], $2::bigint[], $3::timestamptz[], $4::bigint[], $5::text[], $6::text[],
        $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::jsonb[],
        $13::bytea[], $14::bytea[], $15::text[]
    )
)
"""
# The chain each connection's transaction holds (at most one), by connection.
_held: dict[int, HeldChain] = {}
# The held entries and the chain's new head, in one statement.
_WRITE_HELD = f"""
{_ENTRIES_FROM_COLUMNS}UPDATE audit_chains SET last_seq = $16, last_hash = $17 WHERE chain = $18
"""  # noqa: S608 (constant SQL fragments, no input)


async def locked_head(conn: Conn, clinic: str | None, head: Mapping[str, Any] | None) -> HeldChain:
    """The held chain of ``clinic`` from its ``head`` as LOCK_HEAD_CTE read it; a chain
    without a head yet (None, or a row of nulls) gets one and is locked here."""
    chain = chain_for(clinic)
    if head is None or head["last_seq"] is None:
        await conn.execute(_CREATE_HEAD, chain, GENESIS_HASH)
        head = await conn.fetchrow(_LOCK_HEAD, chain)
        assert head is not None
    return HeldChain(chain, head["last_seq"], head["last_hash"], head["now"])


@contextlib.asynccontextmanager
async def holding(conn: Conn, held: HeldChain) -> AsyncIterator[HeldChain]:
    """While the block runs, ``append`` to the held chain keeps its entries in ``held``;
    they are written when the block ends without an error (with one, the transaction
    rolls back and they are dropped). The caller's transaction locked the head."""
    if not conn.is_in_transaction():
        raise RuntimeError("a chain is held inside the transaction of the action")
    assert id(conn) not in _held, "one held chain per transaction"
    _held[id(conn)] = held
    try:
        yield held
    finally:
        del _held[id(conn)]
    await _write_held(conn, held)


async def _write_held(conn: Conn, held: HeldChain) -> None:
    if not held.rows:
        return
    columns = [list(column) for column in zip(*held.rows, strict=True)]
    await conn.execute(_WRITE_HELD, *columns, held.last_seq, held.last_hash, held.chain)


def _held_chain(conn: Conn, chain: str) -> HeldChain | None:
    held = _held.get(id(conn))
    return held if held is not None and held.chain == chain else None


async def append(conn: Conn, event: AuditEvent) -> int:
    """Append ``event`` to its clinic's chain (or the global one); return its sequence number.

    Must run inside the caller's transaction, so the entry commits or rolls back with
    the action it records. To a chain the transaction holds (``holding``), the entry is
    written when the holding ends.
    """
    if not conn.is_in_transaction():
        raise RuntimeError("audit.append must run inside the transaction of the action")
    chain = chain_for(event.clinic)
    held = _held_chain(conn, chain)
    if held is not None:
        return held.add(event)
    head = await conn.fetchrow(_LOCK_HEAD, chain)
    if head is None:
        await conn.execute(_CREATE_HEAD, chain, GENESIS_HASH)
        head = await conn.fetchrow(_LOCK_HEAD, chain)
        assert head is not None
    seq: int = head["last_seq"] + 1
    # Stored with microsecond precision, so hash exactly what will be read back.
    row = _entry_row(chain, seq, head["last_hash"], head["now"], event)
    await conn.execute(_INSERT_ENTRY, *row)
    return seq


async def append_to_clinics(conn: Conn, event: AuditEvent, clinics: Iterable[str | None]) -> None:
    """Append ``event`` to the chain of each clinic in ``clinics`` (None: the global chain).

    For actions that touch several clinics' data (an unfiltered list, an export, a login
    of a user of several clinics), so that each clinic's own auditor sees them. The
    chains are locked in one fixed order first, as ``lock_chains`` does, so two such
    transactions never wait on each other in a cycle. An empty list means the global
    chain. Caller's transaction.
    """
    await append_for_each_clinic(conn, clinics, lambda _clinic: event)


async def append_for_each_clinic(
    conn: Conn, clinics: Iterable[str | None], event_for: Callable[[str | None], AuditEvent]
) -> None:
    """As ``append_to_clinics``, with an event of its own for each clinic.

    For reads of several clinics' data (a page of a list, a search): each clinic's chain
    records what was read of that clinic, and nothing of the others'.
    """
    targets: list[str | None] = sorted(set(clinics) or {None}, key=chain_for)
    if len(targets) == 1:
        await append(conn, msgspec.structs.replace(event_for(targets[0]), clinic=targets[0]))
        return
    await _append_one_each(
        conn, [msgspec.structs.replace(event_for(clinic), clinic=clinic) for clinic in targets]
    )


# Several chains' heads at once, locked in the chains' order (as lock_chains does).
_LOCK_HEADS = """
SELECT chain, last_seq, last_hash, clock_timestamp() AS now
FROM audit_chains WHERE chain = ANY($1::text[]) ORDER BY chain FOR UPDATE
"""
_CREATE_HEADS = """
INSERT INTO audit_chains (chain, last_seq, last_hash)
SELECT chain, 0, $2 FROM unnest($1::text[]) AS chain
ON CONFLICT (chain) DO NOTHING
"""
# One entry in each of several chains, and their heads moved, in one statement.
_INSERT_ENTRIES = f"""
{_ENTRIES_FROM_COLUMNS}UPDATE audit_chains c SET last_seq = u.seq, last_hash = u.hash
FROM unnest($1::text[], $2::bigint[], $14::bytea[]) AS u (chain, seq, hash)
WHERE c.chain = u.chain
"""  # noqa: S608 (constant SQL fragments, no input)


async def _append_one_each(conn: Conn, events: list[AuditEvent]) -> None:
    """Append each event to its own chain (one event per chain), in three statements
    whatever their number: the heads locked in the chains' order, then every entry and
    head written at once. What ``append`` does once per event."""
    if not conn.is_in_transaction():
        raise RuntimeError("audit entries must be appended inside the transaction of the action")
    held = _held.get(id(conn))
    if held is not None:
        # The held chain's entry waits with the others of its transaction.
        for event in [e for e in events if chain_for(e.clinic) == held.chain]:
            held.add(event)
            events.remove(event)
        if not events:
            return
    chains = [chain_for(event.clinic) for event in events]
    assert len(set(chains)) == len(chains), "one event per chain"
    await conn.execute(_CREATE_HEADS, chains, GENESIS_HASH)
    heads = {row["chain"]: row for row in await conn.fetch(_LOCK_HEADS, chains)}
    rows: list[tuple[Any, ...]] = []
    for chain, event in zip(chains, events, strict=True):
        head = heads[chain]
        rows.append(_entry_row(chain, head["last_seq"] + 1, head["last_hash"], head["now"], event))
    await conn.execute(_INSERT_ENTRIES, *(list(column) for column in zip(*rows, strict=True)))
