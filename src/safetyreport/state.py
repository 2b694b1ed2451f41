"""What the app keeps for its lifetime, and small request helpers shared by routes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
from litestar.connection import ASGIConnection

from safetyreport.alerts.broker import AlertBroker
from safetyreport.audit.signing import Signer
from safetyreport.background import BackgroundRunner
from safetyreport.limits import Slots
from safetyreport.metrics.registry import Metrics
from safetyreport.settings import Settings


@dataclass(slots=True)
class AppState:
    settings: Settings
    pool: asyncpg.Pool
    broker: AlertBroker
    signer: Signer
    # Exports stream on connections of their own (as many as exports may run at once),
    # so stalled downloads can never take the connections requests need.
    export_pool: asyncpg.Pool
    # The background tasks (their state shows in /health).
    background: BackgroundRunner
    # What GET /metrics shows (a registry of this app's own).
    metrics: Metrics
    # Caps per process (see CapacitySettings): beyond them, 429.
    exports: Slots = field(init=False)
    upload_verifications: Slots = field(init=False)
    chain_verifications: Slots = field(init=False)

    def __post_init__(self) -> None:
        capacity = self.settings.capacity
        self.exports = Slots(
            "exports", total=capacity.exports_total, per_key=capacity.exports_per_user
        )
        self.upload_verifications = Slots(
            "verifications of uploaded exports", total=capacity.upload_verifications
        )
        # Hashing whole chains is CPU work: one at a time per process.
        self.chain_verifications = Slots("verifications of the audit trail", total=1)


def app_state(connection: ASGIConnection[Any, Any, Any, Any]) -> AppState:
    state: AppState = connection.app.state.safetyreport
    return state


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The client's address; X-Forwarded-For is believed only from a trusted proxy."""
    peer = connection.client.host if connection.client else "unknown"
    trusted = app_state(connection).settings.trusted_proxies
    forwarded = connection.headers.get("x-forwarded-for")
    if forwarded and peer in trusted:
        return forwarded.split(",")[0].strip() or peer
    return peer
