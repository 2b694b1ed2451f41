"""Pattern rules count treatment-session readings as they count reports (issue 15:
"pattern rules count patients as they do for reports"), and a patient's pattern follows
their sessions' ``network_ref`` to the network's other clinics ("the misuse-pattern rule
... follow[s] it"), counting the other clinic's matches without showing them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from tests.helpers.reports import bp_report, create_report, dissociation_report, misuse_report
from tests.helpers.sessions import (
    SESSIONS,
    Headers,
    dosed_session,
    iso,
    open_session,
    post,
    session_body,
)
from tests.helpers.world import World

CLUSTER = "pattern-blood-pressure-cluster"  # 3 patients, post-dose systolic >= 180, 7 days
REPEATED = "pattern-patient-repeated-urgent"  # 2 urgent or critical for a patient, 30 days
MISUSE = "pattern-patient-misuse"  # 2 misuse concerns for a patient, 90 days


@pytest.fixture
async def users(world: World) -> dict[str, Headers]:
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("nina", "nurse", ["C1"])
    await world.user("nora", "nurse", ["C2"])
    await world.user("otto", "safety_officer", ["C2"])
    return {name: await world.login(name) for name in ("nina", "nora", "otto")}


def rules_of(answer: dict[str, Any]) -> set[str]:
    return {a["rule"] for a in answer["alerts"]}


async def observe(
    client: AsyncTestClient[Any], headers: Headers, session_id: str, **vitals: Any
) -> dict[str, Any]:
    response = await post(client, f"{SESSIONS}/{session_id}/observations", headers, vitals)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def pattern_alerts(db: asyncpg.Connection[Any], rule: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM alerts WHERE rule_id = $1", rule)


async def test_a_session_reading_is_a_patient_of_the_blood_pressure_cluster(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    now = datetime.now(UTC)
    dosed_at = now - timedelta(minutes=50)
    for patient in ("PT-A", "PT-B"):
        await create_report(
            client,
            nina,
            bp_report(patient_ref=patient, occurred_at=iso(now - timedelta(days=1)), systolic=185),
        )
    # Two patients: below the cluster's three.
    assert await pattern_alerts(db, CLUSTER) == []
    session_id = await dosed_session(client, nina, dosed_at, patient="PT-C")
    # Below the cluster's systolic (179) the session's patient does not count.
    low = await observe(
        client,
        nina,
        session_id,
        observed_at=iso(dosed_at + timedelta(minutes=35)),
        systolic=179,
        diastolic=95,
    )
    assert CLUSTER not in rules_of(low)
    assert await pattern_alerts(db, CLUSTER) == []
    high = await observe(
        client,
        nina,
        session_id,
        observed_at=iso(dosed_at + timedelta(minutes=40)),
        systolic=184,
        diastolic=96,
    )
    assert CLUSTER in rules_of(high)
    [alert] = await pattern_alerts(db, CLUSTER)
    assert alert["report_count"] == 2
    linked = await db.fetch(
        "SELECT reading, reading_id, trigger_values FROM alert_session_readings"
        " WHERE alert_id = $1",
        alert["id"],
    )
    assert [(r["reading"], str(r["reading_id"])) for r in linked] == [("observation", high["id"])]
    assert linked[0]["trigger_values"]["systolic"] == 184
    # A report of a fourth patient joins the same alert, which keeps the reading.
    await create_report(
        client, nina, bp_report(patient_ref="PT-D", occurred_at=iso(now), systolic=190)
    )
    [joined] = await pattern_alerts(db, CLUSTER)
    assert joined["id"] == alert["id"]
    assert joined["report_count"] == 3


async def test_a_critical_reading_and_a_critical_report_make_the_patients_repeated_pattern(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    nina = users["nina"]
    now = datetime.now(UTC)
    report = await create_report(
        client,
        nina,
        dissociation_report(patient_ref="PT-1", occurred_at=iso(now - timedelta(days=3)), moaa_s=0),
    )
    assert "sedation-loss-of-consciousness" in rules_of(report)
    assert await pattern_alerts(db, REPEATED) == []
    session_id = await dosed_session(client, nina, now - timedelta(minutes=30), patient="PT-1")
    # A reading that raises nothing urgent adds nothing.
    calm = await observe(
        client, nina, session_id, observed_at=iso(now - timedelta(minutes=5)), moaa_s=5
    )
    assert calm["alerts"] == []
    assert await pattern_alerts(db, REPEATED) == []
    deep = await observe(client, nina, session_id, observed_at=iso(now), moaa_s=0)
    assert {"sedation-loss-of-consciousness", REPEATED} <= rules_of(deep)
    [alert] = await pattern_alerts(db, REPEATED)
    assert alert["group_key"] == "PT-1"
    assert alert["report_count"] == 1


async def test_the_misuse_pattern_follows_the_network_ref_and_hides_the_other_clinic(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], users: dict[str, Headers]
) -> None:
    nina, nora, otto = users["nina"], users["nora"], users["otto"]
    now = datetime.now(UTC)
    await open_session(client, nina, session_body("PT-1", network_ref="NET-0042"))
    await open_session(client, nora, session_body("PT-9", clinic="C2", network_ref="NET-0042"))
    await open_session(client, nora, session_body("PT-8", clinic="C2"))
    elsewhere = await create_report(
        client,
        nina,
        misuse_report(patient_ref="PT-1", occurred_at=iso(now - timedelta(days=10))),
    )
    # The same person at C2 under another patient_ref: the pattern counts C1's concern.
    linked_patient = await create_report(
        client, nora, misuse_report("C2", patient_ref="PT-9", occurred_at=iso(now))
    )
    assert MISUSE in rules_of(linked_patient)
    [alert] = await pattern_alerts(db, MISUSE)
    assert alert["clinic_id"] == await db.fetchval("SELECT id FROM clinics WHERE code = 'C2'")
    assert alert["group_key"] == "PT-9"
    linked = await db.fetch("SELECT report_id FROM alert_reports WHERE alert_id = $1", alert["id"])
    assert [str(r["report_id"]) for r in linked] == [linked_patient["id"]]
    opened = await db.fetchval(
        "SELECT details FROM alert_events WHERE alert_id = $1 AND action = 'opened'", alert["id"]
    )
    assert opened["matched_at_other_clinics"] == 1
    # C2's officer sees the alert and nothing of C1's report.
    shown = await client.get(f"/api/v1/alerts/{alert['id']}", headers=otto)
    assert shown.status_code == 200, shown.text
    assert elsewhere["id"] not in shown.text
    assert "C1" not in {r.get("clinic") for r in shown.json().get("reports", [])}

    # A patient with no network link: one concern at C2 is no pattern.
    unlinked = await create_report(
        client, nora, misuse_report("C2", patient_ref="PT-8", occurred_at=iso(now))
    )
    assert MISUSE not in rules_of(unlinked)
    assert len(await pattern_alerts(db, MISUSE)) == 1
