"""Escalating alerts nobody acknowledged in time. (Being written: see the escalation helper.)"""

from __future__ import annotations

import asyncio

import asyncpg

from safetyreport.settings import AlertSettings


async def run_escalation(pool: asyncpg.Pool, settings: AlertSettings) -> None:
    """Escalate overdue alerts until cancelled."""
    await asyncio.Event().wait()
