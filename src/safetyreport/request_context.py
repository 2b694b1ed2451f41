"""The request context: what a route handler may ask for by naming a parameter.

Registered once on the app (``DEPENDENCIES``), so handlers never dig in the request:

- ``app_state``: the app's ``AppState`` (settings, pools, broker, signer, caps);
- ``caller``: the signed-in user and the client's address (a ``Caller``);
- ``address``: the client's address alone, for routes open to anyone (signing in);
- ``db``: a pooled connection already inside a transaction. Litestar commits it after the
  handler returns and before the response is sent (a response the client sees is
  stored), and rolls it back when the handler raises; everything the handler's service
  writes, audit entries included, goes in that one transaction, and what the metrics count
  of it is counted once it has committed (``metrics.facts``);
- ``snapshot``: another pooled connection, in a read-only repeatable-read transaction,
  for reads that must see one instant however long they take (verifying the trail).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, TypeAlias

from litestar.connection import ASGIConnection
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import OpenAPIFormat
from litestar.params import QueryParameter, SkipValidation

from safetyreport.auth.http import principal_of
from safetyreport.caller import Caller
from safetyreport.db.pool import Conn, read_snapshot, transaction
from safetyreport.metrics import facts
from safetyreport.state import AppState, app_state, client_address

# Handlers annotate the parameters with these, under the names ``db``, ``snapshot``,
# ``caller`` and ``app_state`` (Litestar injects by name; the marker says it is a dependency).
DbDep: TypeAlias = NamedDependency[SkipValidation[Conn]]
SnapshotDep: TypeAlias = NamedDependency[SkipValidation[Conn]]
CallerDep: TypeAlias = NamedDependency[SkipValidation[Caller]]
StateDep: TypeAlias = NamedDependency[SkipValidation[AppState]]
AddressDep: TypeAlias = NamedDependency[SkipValidation[str]]


def time_query(description: str, name: str | None = None) -> Any:
    """A time in the query string, documented as a date-time and taken as text, to be read
    with ``times.parse_time``: as a ``datetime`` parameter, Litestar's conversion would
    take a bare number ("0") for seconds since 1970."""
    return QueryParameter(name=name, description=description, format=OpenAPIFormat.DATE_TIME.value)


SinceQuery: TypeAlias = Annotated[
    str | None, time_query("only those at or after this time (RFC 3339 with an offset)")
]
UntilQuery: TypeAlias = Annotated[
    str | None, time_query("only those before this time (RFC 3339 with an offset)")
]


def provide_app_state(request: ASGIConnection[Any, Any, Any, Any]) -> AppState:
    return app_state(request)


def provide_address(request: ASGIConnection[Any, Any, Any, Any]) -> str:
    return client_address(request)


def provide_caller(request: ASGIConnection[Any, Any, Any, Any], address: AddressDep) -> Caller:
    return Caller(principal_of(request), address)


async def provide_db(app_state: StateDep) -> AsyncIterator[Conn]:
    async with transaction(app_state.pool) as conn:
        with facts.pending(conn) as written:
            yield conn
    facts.committed(*written)  # reached only once the transaction has committed


async def provide_snapshot(app_state: StateDep) -> AsyncIterator[Conn]:
    async with read_snapshot(app_state.pool) as conn:
        yield conn


DEPENDENCIES: dict[str, Provide] = {
    "app_state": Provide(provide_app_state, sync_to_thread=False),
    "address": Provide(provide_address, sync_to_thread=False),
    "caller": Provide(provide_caller, sync_to_thread=False),
    "db": Provide(provide_db),
    "snapshot": Provide(provide_snapshot),
}
