"""Every time in a query string is RFC 3339 text with an offset: a bare number is refused
(422 naming the parameter), not read as seconds since 1970, and the OpenAPI document says
date-time for each."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.world import World

# (path, the time parameter) for every endpoint that takes one.
TIME_PARAMETERS = [
    ("/api/v1/reports", "since"),
    ("/api/v1/reports", "until"),
    ("/api/v1/reports/export?format=csv", "since"),
    ("/api/v1/reports/export?format=csv", "until"),
    ("/api/v1/audit/entries", "from"),
    ("/api/v1/audit/entries", "until"),
    ("/api/v1/audit/export", "from"),
    ("/api/v1/audit/export", "until"),
    ("/api/v1/auth/lockouts", "since"),
]


@pytest.fixture
async def admin(world: World) -> dict[str, str]:
    await world.clinic("C1")
    await world.user("adam", "admin", all_clinics=True)
    return await world.login("adam")


@pytest.mark.parametrize(("path", "name"), TIME_PARAMETERS)
@pytest.mark.parametrize("number", ["0", "1.5", "1767225600"])
async def test_a_number_is_not_a_time(
    world: World, admin: dict[str, str], path: str, name: str, number: str
) -> None:
    joiner = "&" if "?" in path else "?"
    response = await world.client.get(f"{path}{joiner}{name}={number}", headers=admin)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert [e["field"] for e in errors] == [name], errors


@pytest.mark.parametrize(("path", "name"), TIME_PARAMETERS)
async def test_a_time_with_an_offset_is_taken(
    world: World, admin: dict[str, str], path: str, name: str
) -> None:
    joiner = "&" if "?" in path else "?"
    response = await world.client.get(
        f"{path}{joiner}{name}=2026-01-01T09:30:00%2B01:00", headers=admin
    )
    assert response.status_code == 200, response.text


async def test_each_time_parameter_is_documented_as_a_date_time(world: World) -> None:
    document: dict[str, Any] = (await world.client.get("/schema/openapi.json")).json()
    for path, name in TIME_PARAMETERS:
        operation = document["paths"][path.split("?")[0]]["get"]
        (parameter,) = [p for p in operation["parameters"] if p["name"] == name]
        schema = parameter["schema"]
        # Litestar puts the format beside the oneOf of an optional text, which JSON Schema
        # reads alike: a string given must be a date-time.
        strings = [k for k in schema.get("oneOf", [schema]) if k.get("type") == "string"]
        assert strings, (path, name, schema)
        assert all(k.get("format", schema.get("format")) == "date-time" for k in strings), (
            path,
            name,
            schema,
        )
