"""HTTP routes for the audit trail: verify, search, export, keys and checkpoints."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import OpenAPIFormat, OpenAPIType, Schema
from litestar.params import FromQuery, QueryParameter
from litestar.response import Stream

from safetyreport import audit
from safetyreport.audit import checkpoints, offline, service
from safetyreport.audit.export import (
    FILE_SUFFIX,
    MEDIA_TYPES,
    AuditExport,
    AuditFilters,
    ExportFormat,
    stream_export,
)
from safetyreport.audit.search import AuditEntryPage, search_entries
from safetyreport.auth.http import require_roles
from safetyreport.auth.permissions import AUDIT_READERS, EVERYONE, allow
from safetyreport.limits import BUSY
from safetyreport.request_context import (
    CallerDep,
    DbDep,
    SnapshotDep,
    StateDep,
    UntilQuery,
    time_query,
)
from safetyreport.streaming import download, download_operation
from safetyreport.times import parse_time

# Larger exports are for the offline verifier; this is for checking a download quickly.
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
VERIFIER_SCRIPT = Path(offline.__file__).read_bytes()


async def audit_filters(
    since: Annotated[
        str | None, time_query("only entries at or after this time", name="from")
    ] = None,
    until: UntilQuery = None,
    clinic: FromQuery[str | None] = None,
    actor: FromQuery[str | None] = None,
    action: FromQuery[str | None] = None,
    object: Annotated[
        str | None, QueryParameter(description='an object type, or "type:id"')
    ] = None,
) -> AuditFilters:
    return AuditFilters(
        since=parse_time("from", since),
        until=parse_time("until", until),
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


class AuditController(Controller):
    path = "/api/v1/audit"
    tags = ["audit"]
    guards = [require_roles]
    opt = allow(AUDIT_READERS)
    dependencies = {"filters": Provide(audit_filters)}

    @get("/verify", responses=BUSY)
    async def verify(
        self,
        db: DbDep,
        snapshot: SnapshotDep,
        caller: CallerDep,
        app_state: StateDep,
        full: Annotated[
            bool,
            QueryParameter(
                description="walk every chain from its first entry (default: from each "
                "chain's latest signed checkpoint)"
            ),
        ] = False,
    ) -> audit.VerifyReport:
        """Verify every chain you may read; name the first broken entry of each broken one.

        Each chain is walked from its latest signed checkpoint (``checkpoint_seq`` in its
        report; none: from its first entry), after checking the checkpoint's signature and
        its entry; ``full=true`` walks every entry. One verification runs at a time per
        service process; another one meanwhile is 429 with Retry-After.
        """
        public_key = app_state.signer.private_key.public_key()
        with app_state.chain_verifications.claim():
            return await service.verify_trail(
                db, caller, snapshot, public_key=public_key, full=full
            )

    @get("/entries")
    async def entries(
        self,
        db: DbDep,
        caller: CallerDep,
        filters: NamedDependency[AuditFilters],
        cursor: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    ) -> AuditEntryPage:
        """Entries matching the filters, newest first, a page at a time."""
        return await search_entries(db, caller, filters, cursor=cursor, limit=limit)

    @get("/export", operation_class=_EXPORT_OPERATION, responses=BUSY)
    async def export(
        self,
        caller: CallerDep,
        app_state: StateDep,
        filters: NamedDependency[AuditFilters],
        format: FromQuery[ExportFormat] = "ndjson",
    ) -> Stream:
        """The matching entries with a signed manifest: NDJSON, or CSV in a zip.

        NDJSON ends with the manifest line; the zip holds audit-export.csv and
        manifest.json. Check either offline with the public key.
        """
        export = AuditExport(caller=caller, filters=filters, format=format, signer=app_state.signer)
        # The export streams on connections of its own, from the exports' pool, taken
        # when the body is sent (a request's ``db`` would be gone by then).
        slot = app_state.exports.claim(caller.principal.id)  # 429 beyond the caps
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return download(
            stream_export(app_state.export_pool, export),
            media_type=MEDIA_TYPES[format],
            filename=f"audit-export-{stamp}.{FILE_SUFFIX[format]}",
            export_id=export.export_id,
            send_timeout=app_state.settings.capacity.export_send_timeout.total_seconds(),
            on_close=slot.release,
        )

    @post(
        "/export/verify",
        status_code=200,
        request_max_body_size=MAX_UPLOAD_BYTES,
        responses=BUSY,
    )
    async def verify_export(
        self, request: Request[Any, Any, Any], caller: CallerDep, app_state: StateDep
    ) -> VerifyResult:
        """Verify an export (the raw NDJSON or zip as the body) with this service's key.

        A few uploads are verified at a time per service process; more meanwhile are
        429 with Retry-After.
        """
        # No ``db``: the upload may take long, and holds no database connection meanwhile.
        signer = app_state.signer
        with app_state.upload_verifications.claim():
            result = await service.verify_upload(
                app_state.pool, caller, request.stream(), signer.private_key.public_key()
            )
        return VerifyResult(
            ok=result.ok, entries=result.entries, problems=result.problems, key_id=signer.key_id
        )

    @get("/public-key", opt=allow(EVERYONE), media_type="application/x-pem-file")
    async def public_key(self, app_state: StateDep) -> Response[bytes]:
        """The Ed25519 public key (PEM) that verifies exports and checkpoints."""
        signer = app_state.signer
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
        db: DbDep,
        caller: CallerDep,
        clinic: FromQuery[str | None] = None,
        latest: FromQuery[bool] = False,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> list[checkpoints.SignedCheckpoint]:
        """Signed checkpoints, newest first; ``latest=true``: the newest of each chain.

        Save the list as a file and give it to ``--checkpoint`` later.
        """
        return await service.list_checkpoints(db, caller, clinic, latest=latest, limit=limit)

    @post("/checkpoints", status_code=201)
    async def create_checkpoints(
        self,
        db: DbDep,
        caller: CallerDep,
        app_state: StateDep,
        clinic: FromQuery[str | None] = None,
    ) -> list[checkpoints.SignedCheckpoint]:
        """Sign every chain head now; answer the newest checkpoint of each chain you read."""
        return await service.sign_checkpoints(db, caller, app_state.signer, clinic)
