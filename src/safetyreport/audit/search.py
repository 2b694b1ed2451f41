"""Searching the audit trail a page at a time, newest first, with the export's filters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from safetyreport.audit.chain import chain_for
from safetyreport.audit.export import AuditFilters, clinic_of_chain, where_clause
from safetyreport.auth.users import Principal
from safetyreport.caller import Caller
from safetyreport.db.pool import Conn
from safetyreport.pagination import decode_cursor, encode_cursor

_SELECT = """
SELECT chain, seq, recorded_at, actor, actor_id, actor_role, action, object_type,
       object_id, clinic, client_addr, details, encode(prev_hash, 'hex') AS prev_hash,
       encode(hash, 'hex') AS hash
FROM audit_entries
"""


class AuditEntryView(msgspec.Struct, frozen=True, kw_only=True):
    chain: str
    seq: int
    recorded_at: datetime
    actor: str
    actor_id: int | None
    actor_role: str | None
    action: str
    object_type: str | None
    object_id: str | None
    clinic: str | None
    client_addr: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str


class AuditEntryPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[AuditEntryView]
    next_cursor: str | None


async def search_entries(
    conn: Conn, caller: Caller, filters: AuditFilters, *, cursor: str | None, limit: int
) -> AuditEntryPage:
    """One page of matching entries; the search itself is audited."""
    sql, args = search_query(caller.principal, filters, cursor=cursor, limit=limit)
    rows = await conn.fetch(sql, *args)
    items = [AuditEntryView(**dict(r.items())) for r in rows[:limit]]
    await _audit_search(conn, caller, filters, items)
    last = items[-1] if len(rows) > limit else None
    next_cursor = None if last is None else encode_cursor(last.recorded_at, last.chain, last.seq)
    return AuditEntryPage(items=items, next_cursor=next_cursor)


def search_query(
    principal: Principal, filters: AuditFilters, *, cursor: str | None, limit: int
) -> tuple[str, list[Any]]:
    """The SQL of a page of the search and its arguments (one more row than the page)."""
    where = where_clause(principal, filters)
    if cursor is not None:
        at, chain, seq = decode_cursor(cursor, tuple[datetime, str, int])
        where.add(
            f"(recorded_at, chain, seq) < ({where.param(at)}, {where.param(chain)}, "
            f"{where.param(seq)})"
        )
    order = " ORDER BY recorded_at DESC, chain DESC, seq DESC"
    return f"{_SELECT}{where.sql()}{order} LIMIT {int(limit) + 1}", where.args


async def _audit_search(
    conn: Conn, caller: Caller, filters: AuditFilters, items: list[AuditEntryView]
) -> None:
    """Record the search in the chain of each clinic whose entries it returned.

    A search that returned nothing is recorded where the filter points (no clinic: the
    global chain).
    """

    def searched(clinic: str | None) -> dict[str, Any]:
        chain = chain_for(clinic)
        return {
            "filters": filters.as_dict(),
            "returned": sum(1 for i in items if i.chain == chain),
        }

    clinics = {clinic_of_chain(i.chain) for i in items} or {filters.clinic}
    await caller.audit_each_clinic(
        conn, clinics, "audit.searched", object_type="audit_trail", details_for=searched
    )
