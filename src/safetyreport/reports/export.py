"""Streaming exports of reports: CSV, NDJSON, or a FHIR R5 Bundle of AdverseEvents.

CSV and NDJSON carry every kind of report; the FHIR Bundle leaves stock incidents out
(they concern no patient and have no AdverseEvent).

An export reads the current version of every matching report from one snapshot (a
read-only repeatable-read transaction) through a server-side cursor, on a connection
the stream acquires for itself, and hands the bytes on in chunks: memory stays flat
however many reports match. Filters and clinic scope are those of the list endpoint.

Every export is audited twice, each time in a transaction of its own:
``report.export_started`` before the first byte leaves (who, filters, format), and
``report.exported`` when the stream ends, however it ends (reports sent, bytes and
their SHA-256, whether it completed), so an auditor can tell a downloaded file apart
from an edited one. The start is recorded in the chain of every clinic the export may
return, the end in the chain of every clinic whose reports it sent (if it sent none,
where the start is), so each clinic's own auditor sees who exported its patients.
"""

from __future__ import annotations

import csv
import hashlib
import io
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import anyio
import asyncpg
import msgspec

from safetyreport.caller import Caller
from safetyreport.csvsafe import neutralise
from safetyreport.db.pool import Conn, batches, read_snapshot, transaction
from safetyreport.db.query import Where
from safetyreport.reports import fhir, service
from safetyreport.reports.service import ReportView
from safetyreport.reports.types import ReportBody, StockIncident, dose_mg_per_kg
from safetyreport.sessions import fhir as session_fhir

ExportFormat = Literal["csv", "ndjson", "fhir"]
EXPORT_SYSTEM = "urn:safetyreport:report-export"
# Rows fetched per round trip, and the size at which a chunk is handed on.
PREFETCH_ROWS = 500
CHUNK_BYTES = 64 * 1024

# Oldest first: an export reads like a log.
_ORDER = " ORDER BY r.occurred_at, r.id"
_encoder = msgspec.json.Encoder()

# Body fields that become CSV columns, in this order, after the report's own columns. A
# field of an object in the body is named ``object.field``, as the rules name it
# (``cssrs.q4``); ``dose_mg_per_kg`` is derived (types.dose_mg_per_kg). A column that does
# not apply to a report's kind is empty.
CSV_BODY_COLUMNS = (
    "drug",
    "dose_mg",
    "weight_kg",
    "dose_mg_per_kg",
    "infusion_minutes",
    "minutes_after_dose",
    "outcome",
    "seriousness",
    "age_band",
    "phase",
    "systolic",
    "diastolic",
    "pulse",
    "respiratory_rate",
    "spo2",
    "syncope",
    "symptoms",
    "moaa_s",
    "severity",
    "cadss_total",
    "respiratory_depression",
    "resolved",
    "category",
    "verbatim_term",
    "cssrs.q1",
    "cssrs.q2",
    "cssrs.q3",
    "cssrs.q4",
    "cssrs.q5",
    "cssrs.q6",
    "phq9_item9",
    "rescue_medication",
    "ed_transfer",
    "urological_symptoms",
    "concern_type",
    "dast10_score",
    "incident_type",
    "discovered_at",
    "expected_quantity",
    "actual_quantity",
    "unit",
    "lot",
    "description",
    "narrative",
)
CSV_COLUMNS = (
    "id",
    "clinic",
    "kind",
    "version",
    "patient_ref",
    "occurred_at",
    "created_at",
    "created_by",
    "updated_at",
    "meddra_term",
    "serious",
    "hypertension_reading_grade",
    *CSV_BODY_COLUMNS,
)
# Kinds that have no FHIR AdverseEvent: the fhir export leaves them out.
NOT_ADVERSE_EVENTS = ("stock_incident",)


# The export selects reports exactly as the list does.
ExportFilters = service.ReportSelection


@dataclass(slots=True, kw_only=True)
class ReportExport:
    """One export: who asked for what, and what has been handed on so far."""

    caller: Caller
    filters: ExportFilters
    format: ExportFormat
    where: Where
    export_id: uuid.UUID = field(default_factory=uuid.uuid4)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    sent_reports: int = 0
    sent_bytes: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    # Codes of the clinics whose reports have been handed on.
    sent_clinics: set[str] = field(default_factory=set)

    def clinics_in_scope(self) -> list[str]:
        """The clinics this export may return (the chains its start is recorded in)."""
        if self.filters.clinic is not None:
            return [self.filters.clinic]
        return sorted(self.caller.principal.clinic_ids)

    def clinics_sent(self) -> list[str]:
        """The clinics whose reports it sent, or those in scope when it sent none."""
        return sorted(self.sent_clinics) if self.sent_clinics else self.clinics_in_scope()

    @property
    def media_type(self) -> str:
        return ENCODINGS[self.format].media_type

    @property
    def filename(self) -> str:
        stamp = self.started_at.strftime("%Y%m%dT%H%M%SZ")
        return f"reports-{stamp}.{ENCODINGS[self.format].suffix}"

    def sent(self, chunk: bytes, reports: int, clinics: set[str]) -> bytes:
        """Count ``chunk`` (``reports`` reports of ``clinics``) as handed on; return it."""
        self.sent_clinics |= clinics
        self.sent_reports += reports
        self.sent_bytes += len(chunk)
        self.digest.update(chunk)
        return chunk

    async def record(self, conn: Conn, action: str, clinics: list[str], **details: Any) -> None:
        """Audit ``action`` of this export in the chain of each of ``clinics``."""
        described = {"format": self.format, "filters": msgspec.to_builtins(self.filters), **details}
        await self.caller.audit_each_clinic(
            conn,
            clinics,
            action,
            object_type="report_export",
            object_id=str(self.export_id),
            details_for=lambda _clinic: described,
        )


# --- encodings ---------------------------------------------------------------------


class Encoding(Protocol):
    media_type: str
    suffix: str

    def head(self, export: ReportExport) -> bytes: ...

    def item(
        self, report: ReportView, index: int, session: fhir.SessionLinks | None = None
    ) -> bytes: ...

    def tail(self, reports: int) -> bytes: ...


def _csv_cell(value: Any) -> str:
    """Text neutralised against formula injection; numbers and flags as they are."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return neutralise(fhir.fhir_time(value))
    if isinstance(value, list):
        return neutralise(";".join(str(v) for v in value))
    if isinstance(value, int | float):
        return str(value)
    return neutralise(str(value))


def _body_value(body: ReportBody, column: str) -> Any:
    """The value of a body column: a field, a field of an object field, or derived."""
    if column == "dose_mg_per_kg":
        return (
            None
            if isinstance(body, StockIncident)
            else dose_mg_per_kg(body.dose_mg, body.weight_kg)
        )
    owner, _, inner = column.partition(".")
    value = getattr(body, owner, None)
    return getattr(value, inner, None) if inner else value


def csv_row(report: ReportView) -> list[str]:
    body: ReportBody = msgspec.convert(report.body, ReportBody)
    own = (
        report.id,
        report.clinic,
        report.kind,
        report.version,
        report.patient_ref,
        report.occurred_at,
        report.created_at,
        report.created_by,
        report.updated_at,
        fhir.event_term(body),
        # A stock incident has no seriousness: not "not serious", but not applicable.
        None if isinstance(body, StockIncident) else report.serious,
        report.hypertension_reading_grade,
    )
    from_body = (_body_value(body, column) for column in CSV_BODY_COLUMNS)
    return [_csv_cell(value) for value in (*own, *from_body)]


def _csv_line(cells: list[str] | tuple[str, ...]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue().encode()


class CsvEncoding:
    """RFC 4180 CSV, UTF-8, a header row first."""

    media_type = "text/csv"  # Litestar adds "; charset=utf-8" to text types
    suffix = "csv"

    def head(self, export: ReportExport) -> bytes:
        return _csv_line(CSV_COLUMNS)

    def item(
        self, report: ReportView, index: int, session: fhir.SessionLinks | None = None
    ) -> bytes:
        return _csv_line(csv_row(report))

    def tail(self, reports: int) -> bytes:
        return b""


class NdjsonEncoding:
    """One report per line, exactly as the list endpoint shows it."""

    media_type = "application/x-ndjson"
    suffix = "ndjson"

    def head(self, export: ReportExport) -> bytes:
        return b""

    def item(
        self, report: ReportView, index: int, session: fhir.SessionLinks | None = None
    ) -> bytes:
        return _encoder.encode(report) + b"\n"

    def tail(self, reports: int) -> bytes:
        return b""


class FhirBundleEncoding:
    """A FHIR Bundle of type collection, written as it goes.

    FHIR forbids empty arrays, so ``entry`` opens with the first report, if any.
    """

    media_type = fhir.FHIR_JSON
    suffix = "fhir.json"

    def head(self, export: ReportExport) -> bytes:
        head = _encoder.encode(
            {
                "resourceType": "Bundle",
                "id": str(export.export_id),
                "identifier": {"system": EXPORT_SYSTEM, "value": str(export.export_id)},
                "type": "collection",
                "timestamp": fhir.fhir_time(export.started_at),
            }
        )
        return head[:-1]  # left open for the entries

    def item(
        self, report: ReportView, index: int, session: fhir.SessionLinks | None = None
    ) -> bytes:
        resource = fhir.adverse_event(report, session)
        entry = {"fullUrl": f"urn:uuid:{report.id}", "resource": resource}
        return (b',"entry":[' if index == 0 else b",") + _encoder.encode(entry)

    def tail(self, reports: int) -> bytes:
        return b"]}" if reports else b"}"


ENCODINGS: dict[ExportFormat, Encoding] = {
    "csv": CsvEncoding(),
    "ndjson": NdjsonEncoding(),
    "fhir": FhirBundleEncoding(),
}


# --- streaming ---------------------------------------------------------------------


async def start_export(
    pool: asyncpg.Pool, caller: Caller, filters: ExportFilters, export_format: ExportFormat
) -> ReportExport:
    """Check the filters and record the start, committed, before any byte is sent.

    ``pool``: the exports' own (``AppState.export_pool``), as for ``stream_export``.
    """
    where = service.selection_where(caller.principal, filters)
    if export_format == "fhir":
        where.add(f"r.kind <> ALL({where.param(list(NOT_ADVERSE_EVENTS))}::text[])")
    export = ReportExport(caller=caller, filters=filters, format=export_format, where=where)
    async with transaction(pool) as conn:
        await export.record(conn, "report.export_started", export.clinics_in_scope())
    return export


class _Chunk:
    """Encoded reports gathered until there are enough to hand on."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.reports = 0
        self.clinics: set[str] = set()

    def add(self, data: bytes, report: ReportView | None = None) -> None:
        self.data += data
        if report is not None:
            self.reports += 1
            self.clinics.add(report.clinic)

    def take(self) -> tuple[bytes, int, set[str]]:
        taken = (bytes(self.data), self.reports, self.clinics)
        self.data.clear()
        self.reports = 0
        self.clinics = set()
        return taken


async def stream_export(pool: asyncpg.Pool, export: ReportExport) -> AsyncGenerator[bytes, None]:
    """The export's bytes, a chunk at a time; its end is audited however it comes.

    Close the generator (``aclose``) when the response ends early, so the snapshot's
    connection goes back to the pool at once.
    """
    encoding = ENCODINGS[export.format]
    chunk = _Chunk()
    chunk.add(encoding.head(export))
    completed = False
    try:
        sql = service.SELECT_VIEW + export.where.sql() + _ORDER
        index = 0
        async with read_snapshot(pool) as conn:
            async for rows in batches(conn, sql, export.where.args, PREFETCH_ROWS):
                reports = [service.view_of_row(row) for row in rows]
                sessions: dict[str, fhir.SessionLinks] = {}
                if export.format == "fhir":
                    # A report's AdverseEvent refers to its treatment session's resources.
                    sessions = await session_fhir.links_of_sessions(
                        conn,
                        export.caller.principal,
                        {r.body["session_id"] for r in reports if r.body.get("session_id")},
                    )
                for report in reports:
                    session = sessions.get(report.body.get("session_id") or "")
                    chunk.add(encoding.item(report, index, session), report)
                    index += 1
                    if len(chunk.data) >= CHUNK_BYTES:
                        yield export.sent(*chunk.take())
        chunk.add(encoding.tail(index))
        yield export.sent(*chunk.take())
        completed = True
    finally:
        # A client that hangs up cancels the stream: record the end all the same.
        with anyio.CancelScope(shield=True):
            await _record_end(pool, export, completed)


async def _record_end(pool: asyncpg.Pool, export: ReportExport, completed: bool) -> None:
    async with transaction(pool) as conn:
        await export.record(
            conn,
            "report.exported",
            export.clinics_sent(),
            count=export.sent_reports,
            bytes=export.sent_bytes,
            sha256=export.digest.hexdigest(),
            completed=completed,
        )
