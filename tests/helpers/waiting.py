"""Waiting for what the service does by itself (a background loop, another process)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

# Bound on every such wait: generous, because the machine may be busy.
WAIT_SECONDS = 30.0


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it holds; fail, naming ``what``, after WAIT_SECONDS."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while loop.time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")
