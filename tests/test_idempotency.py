"""Idempotency-Key: a retried report is stored once, whatever the network does."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient

from safetyreport.idempotency import _lock_key
from tests.helpers.reports import (
    NOTHING,
    REPORTS,
    Stored,
    amend,
    bp_report,
    create_report,
    dissociation_report,
    errors_of,
    post_report,
    send_concurrently,
    stored,
)
from tests.helpers.world import World

REPLAYED = "Idempotency-Replayed"


@pytest.fixture
async def nurse(world: World) -> dict[str, str]:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    return await world.login("nina")


async def user_id(db: asyncpg.Connection[Any], username: str) -> int:
    found: int = await db.fetchval("SELECT id FROM users WHERE username = $1", username)
    return found


async def post_raw(
    client: AsyncTestClient[Any], headers: dict[str, str], content: bytes, key: str
) -> httpx.Response:
    return await client.post(
        REPORTS,
        content=content,
        headers={**headers, "Idempotency-Key": key, "Content-Type": "application/json"},
    )


async def key_rows(db: asyncpg.Connection[Any]) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM idempotency_keys")
    return count


@pytest.mark.parametrize("extra", [{}, {"Idempotency-Key": ""}])
async def test_a_report_without_a_key_is_refused(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    extra: dict[str, str],
) -> None:
    response = await client.post(REPORTS, json=bp_report(), headers={**nurse, **extra})
    assert response.status_code == 400, response.text
    assert await stored(db) == NOTHING


@pytest.mark.parametrize("key", ["k" * 201, "clé-1", "tab\tkey"])
async def test_a_malformed_key_is_refused(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str], key: str
) -> None:
    headers = [(k.encode(), v.encode()) for k, v in nurse.items()]
    headers += [(b"Content-Type", b"application/json"), (b"Idempotency-Key", key.encode())]
    response = await client.post(REPORTS, content=json.dumps(bp_report()).encode(), headers=headers)
    assert errors_of(response) == [("Idempotency-Key", "format")]
    assert await stored(db) == NOTHING


async def test_a_key_of_200_characters_is_accepted(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    response = await post_report(client, nurse, bp_report(), key="k" * 200)
    assert response.status_code == 201, response.text


async def test_a_retry_replays_the_first_response(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    first = await post_report(client, nurse, bp_report(), key="retry-1")
    second = await post_report(client, nurse, bp_report(), key="retry-1")
    assert first.status_code == 201, first.text
    assert REPLAYED not in first.headers
    assert second.status_code == first.status_code
    assert second.content == first.content
    assert second.headers[REPLAYED] == "true"
    assert await stored(db) == Stored(1, 1, 1)


async def test_reordered_keys_are_the_same_request(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    body = bp_report()
    reordered = dict(reversed(list(body.items())))
    assert json.dumps(body) != json.dumps(reordered)
    first = await post_raw(client, nurse, json.dumps(body).encode(), "order-1")
    second = await post_raw(client, nurse, json.dumps(reordered, indent=2).encode(), "order-1")
    assert first.status_code == 201, first.text
    assert second.status_code == 201, second.text
    assert second.content == first.content
    assert second.headers[REPLAYED] == "true"
    assert await stored(db) == Stored(1, 1, 1)


@pytest.mark.parametrize(
    "other",
    [
        bp_report(systolic=151),
        bp_report(narrative="added later"),
        dissociation_report(),
    ],
)
async def test_a_key_reused_for_another_body_is_422(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    other: dict[str, Any],
) -> None:
    first = await post_report(client, nurse, bp_report(), key="reuse-1")
    assert first.status_code == 201, first.text
    second = await post_report(client, nurse, other, key="reuse-1")
    assert errors_of(second) == [("Idempotency-Key", "reused")]
    assert REPLAYED not in second.headers
    assert await stored(db) == Stored(1, 1, 1)


async def test_keys_belong_to_their_user(world: World) -> None:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    await world.user("nora", "nurse", ["C1"])
    nina = await world.login("nina")
    nora = await world.login("nora")
    first = await post_report(world.client, nina, bp_report(), key="shared-key")
    second = await post_report(world.client, nora, bp_report(), key="shared-key")
    assert (first.status_code, second.status_code) == (201, 201)
    assert REPLAYED not in second.headers
    assert first.json()["id"] != second.json()["id"]
    assert second.json()["created_by"] == "nora"
    assert await stored(world.db) == Stored(2, 2, 2)


async def test_a_rejected_request_does_not_use_up_its_key(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    invalid = await post_report(client, nurse, bp_report(systolic=400), key="fix-1")
    assert invalid.status_code == 422
    not_member = await post_report(client, nurse, bp_report("C9"), key="fix-1")
    assert errors_of(not_member) == [("clinic", "member")]
    assert await key_rows(db) == 0
    fixed = await post_report(client, nurse, bp_report(), key="fix-1")
    assert fixed.status_code == 201, fixed.text
    assert REPLAYED not in fixed.headers
    assert await stored(db) == Stored(1, 1, 1)


def assert_one_report_from(responses: list[httpx.Response]) -> bytes:
    """Every response 201 or 409, one stored report, every 201 the same; its body."""
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {201, 409}, statuses
    created = [r for r in responses if r.status_code == 201]
    assert created
    assert len({r.content for r in created}) == 1
    assert sum(REPLAYED not in r.headers for r in created) == 1
    return created[0].content


async def test_concurrent_retries_store_one_report(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    headers = {**nurse, "Idempotency-Key": "burst-2"}
    requests = [
        client.build_request("POST", REPORTS, json=bp_report(), headers=headers) for _ in range(50)
    ]
    responses = await send_concurrently(client, requests)
    content = assert_one_report_from(responses)
    assert await stored(db) == Stored(1, 1, 1)
    # Once the first has finished, a retry is a replay, never a conflict.
    after = await post_report(client, nurse, bp_report(), key="burst-2")
    assert after.status_code == 201
    assert after.content == content


async def test_a_retry_while_the_first_is_running_is_409(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    lock = _lock_key(await user_id(db, "nina"), "slow-1")
    await db.execute("SELECT pg_advisory_lock($1)", lock)
    try:
        busy = await post_report(client, nurse, bp_report(), key="slow-1")
        assert busy.status_code == 409, busy.text
        assert await stored(db) == NOTHING
        assert await key_rows(db) == 0
        # Another key of the same user is not held up.
        other = await post_report(client, nurse, bp_report(), key="slow-2")
        assert other.status_code == 201, other.text
    finally:
        assert await db.fetchval("SELECT pg_advisory_unlock($1)", lock)
    done = await post_report(client, nurse, bp_report(), key="slow-1")
    assert done.status_code == 201, done.text
    assert REPLAYED not in done.headers
    assert await stored(db) == Stored(2, 2, 2)


async def test_keys_are_kept_at_least_a_day(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    await create_report(client, nurse, bp_report())
    kept: timedelta = await db.fetchval("SELECT expires_at - created_at FROM idempotency_keys")
    assert kept >= timedelta(hours=24)


@pytest.mark.parametrize("body", [bp_report(), bp_report(systolic=151)])
async def test_an_expired_key_can_be_used_afresh(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    body: dict[str, Any],
) -> None:
    first = await post_report(client, nurse, bp_report(), key="old-1")
    assert first.status_code == 201
    await db.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
    again = await post_report(client, nurse, body, key="old-1")
    assert again.status_code == 201, again.text
    assert REPLAYED not in again.headers
    assert again.json()["id"] != first.json()["id"]
    assert await stored(db) == Stored(2, 2, 2)
    assert await key_rows(db) == 1
    replay = await post_report(client, nurse, body, key="old-1")
    assert replay.content == again.content


async def test_an_amendment_with_a_key_is_applied_once(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    view = await create_report(client, nurse, bp_report())
    headers = {**nurse, "Idempotency-Key": "amend-1"}
    change = {"reason": "re-measured", "systolic": 148}
    first = await amend(client, headers, view["id"], change)
    second = await amend(client, headers, view["id"], change)
    assert first.status_code == 201, first.text
    assert second.status_code == 201
    assert second.content == first.content
    assert second.headers[REPLAYED] == "true"
    assert await stored(db) == Stored(1, 2, 1)
    other = await amend(client, headers, view["id"], {"reason": "again", "systolic": 146})
    assert errors_of(other) == [("Idempotency-Key", "reused")]
