"""Delivering outbox notifications to webhooks. (Being written: see the delivery helper.)"""

from __future__ import annotations

import asyncio

import asyncpg

from safetyreport.settings import AlertSettings


async def run_delivery(pool: asyncpg.Pool, settings: AlertSettings) -> None:
    """Deliver due notifications until cancelled."""
    await asyncio.Event().wait()


from litestar import Controller, get  # noqa: E402


class DeliveryController(Controller):
    path = "/api/v1/notifications"
    tags = ["notifications"]

    @get("/")
    async def ledger(self) -> None:
        """Placeholder until the ledger is written."""
        return
