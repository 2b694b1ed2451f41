"""HTTP routes for the audit trail: verify, search, export, keys and checkpoints."""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import OpenAPIFormat, OpenAPIType, Schema
from litestar.params import FromQuery, QueryParameter
from litestar.response import Stream

from safetyreport import audit
from safetyreport.audit import checkpoints, offline
from safetyreport.audit.export import (
    FILE_SUFFIX,
    MEDIA_TYPES,
    AuditExport,
    AuditFilters,
    ExportFormat,
    readable_chains,
    stream_export,
)
from safetyreport.audit.search import AuditEntryPage, search_entries
from safetyreport.auth.http import principal_of, require_roles
from safetyreport.auth.permissions import AUDIT_READERS, EVERYONE, allow
from safetyreport.limits import BUSY
from safetyreport.state import app_state, client_address
from safetyreport.streaming import download, download_operation
from safetyreport.times import require_utc

# Larger exports are for the offline verifier; this is for checking a download quickly.
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
VERIFIER_SCRIPT = Path(offline.__file__).read_bytes()


async def audit_filters(
    since: Annotated[datetime | None, QueryParameter(name="from")] = None,
    until: FromQuery[datetime | None] = None,
    clinic: FromQuery[str | None] = None,
    actor: FromQuery[str | None] = None,
    action: FromQuery[str | None] = None,
    object: Annotated[
        str | None, QueryParameter(description='an object type, or "type:id"')
    ] = None,
) -> AuditFilters:
    return AuditFilters(
        since=None if since is None else require_utc("from", since),
        until=None if until is None else require_utc("until", until),
        clinic=clinic,
        actor=actor,
        action=action,
        object=object,
    )


_EXPORT_OPERATION = download_operation(
    {
        MEDIA_TYPES["ndjson"]: Schema(type=OpenAPIType.STRING),
        MEDIA_TYPES["csv"]: Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY),
    }
)


class VerifyResult(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    entries: int
    problems: list[str]
    key_id: str


# An upload is kept in memory up to this size, and in a temporary file beyond it.
UPLOAD_SPOOL_BYTES = 1024 * 1024


async def _verify_upload(
    request: Request[Any, Any, Any], public_key: Ed25519PublicKey
) -> offline.Result:
    """Verify the request body as it is uploaded, never holding all of it in memory.

    The body is spooled to a temporary file as it arrives (a zip is read from its end, so
    the whole of it must be at hand); the verifier then reads it line by line (or member
    by member) in a worker thread.
    """
    with tempfile.SpooledTemporaryFile(max_size=UPLOAD_SPOOL_BYTES) as upload:
        async for chunk in request.stream():
            upload.write(chunk)
        return await asyncio.to_thread(offline.verify_export, upload, public_key)


class AuditController(Controller):
    path = "/api/v1/audit"
    tags = ["audit"]
    guards = [require_roles]
    opt = allow(AUDIT_READERS)
    dependencies = {"filters": Provide(audit_filters)}

    @get("/verify", responses=BUSY)
    async def verify(self, request: Request[Any, Any, Any]) -> audit.VerifyReport:
        """Recompute every chain you may read; name the first broken entry of each broken one.

        One verification runs at a time per service process; another one meanwhile is
        429 with Retry-After.
        """
        state = app_state(request)
        principal = principal_of(request)
        with state.chain_verifications.claim():
            async with state.pool.acquire() as conn:
                report = await audit.verify_chains(conn, readable_chains(principal, None))
                async with conn.transaction():
                    await audit.append(
                        conn,
                        audit.AuditEvent(
                            actor=principal.actor(),
                            action="audit.verified",
                            object_type="audit_trail",
                            client_addr=client_address(request),
                            details={
                                "ok": report.ok,
                                "entries": report.entries,
                                "broken_chains": [c.chain for c in report.broken],
                            },
                        ),
                    )
        return report

    @get("/entries")
    async def entries(
        self,
        request: Request[Any, Any, Any],
        filters: NamedDependency[AuditFilters],
        cursor: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    ) -> AuditEntryPage:
        """Entries matching the filters, newest first, a page at a time."""
        async with app_state(request).pool.acquire() as conn:
            return await search_entries(
                conn,
                principal_of(request),
                filters,
                cursor=cursor,
                limit=limit,
                client_addr=client_address(request),
            )

    @get("/export", operation_class=_EXPORT_OPERATION, responses=BUSY)
    async def export(
        self,
        request: Request[Any, Any, Any],
        filters: NamedDependency[AuditFilters],
        format: FromQuery[ExportFormat] = "ndjson",
    ) -> Stream:
        """The matching entries with a signed manifest: NDJSON, or CSV in a zip.

        NDJSON ends with the manifest line; the zip holds audit-export.csv and
        manifest.json. Check either offline with the public key.
        """
        state = app_state(request)
        export = AuditExport(
            principal=principal_of(request),
            filters=filters,
            format=format,
            client_addr=client_address(request),
            signer=state.signer,
        )
        slot = state.exports.claim(export.principal.id)  # 429 beyond the caps
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return download(
            stream_export(state.export_pool, export),
            media_type=MEDIA_TYPES[format],
            filename=f"audit-export-{stamp}.{FILE_SUFFIX[format]}",
            export_id=export.export_id,
            send_timeout=state.settings.capacity.export_send_timeout.total_seconds(),
            on_close=slot.release,
        )

    @post(
        "/export/verify",
        status_code=200,
        request_max_body_size=MAX_UPLOAD_BYTES,
        responses=BUSY,
    )
    async def verify_export(self, request: Request[Any, Any, Any]) -> VerifyResult:
        """Verify an export (the raw NDJSON or zip as the body) with this service's key.

        A few uploads are verified at a time per service process; more meanwhile are
        429 with Retry-After.
        """
        state = app_state(request)
        public_key = state.signer.private_key.public_key()
        with state.upload_verifications.claim():
            result = await _verify_upload(request, public_key)
        async with state.pool.acquire() as conn, conn.transaction():
            await audit.append(
                conn,
                audit.AuditEvent(
                    actor=principal_of(request).actor(),
                    action="audit.export_verified",
                    object_type="audit_export",
                    object_id=(result.manifest or {}).get("export_id"),
                    client_addr=client_address(request),
                    details={"ok": result.ok, "entries": result.entries},
                ),
            )
        return VerifyResult(
            ok=result.ok,
            entries=result.entries,
            problems=result.problems,
            key_id=state.signer.key_id,
        )

    @get("/public-key", opt=allow(EVERYONE), media_type="application/x-pem-file")
    async def public_key(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """The Ed25519 public key (PEM) that verifies exports and checkpoints."""
        signer = app_state(request).signer
        return Response(
            signer.public_pem,
            media_type="application/x-pem-file",
            headers={
                "Content-Disposition": f'attachment; filename="safetyreport-{signer.key_id}.pem"'
            },
        )

    @get("/verifier.py", opt=allow(EVERYONE), media_type="text/x-python")
    async def verifier_script(self) -> Response[bytes]:
        """The offline verifier: a single script that needs only the cryptography package."""
        return Response(
            VERIFIER_SCRIPT,
            media_type="text/x-python",
            headers={"Content-Disposition": 'attachment; filename="verify_audit_export.py"'},
        )

    @get("/checkpoints")
    async def list_checkpoints(
        self,
        request: Request[Any, Any, Any],
        clinic: FromQuery[str | None] = None,
        latest: FromQuery[bool] = False,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> list[checkpoints.SignedCheckpoint]:
        """Signed checkpoints, newest first; ``latest=true``: the newest of each chain.

        Save the list as a file and give it to ``--checkpoint`` later.
        """
        chains = readable_chains(principal_of(request), clinic)
        async with app_state(request).pool.acquire() as conn:
            if latest:
                return await checkpoints.latest(conn, chains)
            return await checkpoints.recent(conn, chains, limit)

    @post("/checkpoints", status_code=201)
    async def create_checkpoints(
        self, request: Request[Any, Any, Any], clinic: FromQuery[str | None] = None
    ) -> list[checkpoints.SignedCheckpoint]:
        """Sign every chain head now; answer the newest checkpoint of each chain you read."""
        state = app_state(request)
        principal = principal_of(request)
        chains = readable_chains(principal, clinic)
        async with state.pool.acquire() as conn:
            async with conn.transaction():
                signed = await checkpoints.sign_heads(conn, state.signer)
                await audit.append(
                    conn,
                    audit.AuditEvent(
                        actor=principal.actor(),
                        action="audit.checkpoints_signed",
                        object_type="audit_trail",
                        client_addr=client_address(request),
                        details={"signed": signed, "key_id": state.signer.key_id},
                    ),
                )
            return await checkpoints.latest(conn, chains)
