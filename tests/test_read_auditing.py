"""A clinic's own auditor sees who listed, searched or exported its data (issue 10, item 5).

Reads without a ``clinic`` filter used to be recorded only in the global chain, which
only users granted every clinic can read. Each is now recorded in the chain of every
clinic whose data it returned (an export's start: of every clinic it may return).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.reports import bp_report, create_report
from tests.helpers.world import World

ENTRIES = "/api/v1/audit/entries"
# What the network auditor does, unfiltered, and the action each is recorded as.
READS = {
    "/api/v1/reports": "report.listed",
    "/api/v1/alerts": "alert.listed",
    "/api/v1/reports/export?format=ndjson": "report.exported",
    "/api/v1/reports/export?format=fhir": "report.exported",
    "/api/v1/audit/export": "audit.exported",
}


@pytest.fixture
async def network(world: World) -> dict[str, dict[str, str]]:
    """Clinics A and B; reports (and a crisis alert) in A only; an auditor of each."""
    for code in ("A", "B"):
        await world.clinic(code)
    await world.user("nina", "nurse", ["A"])
    await world.user("audrey", "auditor", all_clinics=True)
    await world.user("anna", "auditor", ["A"])
    await world.user("bob", "auditor", ["B"])
    nurse = await world.login("nina")
    await create_report(world.client, nurse, bp_report("A"))
    await create_report(world.client, nurse, bp_report("A", systolic=230, diastolic=130))
    return {name: await world.login(name) for name in ("audrey", "anna", "bob")}


async def own_chain(world: World, headers: dict[str, str], clinic: str) -> list[dict[str, Any]]:
    """Every entry of ``clinic``'s chain by audrey, as that clinic's auditor finds them."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"clinic": clinic, "actor": "audrey", "limit": 500}
    while True:
        response = await world.client.get(ENTRIES, params=params, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        if page["next_cursor"] is None:
            return items
        params["cursor"] = page["next_cursor"]


async def test_a_clinic_auditor_sees_unfiltered_reads_of_her_clinic(
    world: World, network: dict[str, dict[str, str]]
) -> None:
    audrey = network["audrey"]
    for path in READS:
        response = await world.client.get(path, headers=audrey)
        assert response.status_code == 200, (path, response.text)
    # A search that returns only A's entries.
    response = await world.client.get(ENTRIES, params={"action": "report.created"}, headers=audrey)
    assert response.status_code == 200
    assert {e["chain"] for e in response.json()["items"]} == {"clinic:A"}

    seen_by_anna = [e["action"] for e in await own_chain(world, network["anna"], "A")]
    for action in (*READS.values(), "report.export_started", "audit.export_started"):
        assert action in seen_by_anna, action
    assert "audit.searched" in seen_by_anna
    listed = [
        e for e in await own_chain(world, network["anna"], "A") if e["action"] == "report.listed"
    ]
    assert listed[0]["details"]["count"] == 2

    # B's chain holds what may have returned B's data (the exports' starts, the audit
    # export, which carried B's entries), not the reads that returned none of it.
    seen_by_bob = [e["action"] for e in await own_chain(world, network["bob"], "B")]
    assert "report.export_started" in seen_by_bob
    assert "audit.exported" in seen_by_bob
    for action in ("report.listed", "alert.listed", "report.exported"):
        assert action not in seen_by_bob, action
    # The search by action returned none of B's entries.
    searches = [
        e for e in await own_chain(world, network["bob"], "B") if e["action"] == "audit.searched"
    ]
    assert all(e["details"]["filters"]["action"] != "report.created" for e in searches)


async def test_each_clinic_chain_names_only_its_own_reports(
    world: World, network: dict[str, dict[str, str]]
) -> None:
    audrey = network["audrey"]
    await world.user("nico", "nurse", ["B"])
    b_report = await create_report(world.client, await world.login("nico"), bp_report("B"))
    response = await world.client.get("/api/v1/reports", headers=audrey)
    assert response.status_code == 200
    assert len(response.json()["items"]) == 3

    [in_b] = [
        e for e in await own_chain(world, network["bob"], "B") if e["action"] == "report.listed"
    ]
    assert in_b["details"]["report_ids"] == [b_report["id"]]
    assert in_b["details"]["count"] == 1
    [in_a] = [
        e for e in await own_chain(world, network["anna"], "A") if e["action"] == "report.listed"
    ]
    assert b_report["id"] not in in_a["details"]["report_ids"]
    assert in_a["details"]["count"] == 2
