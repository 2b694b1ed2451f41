"""HTTP routes for the audit trail."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get

from safetyreport import audit
from safetyreport.auth.http import ROLES_OPT, principal_of, require_roles
from safetyreport.state import app_state, client_address


class AuditController(Controller):
    path = "/api/v1/audit"
    tags = ["audit"]
    guards = [require_roles]
    opt = {ROLES_OPT: ("auditor", "admin")}

    @get("/verify")
    async def verify(self, request: Request[Any, Any, Any]) -> audit.VerifyReport:
        """Recompute every chain; name the first broken entry of each broken chain."""
        state = app_state(request)
        principal = principal_of(request)
        async with state.pool.acquire() as conn:
            report = await audit.verify_chains(conn)
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
