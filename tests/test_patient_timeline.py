"""Each patient's history (issue 15): the timeline of a hand-built history in time order
with the doses of the last 30, 90 and 365 days on both sides of each window's edge; the
esketamine protocol-frequency rule at its boundaries; network_ref linking a patient's
sessions at two clinics, with the part of the other clinic shown only to a user granted
both; the audit entries; another clinic's patient not found."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from tests.helpers.reports import audit_rows, bp_report, create_report, errors_of
from tests.helpers.sessions import SESSIONS, Headers, iso, open_session, post, session_body
from tests.helpers.world import World

FREQUENCY = "esketamine-frequency"
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def timeline_path(patient: str) -> str:
    return f"/api/v1/patients/{patient}/timeline"


@pytest.fixture
async def users(world: World) -> dict[str, Headers]:
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("nina", "nurse", ["C1"])
    await world.user("nora", "nurse", ["C2"])
    await world.user("olga", "safety_officer", ["C1", "C2"])
    await world.user("aude", "auditor", ["C1"])
    return {name: await world.login(name) for name in ("nina", "nora", "olga", "aude")}


async def dose(
    client: AsyncTestClient[Any],
    headers: Headers,
    patient: str,
    dosed_at: datetime,
    mg: int = 56,
    **session: Any,
) -> dict[str, Any]:
    """Open a session for ``patient`` and dose it at ``dosed_at``; the dose's answer."""
    opened = await open_session(client, headers, session_body(patient, **session))
    answer = await post(
        client,
        f"{SESSIONS}/{opened['id']}/dose",
        headers,
        {"dose_mg": mg, "dosed_at": iso(dosed_at)},
    )
    assert answer.status_code == 201, answer.text
    dosed: dict[str, Any] = answer.json()
    return dosed


def frequency_raised(answer: dict[str, Any]) -> bool:
    return FREQUENCY in {a["rule"] for a in answer["alerts"]}


# --- the timeline ------------------------------------------------------------------------


async def test_the_timeline_of_a_hand_built_history_in_time_order_with_its_doses(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    now = datetime.now(UTC)
    # mg at each moment: either side of the 30-, 90- and 365-day edges.
    history = [
        (now - 365 * DAY - HOUR, 56),  # outside 365
        (now - 365 * DAY + HOUR, 28),  # inside 365 only
        (now - 90 * DAY - HOUR, 84),  # inside 365 only
        (now - 90 * DAY + HOUR, 56),  # inside 90
        (now - 30 * DAY - HOUR, 28),  # inside 90
        (now - 30 * DAY + HOUR, 84),  # inside 30
        (now - 2 * HOUR, 56),  # inside 30
    ]
    sessions = [await dose(client, nina, "PT-T", at, mg) for at, mg in history]
    last = sessions[-1]
    observed = await post(
        client,
        f"{SESSIONS}/{last['id']}/observations",
        nina,
        {"observed_at": iso(now - 80 * timedelta(minutes=1)), "systolic": 190, "diastolic": 112},
    )
    assert observed.status_code == 201, observed.text
    assert observed.json()["alerts"], "the reading raises an alert"
    report = await create_report(
        client,
        nina,
        bp_report(
            patient_ref="PT-T",
            occurred_at=iso(now - 70 * timedelta(minutes=1)),
            session_id=last["id"],
        ),
    )
    # Another patient's and another clinic's history stay out.
    await dose(client, nina, "PT-OTHER", now - HOUR)
    await dose(client, users["nora"], "PT-T", now - HOUR, clinic="C2")

    answer = await client.get(timeline_path("PT-T"), headers=nina)
    assert answer.status_code == 200, answer.text
    timeline = answer.json()
    assert timeline["patient_ref"] == "PT-T"
    assert timeline["clinics"] == ["C1"]
    assert timeline["complete"] is True
    assert timeline["summary"] == [
        {"days": 30, "sessions": 2, "dose_mg": 140.0},
        {"days": 90, "sessions": 4, "dose_mg": 224.0},
        {"days": 365, "sessions": 6, "dose_mg": 336.0},
    ]
    entries = timeline["entries"]
    moments = [datetime.fromisoformat(e["at"]) for e in entries]
    assert moments == sorted(moments)
    doses = [e for e in entries if e["type"] == "dose"]
    assert [(datetime.fromisoformat(e["at"]), e["dose_mg"]) for e in doses] == [
        (at.replace(microsecond=at.microsecond), float(mg)) for at, mg in history
    ]
    assert {e["session_id"] for e in doses} == {s["id"] for s in sessions}
    assert all(e["clinic"] == "C1" for e in entries)
    # The last session's part, in time order: dose, observation, report; the alert is
    # raised when the observation is recorded (now), so it comes last.
    tail = [e["type"] for e in entries if datetime.fromisoformat(e["at"]) >= history[-1][0]]
    assert tail[:3] == ["dose", "observation", "report"]
    observation = next(e for e in entries if e["type"] == "observation")
    assert observation["minutes_after_dose"] == 40
    assert observation["vitals"] == {"systolic": 190, "diastolic": 112}
    reported = next(e for e in entries if e["type"] == "report")
    assert (reported["id"], reported["session_id"]) == (report["id"], last["id"])
    alert_ids = {
        str(r["id"])
        for r in await db.fetch(
            "SELECT a.id FROM alerts a JOIN clinics c ON c.id = a.clinic_id"
            " WHERE c.code = 'C1' AND a.group_key = 'PT-T'"
        )
    }
    assert alert_ids
    assert {e["id"] for e in entries if e["type"] == "alert"} == alert_ids


async def test_reading_a_timeline_is_audited_and_another_clinics_patient_is_not_found(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    dosed = await dose(client, users["nina"], "PT-A", datetime.now(UTC) - HOUR)
    assert (await client.get(timeline_path("PT-A"), headers=users["aude"])).status_code == 200
    rows = await audit_rows(db, "patient.timeline_read", "PT-A")
    assert [(r["clinic"], r["actor"], r["object_type"]) for r in rows] == [
        ("C1", "aude", "patient")
    ]
    assert rows[0]["details"]["session_ids"] == [dosed["id"]]
    # Nora (C2 only) learns nothing of C1's patient, nor of a patient nobody knows.
    for patient in ("PT-A", "PT-NOBODY"):
        response = await client.get(timeline_path(patient), headers=users["nora"])
        assert response.status_code == 404, response.text
    assert len(await audit_rows(db, "patient.timeline_read")) == 1
    refused = await client.get(timeline_path("bad ref!"), headers=users["nina"])
    assert refused.status_code == 422, refused.text


# --- the protocol-frequency rule ---------------------------------------------------------


async def test_a_third_session_in_a_course_week_of_weeks_1_to_4_raises_the_alert(
    client: AsyncTestClient[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    start = datetime.now(UTC) - 60 * DAY
    assert not frequency_raised(await dose(client, nina, "PT-F", start))
    assert not frequency_raised(await dose(client, nina, "PT-F", start + 2 * DAY))
    third = await dose(client, nina, "PT-F", start + 4 * DAY)
    assert frequency_raised(third)
    alert = next(a for a in third["alerts"] if a["rule"] == FREQUENCY)
    assert alert["severity"] == "high"


async def test_the_course_week_ends_exactly_7_days_after_the_first_dose(
    client: AsyncTestClient[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    start = datetime.now(UTC) - 60 * DAY
    await dose(client, nina, "PT-W", start)
    await dose(client, nina, "PT-W", start + 3 * DAY)
    # Exactly 7 days on: the first session of week 2.
    assert not frequency_raised(await dose(client, nina, "PT-W", start + 7 * DAY))
    # A second before: the third of week 1 (a dose recorded late).
    assert frequency_raised(
        await dose(client, nina, "PT-W", start + 7 * DAY - timedelta(seconds=1))
    )


async def test_a_second_session_in_a_course_week_of_weeks_5_to_8_raises_the_alert(
    client: AsyncTestClient[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    start = datetime.now(UTC) - 70 * DAY
    await dose(client, nina, "PT-M", start)
    # Week 5 starts 28 days on: one session is the protocol, a second is not.
    assert not frequency_raised(await dose(client, nina, "PT-M", start + 28 * DAY))
    assert frequency_raised(await dose(client, nina, "PT-M", start + 34 * DAY))
    # Week 9 and later are past the rule's weeks.
    await dose(client, nina, "PT-M2", start)
    assert not frequency_raised(await dose(client, nina, "PT-M2", start + 56 * DAY))
    assert not frequency_raised(await dose(client, nina, "PT-M2", start + 57 * DAY))


async def test_other_drugs_have_no_course(
    client: AsyncTestClient[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    start = datetime.now(UTC) - 10 * DAY
    for day in range(3):
        answer = await dose(
            client, nina, "PT-K", start + day * DAY, 35, drug="ketamine_iv", weight_kg=70.0
        )
        assert not frequency_raised(answer)


# --- network_ref -------------------------------------------------------------------------


async def test_network_ref_links_a_patient_across_clinics_for_the_rule_and_the_timeline(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    nina, nora, olga = users["nina"], users["nora"], users["olga"]
    start = datetime.now(UTC) - 20 * DAY
    first = await dose(client, nina, "PT-N1", start, network_ref="NET-0001")
    assert first["network_ref"] == "NET-0001"
    await dose(client, nora, "PT-N2", start + DAY, 84, clinic="C2", network_ref="NET-0001")
    # Unlinked, the third session at C1 would be the second of its week there.
    third = await dose(client, nina, "PT-N1", start + 2 * DAY, 28, network_ref="NET-0001")
    assert frequency_raised(third)
    # Another network_ref is another patient.
    assert not frequency_raised(
        await dose(client, nina, "PT-N1X", start + 2 * DAY, network_ref="NET-0002")
    )

    own = (await client.get(timeline_path("PT-N1"), headers=nina)).json()
    assert own["clinics"] == ["C1"]
    assert own["complete"] is False
    assert {e["clinic"] for e in own["entries"]} == {"C1"}
    assert own["summary"][0] == {"days": 30, "sessions": 2, "dose_mg": 84.0}

    both = (await client.get(timeline_path("PT-N1"), headers=olga)).json()
    assert both["clinics"] == ["C1", "C2"]
    assert both["complete"] is True
    assert both["summary"][0] == {"days": 30, "sessions": 3, "dose_mg": 168.0}
    # A session's entry is at its opening (these were opened in this order, now).
    linked = [e for e in both["entries"] if e["type"] == "session"]
    assert [(e["clinic"], e["patient_ref"]) for e in linked] == [
        ("C1", "PT-N1"),
        ("C2", "PT-N2"),
        ("C1", "PT-N1"),
    ]
    # Nora sees C2's part from her own patient_ref.
    theirs = (await client.get(timeline_path("PT-N2"), headers=nora)).json()
    assert theirs["clinics"] == ["C2"]
    assert theirs["complete"] is False
    # Olga's read is recorded in the chain of each clinic it showed.
    rows = await audit_rows(db, "patient.timeline_read", "PT-N1")
    assert sorted((r["clinic"], r["actor"]) for r in rows) == [
        ("C1", "nina"),
        ("C1", "olga"),
        ("C2", "olga"),
    ]


@pytest.mark.parametrize("network_ref", ["ABC", "has space", "x" * 65, "Doe_John"])
async def test_a_network_ref_is_a_pseudonym_of_4_to_64_letters_digits_and_dashes(
    client: AsyncTestClient[Any], users: dict[str, Headers], network_ref: str
) -> None:
    refused = await post(client, SESSIONS, users["nina"], session_body(network_ref=network_ref))
    assert errors_of(refused) == [("network_ref", "pattern")]
