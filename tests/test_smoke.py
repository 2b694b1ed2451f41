from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from tests.helpers.reports import bp_report
from tests.helpers.world import World


async def test_health(client: AsyncTestClient[Any]) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["database"]) == ("ok", "ok")
    # And the background tasks (see test_background).
    assert set(body) == {"status", "database", "tasks"}


async def test_nurse_submits_a_report(world: World) -> None:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    headers = await world.login("nina")
    response = await world.client.post(
        "/api/v1/reports", json=bp_report(), headers={**headers, "Idempotency-Key": "k-1"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["hypertension_reading_grade"] == 2
