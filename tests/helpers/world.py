"""Seeding clinics and users through the functions the CLI uses, and signing in."""

from __future__ import annotations

from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from safetyreport.audit.chain import SYSTEM_CLI
from safetyreport.auth.permissions import Role
from safetyreport.auth.users import add_clinic, add_user

PASSWORD = "correct-horse-battery"


class World:
    """Seeds clinics and users through the same functions the CLI uses."""

    def __init__(self, db: asyncpg.Connection[Any], client: AsyncTestClient[Any]) -> None:
        self.db = db
        self.client = client

    async def clinic(
        self, code: str, name: str | None = None, *, timezone: str | None = None
    ) -> str:
        await add_clinic(self.db, code, name or f"Clinic {code}", SYSTEM_CLI, timezone=timezone)
        return code

    async def user(
        self,
        username: str,
        role: Role,
        clinics: list[str] | None = None,
        *,
        all_clinics: bool = False,
        password: str = PASSWORD,
    ) -> str:
        await add_user(
            self.db,
            username=username,
            password=password,
            role=role,
            clinics=clinics or [],
            all_clinics=all_clinics,
            actor=SYSTEM_CLI,
        )
        return username

    async def login(self, username: str, password: str = PASSWORD) -> dict[str, str]:
        """Authorization headers for a fresh session of ``username``."""
        response = await self.client.post(
            "/api/v1/auth/login", json={"username": username, "password": password}
        )
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}
