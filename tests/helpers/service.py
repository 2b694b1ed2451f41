"""Seeding a service's database and signing in to a running service over HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from safetyreport.audit.chain import SYSTEM_CLI
from safetyreport.auth.permissions import Role
from safetyreport.auth.users import add_clinic, add_user
from safetyreport.db.pool import connect
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
