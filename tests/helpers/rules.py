"""Calling the rules API as named users, for the rule tests."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
from litestar.testing import AsyncTestClient

from safetyreport.auth.permissions import Role
from tests.helpers.world import World

RULES = "/api/v1/rules"

# name -> (role, clinics, all_clinics)
Users = dict[str, tuple[Role, list[str], bool]]


class RulesAs:
    """The rules API as each of ``users`` (created and signed in on first use)."""

    def __init__(self, world: World, users: Users) -> None:
        self.world = world
        self.users = users
        self.tokens: dict[str, dict[str, str]] = {}

    @property
    def client(self) -> AsyncTestClient[Any]:
        return self.world.client

    @property
    def db(self) -> asyncpg.Connection[Any]:
        return self.world.db

    async def as_(self, name: str) -> dict[str, str]:
        if name not in self.tokens:
            role, clinics, all_clinics = self.users[name]
            await self.world.user(name, role, clinics, all_clinics=all_clinics)
            self.tokens[name] = await self.world.login(name)
        return self.tokens[name]

    async def create(self, who: str, body: Any) -> httpx.Response:
        return await self.client.post(RULES, json=body, headers=await self.as_(who))

    async def update(self, who: str, rule_id: str, body: Any) -> httpx.Response:
        return await self.client.put(f"{RULES}/{rule_id}", json=body, headers=await self.as_(who))

    async def disable(self, who: str, rule_id: str) -> httpx.Response:
        return await self.client.post(f"{RULES}/{rule_id}/disable", headers=await self.as_(who))


async def queue_cadss_alerts(db: asyncpg.Connection[Any]) -> None:
    """Enable dissociation-present, disabled by default (CADSS above 4 is expected after a
    dose: counted, not queued), as a clinic network that wants info alerts would."""
    await db.execute("UPDATE alert_rules SET enabled = true WHERE id = 'dissociation-present'")
