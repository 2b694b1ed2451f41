"""What the app keeps for its lifetime, and small request helpers shared by routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
from litestar.connection import ASGIConnection

from safetyreport.settings import Settings

if TYPE_CHECKING:  # the stream's routes import this module
    from safetyreport.alerts.stream import AlertBroker
    from safetyreport.audit.signing import Signer


@dataclass(slots=True)
class AppState:
    settings: Settings
    pool: asyncpg.Pool
    broker: AlertBroker
    signer: Signer


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
