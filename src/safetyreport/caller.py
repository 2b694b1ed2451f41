"""Who is asking and from where: what every service needs to authorize and to audit.

Routes get a ``Caller`` from the request context (``request_context.caller``); services
take it with their connection and record what they did through ``Caller.audit``, in the
caller's transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from safetyreport import audit
from safetyreport.auth.users import Principal
from safetyreport.db.pool import Conn


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    # The client's address (X-Forwarded-For only from a trusted proxy; see request_context).
    address: str

    def event(
        self,
        action: str,
        *,
        object_type: str | None = None,
        object_id: str | None = None,
        clinic: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> audit.AuditEvent:
        """The audit entry for ``action`` done by this caller."""
        return audit.AuditEvent(
            actor=self.principal.actor(),
            action=action,
            object_type=object_type,
            object_id=object_id,
            clinic=clinic,
            client_addr=self.address,
            details=details or {},
        )

    async def audit(
        self,
        conn: Conn,
        action: str,
        *,
        object_type: str | None = None,
        object_id: str | None = None,
        clinic: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record ``action`` in the chain of ``clinic`` (none: the global chain)."""
        event = self.event(
            action, object_type=object_type, object_id=object_id, clinic=clinic, details=details
        )
        await audit.append(conn, event)

    async def audit_each_clinic(
        self,
        conn: Conn,
        clinics: Iterable[str | None],
        action: str,
        *,
        object_type: str | None = None,
        object_id: str | None = None,
        details_for: Callable[[str | None], dict[str, Any]],
    ) -> None:
        """Record ``action`` once in the chain of each clinic it touched (lists, searches,
        exports).

        ``details_for(clinic)`` gives the details of that clinic's entry (e.g. how many of
        the listed items were that clinic's).
        """

        def event_for(clinic: str | None) -> audit.AuditEvent:
            return self.event(
                action, object_type=object_type, object_id=object_id, details=details_for(clinic)
            )

        await audit.append_for_each_clinic(conn, clinics, event_for)
