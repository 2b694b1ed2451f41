"""Streaming audit exports (NDJSON, or CSV in a zip) that carry a signed manifest.

An export reads one consistent snapshot (a repeatable-read transaction) through a
server-side cursor, a batch of rows at a time, so memory stays flat however many
entries it holds. NDJSON lines are built by PostgreSQL from the stored canonical
content; Python only joins them, hashes the body and signs the manifest at the end.

Every export is audited twice: before the first byte leaves (who, which filters), in
the chain of every clinic it may return, and when it ends (how many entries, the body
digest, whether it completed), in the chain of every clinic whose entries it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import json
import uuid
import zipfile
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import asyncpg

from safetyreport.audit.chain import GLOBAL_CHAIN, chain_for, content_of_row, format_time
from safetyreport.audit.offline import CSV_COLUMNS, CSV_MEMBER, EXPORT_FORMAT, MANIFEST_MEMBER
from safetyreport.audit.signing import Signer
from safetyreport.auth.users import Principal
from safetyreport.caller import Caller
from safetyreport.csvsafe import neutralise
from safetyreport.db.pool import Conn, batches, read_snapshot, transaction
from safetyreport.db.query import Where
from safetyreport.errors import ValidationFailed

ExportFormat = Literal["ndjson", "csv"]
BATCH_ROWS = 5000

# One NDJSON line per entry, built by PostgreSQL: the chain fields, then the stored
# canonical content as it is (the verifier hashes those very bytes; see
# offline.raw_content). Entries older than the stored content have no line here (NULL);
# theirs is recomputed from their columns.
_NDJSON_LINE = """
'{"chain":' || to_json(chain)::text || ',"seq":' || seq
|| ',"prev_hash":"' || encode(prev_hash, 'hex') || '","hash":"' || encode(hash, 'hex')
|| '","content":' || content || '}'
"""
# bytea, so the lines reach Python as the bytes to send, with no decoding and encoding.
_NDJSON_SELECT = f"SELECT chain, seq, convert_to({_NDJSON_LINE}, 'UTF8') AS line FROM audit_entries"  # noqa: S608
_CSV_SELECT = """
SELECT chain, seq,
       to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
       actor, actor_id, actor_role, action, object_type, object_id, clinic, client_addr,
       details::text, encode(prev_hash, 'hex'), encode(hash, 'hex'), content
FROM audit_entries
"""
_ORDER = " ORDER BY chain, seq"
_LEGACY_ENTRY = """
SELECT chain, seq, recorded_at, actor_id, actor, actor_role, action, object_type,
       object_id, clinic, client_addr, details, prev_hash, hash
FROM audit_entries WHERE chain = $1 AND seq = $2
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditFilters:
    """What part of the trail to read; None means no filter."""

    since: datetime | None = None  # the ``from`` query parameter (inclusive)
    until: datetime | None = None  # exclusive
    clinic: str | None = None
    actor: str | None = None
    action: str | None = None
    object: str | None = None  # "type" or "type:id"

    def as_dict(self) -> dict[str, str | None]:
        return {
            "from": None if self.since is None else format_time(self.since),
            "until": None if self.until is None else format_time(self.until),
            "clinic": self.clinic,
            "actor": self.actor,
            "action": self.action,
            "object": self.object,
        }


def readable_chains(principal: Principal, clinic: str | None) -> list[str] | None:
    """Chains this user may read (None: all). Another clinic's chain is NotFound.

    The global chain (logins, users, rules) is for users granted every clinic only.
    """
    if clinic is not None:
        principal.visible_clinics(clinic)  # raises NotFound for a foreign clinic
        return [chain_for(clinic)]
    if principal.all_clinics:
        return None
    return sorted(chain_for(code) for code in principal.clinic_ids)


def clinic_of_chain(chain: str) -> str | None:
    """The clinic whose chain this is; None for the global chain."""
    return None if chain == GLOBAL_CHAIN else chain.removeprefix("clinic:")


def clinics_in_scope(principal: Principal, clinic: str | None) -> list[str | None]:
    """The clinics (None: the global chain) whose chains a read may return."""
    chains = readable_chains(principal, clinic)
    if chains is None:  # every chain
        return [None, *sorted(principal.clinic_ids)]
    return [clinic_of_chain(chain) for chain in chains]


def where_clause(principal: Principal, filters: AuditFilters) -> Where:
    if filters.since and filters.until and filters.since >= filters.until:
        raise ValidationFailed.one("until", "after_from", "until must be later than from")
    where = Where()
    where.in_values("chain", readable_chains(principal, filters.clinic), "text")
    if filters.since is not None:
        where.add(f"recorded_at >= {where.param(filters.since)}")
    if filters.until is not None:
        where.add(f"recorded_at < {where.param(filters.until)}")
    where.equals("actor", filters.actor)
    where.equals("action", filters.action)
    if filters.object is not None:
        object_type, _, object_id = filters.object.partition(":")
        where.equals("object_type", object_type)
        where.equals("object_id", object_id or None)
    return where


@dataclass(slots=True)
class _Summary:
    """Entries per chain as they stream past, and the digest of the body."""

    chains: dict[str, dict[str, int]] = field(default_factory=dict)
    entries: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    _hashing: asyncio.Future[None] | None = None

    def count_batch(self, rows: list[asyncpg.Record]) -> list[Any]:
        """Count rows of (chain, seq, value, ...) in chain order; return their values."""
        self.entries += len(rows)
        if rows[0][0] == rows[-1][0]:  # the usual case: the whole batch is in one chain
            stats = self.chains.setdefault(rows[0][0], {"first_seq": rows[0][1], "entries": 0})
            stats["last_seq"] = rows[-1][1]
            stats["entries"] += len(rows)
            return [row[2] for row in rows]
        values = []
        for row in rows:
            counts = self.chains.setdefault(row[0], {"first_seq": row[1], "entries": 0})
            counts["last_seq"] = row[1]
            counts["entries"] += 1
            values.append(row[2])
        return values

    async def hash(self, chunk: bytes) -> None:
        """Add ``chunk`` to the digest in a thread, after the chunk before it.

        Hashing releases the GIL, so it overlaps sending this chunk and fetching the next.
        """
        await self.hashed()
        self._hashing = asyncio.get_running_loop().run_in_executor(None, self.digest.update, chunk)

    async def hashed(self) -> None:
        if self._hashing is not None:
            await self._hashing
            self._hashing = None


@dataclass(slots=True)
class AuditExport:
    """One export being streamed: who asked, for what, and what has gone out so far."""

    caller: Caller
    filters: AuditFilters
    format: ExportFormat
    signer: Signer
    # Built (and so validated) before the response starts: a bad filter is a plain 422.
    where: Where = field(init=False)
    export_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    summary: _Summary = field(default_factory=_Summary)

    def __post_init__(self) -> None:
        self.where = where_clause(self.caller.principal, self.filters)

    def manifest(self) -> dict[str, Any]:
        return {
            "format": EXPORT_FORMAT,
            "export_id": self.export_id,
            "content": self.format,
            "generated_at": format_time(datetime.now(UTC)),
            "generated_by": {
                "actor": self.caller.principal.username,
                "role": self.caller.principal.role,
            },
            "filters": self.filters.as_dict(),
            "entries": self.summary.entries,
            "chains": self.summary.chains,
            "body_sha256": self.summary.digest.hexdigest(),
            "key_id": self.signer.key_id,
        }

    def manifest_line(self) -> bytes:
        manifest = self.manifest()
        signed = {"manifest": manifest, "signature": self.signer.sign(manifest)}
        return json.dumps(signed, sort_keys=True, separators=(",", ":")).encode() + b"\n"

    def clinics_in_scope(self) -> list[str | None]:
        """The clinics (None: the global chain) whose entries this export may return."""
        return clinics_in_scope(self.caller.principal, self.filters.clinic)

    async def record(
        self, conn: Conn, action: str, clinics: list[str | None], **details: Any
    ) -> None:
        """Audit ``action`` of this export in the chain of each of ``clinics``."""
        described = {"format": self.format, "filters": self.filters.as_dict(), **details}
        await self.caller.audit_each_clinic(
            conn,
            clinics,
            action,
            object_type="audit_export",
            object_id=self.export_id,
            details_for=lambda _clinic: described,
        )


async def stream_export(pool: asyncpg.Pool, export: AuditExport) -> AsyncGenerator[bytes, None]:
    """The export's bytes; audited before the first byte and again at the end.

    ``pool``: the exports' own (``AppState.export_pool``); the stream takes its
    connections when the body is sent.
    """
    async with transaction(pool) as conn:
        await export.record(conn, "audit.export_started", export.clinics_in_scope())
    body = _ndjson_body if export.format == "ndjson" else _csv_zip_body
    completed = False
    try:
        # Closed with this generator, so the snapshot's connection returns at once.
        async with contextlib.aclosing(body(pool, export, export.where)) as chunks:
            async for chunk in chunks:
                yield chunk
        completed = True
    finally:
        # Also when the client went away: shield the record from the cancellation.
        with anyio.CancelScope(shield=True):
            sent = [clinic_of_chain(chain) for chain in export.summary.chains]
            async with transaction(pool) as conn:
                await export.record(
                    conn,
                    "audit.exported",
                    sent or export.clinics_in_scope(),
                    entries=export.summary.entries,
                    body_sha256=export.summary.digest.hexdigest(),
                    completed=completed,
                )


async def _legacy_content(conn: Conn, chain: str, seq: int) -> str:
    """The canonical content of an entry written before content was stored."""
    row = await conn.fetchrow(_LEGACY_ENTRY, chain, seq)
    assert row is not None
    return content_of_row(row).decode()


async def _legacy_line(conn: Conn, chain: str, seq: int) -> str:
    """The NDJSON line of an entry written before content was stored (as _NDJSON_LINE)."""
    entry = await conn.fetchrow(_LEGACY_ENTRY, chain, seq)
    assert entry is not None
    prefix = json.dumps(
        {
            "chain": chain,
            "seq": seq,
            "prev_hash": entry["prev_hash"].hex(),
            "hash": entry["hash"].hex(),
        },
        separators=(",", ":"),
    )
    content = await _legacy_content(conn, chain, seq)
    return f'{prefix[:-1]},"content":{content}}}'


async def _ndjson_body(
    pool: asyncpg.Pool, export: AuditExport, where: Where
) -> AsyncGenerator[bytes, None]:
    summary = export.summary
    async with read_snapshot(pool) as conn:
        async for rows in batches(
            conn, _NDJSON_SELECT + where.sql() + _ORDER, where.args, BATCH_ROWS
        ):
            lines = summary.count_batch(rows)
            for i, line in enumerate(lines):
                if line is None:
                    lines[i] = (await _legacy_line(conn, rows[i][0], rows[i][1])).encode()
            chunk = b"\n".join(lines) + b"\n"
            await summary.hash(chunk)
            yield chunk
    await summary.hashed()
    yield export.manifest_line()


class _Pipe:
    """A write-only file for zipfile whose bytes the generator hands on as they come."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def drain(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


def _csv_text(rows: list[list[Any]], header: bool = False) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    writer.writerows(rows)
    return out.getvalue().encode()


def _csv_cells(row: asyncpg.Record, content: str) -> list[Any]:
    cells = [neutralise(v) if isinstance(v, str) else v for v in tuple(row)[:-1]]
    return [*cells, neutralise(content)]


async def _csv_zip_body(
    pool: asyncpg.Pool, export: AuditExport, where: Where
) -> AsyncGenerator[bytes, None]:
    summary, pipe = export.summary, _Pipe()
    with zipfile.ZipFile(pipe, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open(CSV_MEMBER, "w", force_zip64=True) as member:
            _write_csv(member, summary, _csv_text([], header=True))
            async with read_snapshot(pool) as conn:
                sql = _CSV_SELECT + where.sql() + _ORDER
                async for rows in batches(conn, sql, where.args, BATCH_ROWS):
                    summary.count_batch(rows)
                    cells = []
                    for row in rows:
                        content = row["content"] or await _legacy_content(conn, row[0], row[1])
                        cells.append(_csv_cells(row, content))
                    _write_csv(member, summary, _csv_text(cells))
                    yield pipe.drain()
        archive.writestr(MANIFEST_MEMBER, export.manifest_line())
    yield pipe.drain()


def _write_csv(member: Any, summary: _Summary, data: bytes) -> None:
    summary.digest.update(data)
    member.write(data)


MEDIA_TYPES: dict[ExportFormat, str] = {"ndjson": "application/x-ndjson", "csv": "application/zip"}
FILE_SUFFIX: dict[ExportFormat, str] = {"ndjson": "ndjson", "csv": "csv.zip"}
