"""Amending treatment sessions and their observations (issue 15: "amendments keep
versions with a reason, like reports"): every change to a session keeps a version, an
amendment its reason; the corrected values are validated as when first given and run
through the rules again; refused amendments store nothing; versions are append-only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from tests.helpers.reports import audit_rows, errors_of
from tests.helpers.sessions import (
    FIT,
    SESSIONS,
    Headers,
    dosed_session,
    iso,
    open_session,
    post,
    session_body,
)
from tests.helpers.world import World

HOLD = "bp-pre-dose-hold"
DEEP_SEDATION = "sedation-moaa-s-1"


@pytest.fixture
async def users(world: World) -> dict[str, Headers]:
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("nina", "nurse", ["C1"])
    await world.user("nora", "nurse", ["C2"])
    await world.user("aude", "auditor", ["C1"])
    return {name: await world.login(name) for name in ("nina", "nora", "aude")}


def rules_of(answer: dict[str, Any]) -> set[str]:
    return {a["rule"] for a in answer["alerts"]}


async def read(client: AsyncTestClient[Any], headers: Headers, session_id: str) -> dict[str, Any]:
    response = await client.get(f"{SESSIONS}/{session_id}", headers=headers)
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


async def test_an_amended_checklist_is_a_new_version_with_its_reason_and_meets_the_rules(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    opened = await open_session(client, nina, session_body())
    assert opened["version"] == 1
    assert opened["alerts"] == []
    checklist = {**opened["checklist"], "systolic": 168, "diastolic": 96}
    amended = await post(
        client,
        f"{SESSIONS}/{opened['id']}/amendments",
        nina,
        {"reason": "pressure typed into the wrong box", "checklist": checklist},
    )
    assert amended.status_code == 201, amended.text
    view = amended.json()
    assert view["version"] == 2
    assert view["checklist"]["systolic"] == 168
    # The corrected pre-dose pressure holds the dose, as it would have when first given.
    assert HOLD in rules_of(view)
    assert [(v["version"], v["change"], v.get("reason")) for v in view["versions"]] == [
        (1, "opened", None),
        (2, "amended", "pressure typed into the wrong box"),
    ]
    assert view["versions"][0]["state"]["checklist"]["systolic"] == 122
    assert view["versions"][1]["state"]["checklist"]["systolic"] == 168
    assert view["versions"][1]["changed_by"] == "nina"
    [entry] = await audit_rows(db, "session.amended", opened["id"])
    assert entry["details"]["reason"] == "pressure typed into the wrong box"
    assert entry["details"]["version"] == 2
    assert entry["details"]["changes"]["checklist"]["from"]["systolic"] == 122
    assert entry["details"]["changes"]["checklist"]["to"]["systolic"] == 168
    # The one read shows the same history.
    assert (await read(client, nina, opened["id"]))["versions"] == view["versions"]


async def test_refused_amendments_name_the_field_and_rule_and_store_nothing(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    opened = await open_session(client, nina, session_body())
    path = f"{SESSIONS}/{opened['id']}/amendments"
    cases: list[tuple[dict[str, Any], list[tuple[str, str]]]] = [
        ({"prescriber": "Dr Roe"}, [("reason", "required")]),
        ({"reason": " ", "prescriber": "Dr Roe"}, [("reason", "length")]),
        ({"reason": "typo", "patient_ref": "PT-2"}, [("patient_ref", "fixed")]),
        ({"reason": "typo", "drug": "ketamine_iv"}, [("drug", "fixed")]),
        ({"reason": "typo"}, [("$", "no_change")]),
        ({"reason": "typo", "prescriber": "Dr Vale"}, [("$", "no_change")]),
        ({"reason": "typo", "colour": "blue"}, [("colour", "unknown_field")]),
        ({"reason": "typo", "dose_mg": 56}, [("dose_mg", "not_dosed")]),
        ({"reason": "typo", "weight_kg": 5}, [("weight_kg", "range")]),
    ]
    for body, expected in cases:
        response = await post(client, path, nina, body)
        assert errors_of(response) == expected, body
    assert await db.fetchval("SELECT version FROM treatment_sessions") == 1
    assert await db.fetchval("SELECT count(*) FROM treatment_session_versions") == 1
    assert await audit_rows(db, "session.amended") == []


async def test_another_clinics_session_cannot_be_amended_and_an_auditor_amends_nothing(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    opened = await open_session(client, users["nina"], session_body())
    body = {"reason": "typo", "prescriber": "Dr Roe"}
    path = f"{SESSIONS}/{opened['id']}/amendments"
    assert (await post(client, path, users["nora"], body)).status_code == 404
    assert (await post(client, path, users["aude"], body)).status_code == 403
    assert await db.fetchval("SELECT prescriber FROM treatment_sessions") == "Dr Vale"


async def test_every_change_of_a_session_is_a_version_and_a_corrected_dose_time_moves_the_form(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    dosed_at = datetime.now(UTC) - timedelta(minutes=30)
    session_id = await dosed_session(client, nina, dosed_at)
    discharged = await post(
        client,
        f"{SESSIONS}/{session_id}/discharge",
        nina,
        {"discharged_at": iso(datetime.now(UTC)), **FIT, "override_reason": "left against advice"},
    )
    assert discharged.status_code == 200, discharged.text
    due = await db.fetchval("SELECT due_at FROM rems_forms")
    assert due == dosed_at + timedelta(days=7)

    earlier = dosed_at - timedelta(minutes=10)
    amended = await post(
        client,
        f"{SESSIONS}/{session_id}/amendments",
        nina,
        {"reason": "dose time read from the wrong clock", "dosed_at": iso(earlier), "lot": "L-8"},
    )
    assert amended.status_code == 201, amended.text
    view = amended.json()
    assert [v["change"] for v in view["versions"]] == ["opened", "dosed", "discharged", "amended"]
    assert view["version"] == 4
    assert view["lot"] == "L-8"
    assert datetime.fromisoformat(view["dosed_at"]) == earlier
    assert view["versions"][1]["state"]["lot"] == "LOT-7"
    assert view["versions"][3]["state"]["lot"] == "L-8"
    assert await db.fetchval("SELECT due_at FROM rems_forms") == earlier + timedelta(days=7)
    # The dose is checked as when first given: a dose off the label's doses is refused.
    refused = await post(
        client, f"{SESSIONS}/{session_id}/amendments", nina, {"reason": "typo", "dose_mg": 5000}
    )
    assert [field for field, _rule in errors_of(refused)] == ["dose_mg"]


async def test_an_amended_observation_keeps_its_versions_and_meets_the_rules_again(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    dosed_at = datetime.now(UTC) - timedelta(minutes=60)
    session_id = await dosed_session(client, nina, dosed_at)
    observed = await post(
        client,
        f"{SESSIONS}/{session_id}/observations",
        nina,
        {"observed_at": iso(dosed_at + timedelta(minutes=40)), "moaa_s": 5, "pulse": 80},
    )
    assert observed.status_code == 201, observed.text
    observation = observed.json()
    assert observation["version"] == 1
    assert observation["alerts"] == []
    path = f"{SESSIONS}/{session_id}/observations/{observation['id']}/amendments"

    amended = await post(
        client, path, nina, {"reason": "MOAA/S recorded from the wrong chair", "moaa_s": 1}
    )
    assert amended.status_code == 201, amended.text
    corrected = amended.json()
    assert corrected["version"] == 2
    assert corrected["moaa_s"] == 1
    assert corrected["pulse"] == 80
    assert corrected["minutes_after_dose"] == 40
    assert DEEP_SEDATION in rules_of(corrected)
    linked = await db.fetchval(
        "SELECT count(*) FROM alert_session_readings WHERE reading_id = $1",
        observation["id"],
    )
    assert linked >= 1
    [entry] = await audit_rows(db, "session.observation_amended", session_id)
    assert entry["details"]["changes"] == {"moaa_s": {"from": 5, "to": 1}}
    assert entry["details"]["observation_id"] == observation["id"]

    [shown] = (await read(client, nina, session_id))["observations"]
    assert shown["version"] == 2
    assert [(v["version"], v["vitals"], v.get("reason")) for v in shown["versions"]] == [
        (1, {"moaa_s": 5, "pulse": 80}, None),
        (2, {"moaa_s": 1, "pulse": 80}, "MOAA/S recorded from the wrong chair"),
    ]
    # Refused: no reason, a value out of range, an observation of another session.
    assert errors_of(await post(client, path, nina, {"moaa_s": 2})) == [("reason", "required")]
    assert errors_of(await post(client, path, nina, {"reason": "typo", "spo2": 20})) == [
        ("spo2", "range")
    ]
    other = await dosed_session(client, nina, dosed_at, patient="PT-2")
    elsewhere = f"{SESSIONS}/{other}/observations/{observation['id']}/amendments"
    assert (await post(client, elsewhere, nina, {"reason": "typo", "pulse": 90})).status_code == 404
    assert await db.fetchval("SELECT count(*) FROM session_observation_versions") == 2


async def test_versions_are_append_only(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    opened = await open_session(client, users["nina"], session_body())
    observed = await post(
        client,
        f"{SESSIONS}/{opened['id']}/observations",
        users["nina"],
        {"observed_at": iso(datetime.now(UTC)), "pulse": 70},
    )
    assert observed.status_code == 201, observed.text
    for statement in (
        "UPDATE treatment_session_versions SET reason = 'x'",
        "DELETE FROM treatment_session_versions",
        "TRUNCATE treatment_session_versions",
        "UPDATE session_observation_versions SET reason = 'x'",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db.execute(statement)
    assert (
        await db.fetchval(
            "SELECT count(*) FROM treatment_session_versions WHERE session_id = $1", opened["id"]
        )
        == 1
    )
