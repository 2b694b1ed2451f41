"""Append many valid audit entries quickly (COPY), for the export benchmark and tests.

Entries are hashed and linked exactly as ``safetyreport.audit.append`` would, so the
chains verify; only the path differs (one COPY instead of one INSERT per entry).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from safetyreport.audit.chain import CONTENT_FIELDS, canonical_content, entry_hash, format_time

_COLUMNS = (*CONTENT_FIELDS, "hash", "content")
# Text a spreadsheet would run, quotes, a backslash and non-ASCII: what exports must survive.
AWKWARD_TEXT = "=cmd|' /C calc'!A0 \"quoted\" \\ ünïcode"


def _csv_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, datetime):
        return format_time(value)
    return value


async def append_entries(
    conn: asyncpg.Connection[Any], chain: str, count: int, batch: int = 50_000
) -> None:
    """Append ``count`` entries to ``chain`` (which must exist), a COPY per batch.

    The next batch is made (hashed, as CSV) in a worker thread while PostgreSQL takes in
    the one before. Nothing else may append to ``chain`` meanwhile.
    """
    head = await conn.fetchrow(
        "SELECT last_seq, last_hash, clock_timestamp() AS now FROM audit_chains WHERE chain = $1",
        chain,
    )
    if head is None:
        raise ValueError(f"no chain {chain}: create its clinic first")
    seq, prev, now = head["last_seq"], head["last_hash"], head["now"]
    done = 0
    made: tuple[bytes, int, bytes] | None = None  # a batch made, not yet copied
    while done < count or made is not None:
        making = None
        if done < count:
            size = min(batch, count - done)
            start = now + timedelta(seconds=done)
            making = asyncio.ensure_future(
                asyncio.to_thread(_batch_csv, chain, seq, prev, start, size)
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


def _batch_csv(
    chain: str, seq: int, prev: bytes, now: datetime, count: int
) -> tuple[bytes, int, bytes]:
    """``count`` entries after ``seq`` (whose hash is ``prev``) as CSV; the last seq, hash."""
    out = io.StringIO()
    writer = csv.writer(out)
    for i in range(count):
        seq += 1
        fields: dict[str, Any] = {
            "chain": chain,
            "seq": seq,
            "recorded_at": now + timedelta(microseconds=i),
            "actor_id": None,
            "actor": "system:bulk",
            "actor_role": None,
            "action": "bulk.appended",
            "object_type": "thing",
            "object_id": str(seq),
            "clinic": chain.removeprefix("clinic:") if chain.startswith("clinic:") else None,
            "client_addr": None,
            "details": {"n": seq, "text": AWKWARD_TEXT},
            "prev_hash": prev,
        }
        content = canonical_content(**fields)
        prev = entry_hash(content)
        row = {**fields, "hash": prev, "content": content.decode()}
        writer.writerow([_csv_value(row[c]) for c in _COLUMNS])
    return out.getvalue().encode(), seq, prev
