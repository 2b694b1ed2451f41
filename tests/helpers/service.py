"""Seeding a service's database, running the app in the test's process, and signing in to a
running service over HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import httpx

from safetyreport.app import create_app
from safetyreport.audit.chain import SYSTEM_CLI
from safetyreport.auth.permissions import Role
from safetyreport.auth.users import add_clinic, add_user
from safetyreport.db.pool import connect
from safetyreport.settings import Settings
from tests.helpers.world import PASSWORD


@dataclass(frozen=True)
class UserSpec:
    username: str
    role: Role
    clinics: tuple[str, ...] = ()
    all_clinics: bool = False


async def seed(database_url: str, clinics: dict[str, str], users: list[UserSpec]) -> None:
    """Create clinics (code -> name) and users (password PASSWORD), as the CLI does."""
    conn = await connect(database_url)
    try:
        for code, name in clinics.items():
            await add_clinic(conn, code, name, SYSTEM_CLI)
        for user in users:
            await add_user(
                conn,
                username=user.username,
                password=PASSWORD,
                role=user.role,
                clinics=list(user.clinics),
                all_clinics=user.all_clinics,
                actor=SYSTEM_CLI,
            )
    finally:
        await conn.close()


async def login(base_url: str, username: str, password: str = PASSWORD) -> dict[str, str]:
    """Authorization headers for a fresh session of ``username``."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        response = await http.post(
            "/api/v1/auth/login", json={"username": username, "password": password}
        )
    assert response.status_code == 200, response.text
    token: Any = response.json()["token"]
    return {"Authorization": f"Bearer {token}"}


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan (and so its background tasks: the webhook sender, the
    pager, ...) on this test's event loop, and a client that calls it in-process."""
    app = create_app(settings)
    transport = httpx.ASGITransport(app=cast("Any", app))
    async with (
        app.lifespan(),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as http,
    ):
        yield http
