"""NUL characters, over-deep JSON and out-of-range cursors: 4xx, never a 500.

Each of these used to reach PostgreSQL (which cannot store U+0000) or msgspec (which
gives up on JSON nested about a thousand deep) and came back as a 500 with a logged
traceback, some before signing in.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from safetyreport.errors import ValidationFailed, exception_to_response
from safetyreport.input_guard import MAX_JSON_DEPTH, json_depth_exceeds
from safetyreport.pagination import decode_cursor, encode_cursor
from tests.helpers.reports import bp_report
from tests.helpers.world import PASSWORD, World

NUL = "\u0000"
DEEP = 20_000


def deep_json(depth: int = DEEP) -> bytes:
    return b'{"username": ' + b"[" * depth + b"]" * depth + b', "password": "x"}'


def assert_nul_refused(response: Any, field: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert {"field": field, "rule": "no_nul"} in [
        {"field": e["field"], "rule": e["rule"]} for e in body["errors"]
    ], body


@pytest.fixture
async def signed_in(world: World) -> dict[str, dict[str, str]]:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    await world.user("olga", "safety_officer", ["C1"])
    await world.user("audrey", "auditor", all_clinics=True)
    return {name: await world.login(name) for name in ("nina", "olga", "audrey")}


async def open_alert(world: World, nurse: dict[str, str]) -> str:
    response = await world.client.post(
        "/api/v1/reports",
        json=bp_report(systolic=185, diastolic=100),
        headers={**nurse, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 201, response.text
    alert_id: uuid.UUID = await world.db.fetchval("SELECT id FROM alerts LIMIT 1")
    return str(alert_id)


# --- before sign-in -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": f"ni{NUL}na", "password": PASSWORD}, "username"),
        ({"username": "nina", "password": f"pass{NUL}word"}, "password"),
        ({"username": "nina", "password": PASSWORD, f"x{NUL}": 1}, f"x{NUL}"),
    ],
)
async def test_nul_in_login_is_422(
    world: World, signed_in: Any, body: dict[str, Any], field: str
) -> None:
    response = await world.client.post("/api/v1/auth/login", json=body)
    assert_nul_refused(response, field)


async def test_nul_in_the_web_login_form_is_422(world: World, signed_in: Any) -> None:
    response = await world.client.post(
        "/login", data={"username": f"ni{NUL}na", "password": PASSWORD, "csrf": "x"}
    )
    # The web pages answer with their own HTML error page.
    assert response.status_code == 422, response.text


async def test_deep_json_before_sign_in_is_400(world: World) -> None:
    response = await world.client.post(
        "/api/v1/auth/login", content=deep_json(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert "nest" in response.json()["detail"]


async def test_json_nested_within_the_limit_is_parsed_as_usual(world: World) -> None:
    response = await world.client.post(
        "/api/v1/auth/login",
        content=deep_json(MAX_JSON_DEPTH - 1),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "username"


# --- after sign-in ------------------------------------------------------------------


async def test_deep_json_after_sign_in_is_400(
    world: World, signed_in: dict[str, dict[str, str]]
) -> None:
    for path, who in (("/api/v1/reports", "nina"), ("/api/v1/rules", "olga")):
        response = await world.client.post(
            path,
            content=b"[" * DEEP + b"]" * DEEP,
            headers={
                **signed_in[who],
                "Content-Type": "application/json",
                "Idempotency-Key": str(uuid.uuid4()),
            },
        )
        assert response.status_code == 400, (path, response.text)


async def test_nul_in_a_report_is_422(world: World, signed_in: dict[str, dict[str, str]]) -> None:
    response = await world.client.post(
        "/api/v1/reports",
        json=bp_report(patient_ref=f"PT{NUL}1"),
        headers={**signed_in["nina"], "Idempotency-Key": str(uuid.uuid4())},
    )
    assert_nul_refused(response, "patient_ref")


async def test_nul_in_notes_and_reasons_is_422(
    world: World, signed_in: dict[str, dict[str, str]]
) -> None:
    alert_id = await open_alert(world, signed_in["nina"])
    officer = signed_in["olga"]
    note = await world.client.post(
        f"/api/v1/alerts/{alert_id}/notes", json={"text": f"called{NUL}"}, headers=officer
    )
    assert_nul_refused(note, "text")
    resolved = await world.client.post(
        f"/api/v1/alerts/{alert_id}/resolve",
        json={"reason": f"handled {NUL} ok"},
        headers=officer,
    )
    assert_nul_refused(resolved, "reason")
    assigned = await world.client.post(
        f"/api/v1/alerts/{alert_id}/assign", json={"user": f"olga{NUL}"}, headers=officer
    )
    assert_nul_refused(assigned, "user")


async def test_nul_in_rule_fields_is_422(
    world: World, signed_in: dict[str, dict[str, str]]
) -> None:
    rule: dict[str, Any] = {
        "id": "tachycardia",
        "name": "Tachycardia",
        "severity": "high",
        "description": "Pulse above 120 bpm.",
        "guidance": "Recheck the pulse.",
        "definition": {
            "kinds": ["blood_pressure"],
            "when": {"field": "pulse", "op": ">", "value": 120},
        },
    }
    officer = signed_in["olga"]
    for body, field in (
        ({**rule, "name": f"Tachy{NUL}"}, "name"),
        ({**rule, "id": f"tachy{NUL}"}, "id"),
        (
            {**rule, "definition": {**rule["definition"], "kinds": [f"blood{NUL}"]}},
            "definition.kinds[0]",
        ),
    ):
        assert_nul_refused(
            await world.client.post("/api/v1/rules", json=body, headers=officer), field
        )
    path = await world.client.get(f"/api/v1/rules/bp{quote(NUL)}x", headers=officer)
    assert_nul_refused(path, "path")


@pytest.mark.parametrize("name", ["actor", "action", "clinic", "object"])
async def test_nul_in_audit_filters_is_422(
    world: World, signed_in: dict[str, dict[str, str]], name: str
) -> None:
    for path in ("/api/v1/audit/entries", "/api/v1/audit/export"):
        response = await world.client.get(
            f"{path}?{name}=a{quote(NUL)}b", headers=signed_in["audrey"]
        )
        assert_nul_refused(response, name)


async def test_nul_in_list_filters_is_422(
    world: World, signed_in: dict[str, dict[str, str]]
) -> None:
    for path in ("/api/v1/reports?patient_ref=", "/api/v1/alerts?rule=", "/api/v1/alerts?clinic="):
        response = await world.client.get(f"{path}x{quote(NUL)}", headers=signed_in["olga"])
        assert response.status_code == 422, (path, response.text)


# --- cursors --------------------------------------------------------------------------


def raw_cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("cursor", "rule"),
    [
        (raw_cursor("2026-01-15T10:30:00", "global", 1), "offset_required"),
        (raw_cursor("2026-01-15T10:30:00+00:00", "global", 2**63), "range"),
        (raw_cursor("2026-01-15T10:30:00+00:00", "global", -(2**63) - 1), "range"),
        (raw_cursor("2026-01-15T10:30:00+00:00", f"glo{NUL}bal", 1), "format"),
    ],
)
async def test_bad_audit_cursors_are_422(
    world: World, signed_in: dict[str, dict[str, str]], cursor: str, rule: str
) -> None:
    response = await world.client.get(
        f"/api/v1/audit/entries?cursor={cursor}", headers=signed_in["audrey"]
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0] == {
        "field": "cursor",
        "rule": rule,
        "message": response.json()["errors"][0]["message"],
    }


async def test_out_of_range_alert_cursor_is_422(
    world: World, signed_in: dict[str, dict[str, str]]
) -> None:
    cursor = raw_cursor(2**64, "2026-01-15T10:30:00+00:00", str(uuid.uuid4()))
    response = await world.client.get(f"/api/v1/alerts?cursor={cursor}", headers=signed_in["olga"])
    assert response.status_code == 422, response.text


def test_decode_cursor_round_trips_valid_values() -> None:
    at = datetime(2026, 1, 15, 10, 30, tzinfo=UTC)
    cursor = encode_cursor(at, "clinic:C1", 2**63 - 1)
    assert decode_cursor(cursor, tuple[datetime, str, int]) == (at, "clinic:C1", 2**63 - 1)


def test_decode_cursor_refuses_naive_times() -> None:
    with pytest.raises(ValidationFailed) as raised:
        decode_cursor(raw_cursor("2026-01-15T10:30:00"), tuple[datetime])
    assert raised.value.errors[0].rule == "offset_required"


# --- the depth check itself ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "deeper"),
    [
        (b"[" * 3 + b"]" * 3, False),
        (b"[" * 4 + b"]" * 4, True),
        (b'["[[[[[[", "{{{{{{"]', False),
        (b'[["\\"[[[[[[[["]]', False),
        (b'{"a": {"b": {"c": {"d": 1}}}}', True),
        (b'{"a": {"b": {"c": 1}}, "d": {"e": {"f": 1}}}', False),
    ],
)
def test_json_depth(body: bytes, deeper: bool) -> None:
    assert json_depth_exceeds(body, limit=3) is deeper


def test_a_deep_body_is_refused_before_it_is_decoded() -> None:
    # msgspec itself fails on it, with the RecursionError that used to become a 500.
    with pytest.raises(RecursionError):
        msgspec.json.decode(deep_json())
    assert json_depth_exceeds(deep_json())


async def test_every_query_parameter_of_every_get_route_refuses_nul(
    world: World, signed_in: dict[str, dict[str, str]], client: AsyncTestClient[Any]
) -> None:
    """A sweep: any GET route, any documented query parameter, NUL in it: never a 500."""
    schema = (await client.get("/schema/openapi.json")).json()
    checked = 0
    for path, operations in schema["paths"].items():
        get = operations.get("get")
        if get is None or "{" in path:
            continue
        for parameter in get.get("parameters", []):
            if parameter["in"] != "query":
                continue
            for who in ("audrey", "olga"):
                response = await client.get(
                    f"{path}?{parameter['name']}=x{quote(NUL)}", headers=signed_in[who]
                )
                assert response.status_code < 500, (path, parameter["name"], response.text)
                checked += 1
    assert checked > 10


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence 0x00"), 422),
        (asyncpg.exceptions.UntranslatableCharacterError("unsupported Unicode escape"), 422),
        (RecursionError("maximum recursion depth exceeded"), 400),
    ],
)
def test_what_gets_past_the_guard_is_still_a_client_error(exc: Exception, status: int) -> None:
    """The safety net in the one exception mapping: never a 500 for the client's input."""
    request: Any = SimpleNamespace(method="POST", url=SimpleNamespace(path="/api/v1/x"))
    response = exception_to_response(request, exc)
    assert response.status_code == status


async def test_authorization_comes_before_the_input_check(
    world: World, signed_in: dict[str, dict[str, str]]
) -> None:
    """A nurse may not change rules: 403, whatever the body holds; no session: 401."""
    body = {"id": f"x{NUL}", "name": f"n{NUL}"}
    nurse = await world.client.post("/api/v1/rules", json=body, headers=signed_in["nina"])
    assert nurse.status_code == 403, nurse.text
    anonymous = await world.client.get(f"/api/v1/audit/entries?actor=a{quote(NUL)}")
    assert anonymous.status_code == 401, anonymous.text
