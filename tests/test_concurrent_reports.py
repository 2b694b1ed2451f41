"""Reports of one clinic submitted at once: they take turns on the clinic's audit chain
(its head is locked in the report's first statement, until commit), so the chain stays
one line and each report's pattern rules see the reports committed before it: a cluster
crossed by concurrent writers is opened exactly once and joined by the rest."""

from __future__ import annotations

from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from safetyreport.audit import verify_chains
from tests.helpers.reports import REPORTS, bp_report, new_key, send_concurrently
from tests.helpers.world import World

CLUSTER = "pattern-blood-pressure-cluster"
WRITERS = 6


async def test_concurrent_reports_raise_one_cluster_and_keep_the_chain(
    world: World, client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    headers = await world.login("nina")
    # Post-dose systolic 185 of distinct patients: each raises its own urgent alert, and
    # from the third on (3 patients in 7 days) they make the clinic's cluster.
    requests = [
        client.build_request(
            "POST",
            REPORTS,
            json=bp_report(patient_ref=f"PT-{i:03}", systolic=185, diastolic=100),
            headers={**headers, "Idempotency-Key": new_key()},
        )
        for i in range(WRITERS)
    ]
    responses = await send_concurrently(client, requests)
    assert [r.status_code for r in responses] == [201] * WRITERS, [r.text for r in responses]

    clusters = await db.fetch("SELECT id, report_count FROM alerts WHERE rule_id = $1", CLUSTER)
    assert len(clusters) == 1
    cluster = clusters[0]
    assert cluster["report_count"] == WRITERS
    actions = await db.fetch(
        "SELECT action FROM alert_events WHERE alert_id = $1 ORDER BY id", cluster["id"]
    )
    # Opened by the third report, joined (and, urgent, renewed) by each later one.
    assert [a["action"] for a in actions] == ["opened"] + ["renewed"] * (WRITERS - 3)
    # The answers of the third to the last report show the cluster; the first two, not.
    showing = [CLUSTER in {a["rule"] for a in r.json()["alerts"]} for r in responses]
    assert sum(showing) == WRITERS - 2

    report = await verify_chains(db)
    assert report.ok, report
    # Every report and every alert event has its entry in the clinic's chain.
    entries = await db.fetchval(
        "SELECT count(*) FROM audit_entries WHERE chain = 'clinic:C1'"
        " AND action IN ('report.created', 'alert.opened', 'alert.renewed', 'alert.matched')"
    )
    events = await db.fetchval("SELECT count(*) FROM alert_events")
    assert entries == WRITERS + events
