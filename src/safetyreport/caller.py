"""Who is asking and from where: what every service needs to authorize and to audit.

Routes get a ``Caller`` from the request context (``request_context.caller``); services
take it with their connection and record what they did through ``Caller.audit``, in the
caller's transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from safetyreport import audit
from safetyreport.auth.users import Principal
from safetyreport.db.pool import Conn


class ListedItem(Protocol):
    """An item of a listed page: its id and its clinic."""

    @property
    def id(self) -> object: ...

    @property
    def clinic(self) -> str | None: ...


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

    async def audit_page(
        self,
        conn: Conn,
        action: str,
        *,
        object_type: str,
        filters: msgspec.Struct,
        clinic_filter: str | None,
        items: Sequence[ListedItem],
        ids_key: str,
    ) -> None:
        """Record a listed page in the chain of each clinic on it, naming that clinic's
        items under ``ids_key``, with the filters. An empty page is recorded where the
        clinic filter points (no clinic: the global chain)."""

        def listed(clinic: str | None) -> dict[str, Any]:
            ids = [str(i.id) for i in items if i.clinic == clinic]
            return {"filters": msgspec.to_builtins(filters), "count": len(ids), ids_key: ids}

        clinics: set[str | None] = {i.clinic for i in items} or {clinic_filter}
        await self.audit_each_clinic(
            conn, clinics, action, object_type=object_type, details_for=listed
        )
