"""Append many valid audit entries quickly (COPY), for the export benchmark and tests.

Entries are hashed and linked exactly as ``safetyreport.audit.append`` would, so the
chains verify; only the path differs (one COPY instead of one INSERT per entry).
"""

from __future__ import annotations

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
    """Append ``count`` entries to ``chain`` (which must exist), a COPY per batch."""
    done = 0
    while done < count:
        size = min(batch, count - done)
        async with conn.transaction():
            await _append_batch(conn, chain, size)
        done += size


async def _append_batch(conn: asyncpg.Connection[Any], chain: str, count: int) -> None:
    head = await conn.fetchrow(
        "SELECT last_seq, last_hash, clock_timestamp() AS now FROM audit_chains "
        "WHERE chain = $1 FOR UPDATE",
        chain,
    )
    if head is None:
        raise ValueError(f"no chain {chain}: create its clinic first")
    seq, prev, now = head["last_seq"], head["last_hash"], head["now"]
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
    await conn.copy_to_table(
        "audit_entries",
        source=io.BytesIO(out.getvalue().encode()),
        columns=list(_COLUMNS),
        format="csv",
    )
    await conn.execute(
        "UPDATE audit_chains SET last_seq = $2, last_hash = $3 WHERE chain = $1", chain, seq, prev
    )
