"""Append many valid audit entries quickly (COPY), for the export benchmark and tests.

Entries are hashed and linked exactly as ``safetyreport.audit.append`` would, so the
chains verify; only the path differs (one COPY instead of one INSERT per entry).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from safetyreport.audit.chain import CONTENT_FIELDS, canonical_content, entry_hash, format_time

_COLUMNS = (*CONTENT_FIELDS, "hash", "content")
# Text a spreadsheet would run, quotes, a backslash and non-ASCII: what exports must survive.
AWKWARD_TEXT = "=cmd|' /C calc'!A0 \"quoted\" \\ ünïcode"
# What an entry says, given its chain and seq: actor, action, object_type, object_id and
# details (the other fields are the chain's). Called in a worker thread.
EntryMaker = Callable[[str, int], dict[str, Any]]
# When an entry was recorded, given how many entries before it this call appended.
Clock = Callable[[int], datetime]


def bulk_entry(chain: str, seq: int) -> dict[str, Any]:
    """The export benchmark's entry: a ``bulk.appended`` of a thing, with awkward text."""
    return {
        "actor": "system:bulk",
        "action": "bulk.appended",
        "object_type": "thing",
        "object_id": str(seq),
        "details": {"n": seq, "text": AWKWARD_TEXT},
    }


def _csv_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, datetime):
        return format_time(value)
    return value


async def append_entries(
    conn: asyncpg.Connection[Any],
    chain: str,
    count: int,
    batch: int = 50_000,
    *,
    make: EntryMaker = bulk_entry,
    clock: Clock | None = None,
) -> None:
    """Append ``count`` entries to ``chain`` (which must exist), a COPY per batch.

    ``make`` says what each entry holds; ``clock`` when it was recorded (by default a
    microsecond apart from the database's clock on). The next batch is made (hashed, as
    CSV) in a worker thread while PostgreSQL takes in the one before. Nothing else may
    append to ``chain`` meanwhile.
    """
    head = await conn.fetchrow(
        "SELECT last_seq, last_hash, clock_timestamp() AS now FROM audit_chains WHERE chain = $1",
        chain,
    )
    if head is None:
        raise ValueError(f"no chain {chain}: create its clinic first")
    seq, prev, now = head["last_seq"], head["last_hash"], head["now"]
    if clock is None:
        clock = _microseconds_from(now)
    done = 0
    made: tuple[bytes, int, bytes] | None = None  # a batch made, not yet copied
    while done < count or made is not None:
        making = None
        if done < count:
            size = min(batch, count - done)
            making = asyncio.ensure_future(
                asyncio.to_thread(_batch_csv, chain, seq, prev, size, _Times(clock, done), make)
            )
            done += size
        if made is not None:
            await _copy(conn, chain, *made)
        made = await making if making is not None else None
        if made is not None:
            seq, prev = made[1], made[2]


async def _copy(
    conn: asyncpg.Connection[Any], chain: str, data: bytes, last_seq: int, last_hash: bytes
) -> None:
    async with conn.transaction():
        await conn.copy_to_table(
            "audit_entries", source=io.BytesIO(data), columns=list(_COLUMNS), format="csv"
        )
        await conn.execute(
            "UPDATE audit_chains SET last_seq = $2, last_hash = $3 WHERE chain = $1",
            chain,
            last_seq,
            last_hash,
        )


def _microseconds_from(start: datetime) -> Clock:
    def at(n: int) -> datetime:
        return start + timedelta(microseconds=n)

    return at


class _Times:
    """The clock of one batch: its entries come after ``done`` earlier ones."""

    def __init__(self, clock: Clock, done: int) -> None:
        self.clock, self.done = clock, done

    def __call__(self, i: int) -> datetime:
        return self.clock(self.done + i)


def _batch_csv(
    chain: str, seq: int, prev: bytes, count: int, times: Clock, make: EntryMaker
) -> tuple[bytes, int, bytes]:
    """``count`` entries after ``seq`` (whose hash is ``prev``) as CSV; the last seq, hash."""
    out = io.StringIO()
    writer = csv.writer(out)
    clinic = chain.removeprefix("clinic:") if chain.startswith("clinic:") else None
    for i in range(count):
        seq += 1
        fields: dict[str, Any] = {
            "chain": chain,
            "seq": seq,
            "recorded_at": times(i),
            "actor_id": None,
            "actor_role": None,
            "clinic": clinic,
            "client_addr": None,
            **make(chain, seq),
            "prev_hash": prev,
        }
        content = canonical_content(**fields)
        prev = entry_hash(content)
        row = {**fields, "hash": prev, "content": content.decode()}
        writer.writerow([_csv_value(row[c]) for c in _COLUMNS])
    return out.getvalue().encode(), seq, prev
