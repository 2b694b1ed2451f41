"""The default alert rules, run in the report's transaction: boundaries, patterns, grouping.

There is no alerts API yet, so alerts are read through the owner connection (``db``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from tests.helpers.reports import (
    NOTHING,
    Stored,
    amend,
    audit_rows,
    bp_report,
    create_report,
    dissociation_report,
    misuse_report,
    new_key,
    post_report,
    stored,
)
from tests.helpers.world import World

# Severity of each default rule, as the rules table in docs/clinical-rules.md gives it.
SEVERITY = {
    "bp-pre-dose-hold": "high",
    "bp-ctcae-grade-3": "high",
    "bp-markedly-abnormal": "urgent",
    "bp-hypertensive-crisis": "critical",
    "sedation-moaa-s-3": "high",
    "sedation-moaa-s-1": "urgent",
    "sedation-loss-of-consciousness": "critical",
    "respiratory-depression": "critical",
    "dissociation-present": "info",
    "not-resolved-at-120-minutes": "high",
    "serious-adverse-event": "critical",
    "controlled-substance-theft-or-loss": "critical",
    "inventory-discrepancy": "high",
    "pattern-of-discrepancies": "urgent",
    "pattern-blood-pressure-cluster": "urgent",
    "pattern-patient-repeated-urgent": "urgent",
}
CLINIC_GROUPED = {
    "controlled-substance-theft-or-loss",
    "inventory-discrepancy",
    "pattern-of-discrepancies",
    "pattern-blood-pressure-cluster",
}
PATTERNS = {
    "pattern-of-discrepancies",
    "pattern-blood-pressure-cluster",
    "pattern-patient-repeated-urgent",
}
ACK_WITHIN = {
    "critical": timedelta(minutes=15),
    "urgent": timedelta(minutes=60),
    "high": timedelta(hours=24),
}
TOLERANCE = timedelta(seconds=5)

HOLD = "bp-pre-dose-hold"
G3 = "bp-ctcae-grade-3"
MARKED = "bp-markedly-abnormal"
CRISIS = "bp-hypertensive-crisis"
SED3 = "sedation-moaa-s-3"
SED1 = "sedation-moaa-s-1"
LOC = "sedation-loss-of-consciousness"
RESP = "respiratory-depression"
DISSOC = "dissociation-present"
UNRESOLVED = "not-resolved-at-120-minutes"
SERIOUS = "serious-adverse-event"
THEFT = "controlled-substance-theft-or-loss"
DISCREPANCY = "inventory-discrepancy"
DISCREPANCIES = "pattern-of-discrepancies"
CLUSTER = "pattern-blood-pressure-cluster"
REPEATED = "pattern-patient-repeated-urgent"
# Protected by migration 0005: that made their version 2.
PROTECTED = {CRISIS, RESP, THEFT}


def default_version(rule_id: str) -> int:
    return 2 if rule_id in PROTECTED else 1


Builder = Callable[..., dict[str, Any]]
BUILDERS: dict[str, Builder] = {
    "bp": bp_report,
    "dis": dissociation_report,
    "mis": misuse_report,
}
NO_QUANTITIES: dict[str, Any] = {"expected_quantity": None, "actual_quantity": None, "unit": None}
BASE = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def make(kind: str, clinic: str = "C1", **overrides: Any) -> dict[str, Any]:
    """A report body of ``kind``; an override of None removes the field."""
    body = BUILDERS[kind](clinic, **overrides)
    return {k: v for k, v in body.items() if v is not None}


def at(days: float = 0, minutes: float = 0) -> str:
    return (BASE + timedelta(days=days, minutes=minutes)).isoformat()


@pytest.fixture
async def nurse(world: World) -> dict[str, str]:
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("nina", "nurse", ["C1", "C2"])
    return await world.login("nina")


async def alerts_of(db: asyncpg.Connection[Any], report_id: str) -> list[asyncpg.Record]:
    """Every alert a report is linked to, whichever version linked it."""
    return await db.fetch(
        "SELECT DISTINCT a.* FROM alerts a JOIN alert_reports ar ON ar.alert_id = a.id"
        " WHERE ar.report_id = $1::uuid ORDER BY a.rule_id",
        report_id,
    )


async def fired(db: asyncpg.Connection[Any], report_id: str) -> set[str]:
    return {a["rule_id"] for a in await alerts_of(db, report_id)}


async def rule_alerts(db: asyncpg.Connection[Any], rule_id: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT * FROM alerts WHERE rule_id = $1 ORDER BY created_at, id", rule_id
    )


async def only_alert(db: asyncpg.Connection[Any], rule_id: str) -> asyncpg.Record:
    rows = await rule_alerts(db, rule_id)
    assert len(rows) == 1, rows
    return rows[0]


async def links(db: asyncpg.Connection[Any], alert_id: Any) -> set[tuple[str, int]]:
    rows = await db.fetch(
        "SELECT report_id::text AS report_id, report_version FROM alert_reports"
        " WHERE alert_id = $1",
        alert_id,
    )
    return {(r["report_id"], r["report_version"]) for r in rows}


async def event_actions(db: asyncpg.Connection[Any], alert_id: Any) -> list[str]:
    rows = await db.fetch(
        "SELECT action FROM alert_events WHERE alert_id = $1 ORDER BY id", alert_id
    )
    return [r["action"] for r in rows]


async def post_all(
    client: AsyncTestClient[Any], headers: dict[str, str], bodies: list[dict[str, Any]]
) -> list[str]:
    return [(await create_report(client, headers, body))["id"] for body in bodies]


def assert_deadline(alert: asyncpg.Record) -> None:
    expected = ACK_WITHIN.get(alert["severity"])
    if expected is None:
        assert alert["ack_deadline"] is None, alert
        return
    assert alert["ack_deadline"] is not None, alert
    assert abs(alert["ack_deadline"] - alert["created_at"] - expected) <= TOLERANCE, alert


async def assert_opened(
    db: asyncpg.Connection[Any],
    alert: asyncpg.Record,
    report_id: str,
    *,
    clinic: str = "C1",
    patient_ref: str | None = None,
) -> None:
    """An alert as a single report opens it: its fields, its event and its audit entry."""
    rule_id = alert["rule_id"]
    assert alert["severity"] == SEVERITY[rule_id]
    assert alert["status"] == "open"
    assert alert["rule_version"] == default_version(rule_id)
    assert alert["escalation_level"] == 0
    assert alert["from_pattern"] is (rule_id in PATTERNS)
    if rule_id in CLINIC_GROUPED:
        assert (alert["group_by"], alert["group_key"]) == ("clinic", "clinic")
    else:
        assert alert["group_by"] == "patient"
        if patient_ref is not None:
            assert alert["group_key"] == patient_ref
    clinic_code = await db.fetchval("SELECT code FROM clinics WHERE id = $1", alert["clinic_id"])
    assert clinic_code == clinic
    assert_deadline(alert)
    if rule_id != THEFT:
        assert alert["dea_notice_due"] is None
        assert alert["dea_form106_due"] is None
    events = await db.fetch(
        "SELECT action, actor, details FROM alert_events WHERE alert_id = $1 ORDER BY id",
        alert["id"],
    )
    assert events[0]["action"] == "opened"
    assert events[0]["actor"] == "nina"
    details = events[0]["details"]
    assert details["rule_id"] == rule_id
    assert details["severity"] == SEVERITY[rule_id]
    assert details["report_id"] == report_id
    entries = await audit_rows(db, "alert.opened", str(alert["id"]))
    assert len(entries) == 1
    entry = entries[0]
    assert entry["chain"] == f"clinic:{clinic}"
    assert entry["clinic"] == clinic
    assert entry["actor"] == "nina"
    assert entry["object_type"] == "alert"
    assert entry["details"]["rule_id"] == rule_id
    assert entry["details"]["report_id"] == report_id


# --- every default rule at its boundary -------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    overrides: dict[str, Any]
    expected: frozenset[str]


def case(kind: str, expected: set[str], name: str, **overrides: Any) -> Case:
    return Case(name, kind, overrides, frozenset(expected))


SERIOUSNESS = [
    "death",
    "life_threatening",
    "hospitalization",
    "disability",
    "congenital_anomaly",
    "other_medically_important",
]
PRE = "pre_dose"

BOUNDARIES: dict[str, list[Case]] = {
    # Pre-dose hold: above 140/90, above 150 systolic at 65 and over; only before dosing.
    "pre-dose-hold": [
        case("bp", set(), "bp-post-dose-150/92-nothing"),
        case("bp", set(), "hold-140/90-no", phase=PRE, systolic=140, diastolic=90),
        case(
            "bp",
            set(),
            "hold-140/90-over-65-no",
            phase=PRE,
            systolic=140,
            diastolic=90,
            age_band="65_and_over",
        ),
        case("bp", {HOLD}, "hold-141/80", phase=PRE, systolic=141, diastolic=80),
        case("bp", {HOLD}, "hold-141/90", phase=PRE, systolic=141, diastolic=90),
        case("bp", {HOLD}, "hold-130/91", phase=PRE, systolic=130, diastolic=91),
        case(
            "bp",
            {HOLD},
            "hold-141-under-65",
            phase=PRE,
            systolic=141,
            diastolic=80,
            age_band="under_65",
        ),
        case(
            "bp",
            set(),
            "hold-141-over-65-no",
            phase=PRE,
            systolic=141,
            diastolic=80,
            age_band="65_and_over",
        ),
        case(
            "bp",
            set(),
            "hold-150-over-65-no",
            phase=PRE,
            systolic=150,
            diastolic=80,
            age_band="65_and_over",
        ),
        case(
            "bp",
            {HOLD},
            "hold-151-over-65",
            phase=PRE,
            systolic=151,
            diastolic=80,
            age_band="65_and_over",
        ),
        case(
            "bp",
            {HOLD},
            "hold-dbp-91-over-65",
            phase=PRE,
            systolic=130,
            diastolic=91,
            age_band="65_and_over",
        ),
        case("bp", set(), "hold-post-dose-no", phase="post_dose", systolic=155, diastolic=95),
        case("bp", set(), "hold-discharge-no", phase="discharge", systolic=155, diastolic=95),
        case("bp", {HOLD, G3}, "hold-and-g3-pre-dose", phase=PRE, systolic=165, diastolic=95),
    ],
    # CTCAE grade 3: 160/100, but not once markedly abnormal or a crisis.
    "ctcae-grade-3": [
        case("bp", set(), "g3-159/99-no", systolic=159, diastolic=99),
        case("bp", {G3}, "g3-160/80", systolic=160, diastolic=80),
        case("bp", {G3}, "g3-150/100", systolic=150, diastolic=100),
        case("bp", {G3}, "g3-179/109", systolic=179, diastolic=109),
    ],
    # Markedly abnormal: 180 or 110, without crisis criteria.
    "markedly-abnormal": [
        case("bp", {MARKED}, "marked-180/100", systolic=180, diastolic=100),
        case("bp", {MARKED}, "marked-170/110", systolic=170, diastolic=110),
        case("bp", {MARKED}, "marked-179/120", systolic=179, diastolic=120),
        case("bp", {MARKED}, "marked-180/120", systolic=180, diastolic=120),
    ],
    # Hypertensive crisis: above 180 or 120, or any symptom with any reading.
    "hypertensive-crisis": [
        case("bp", {CRISIS}, "crisis-181/100", systolic=181, diastolic=100),
        case("bp", {CRISIS}, "crisis-170/121", systolic=170, diastolic=121),
        case(
            "bp",
            {CRISIS},
            "crisis-symptom-normal-bp",
            systolic=118,
            diastolic=76,
            symptoms=["seizure"],
        ),
        case(
            "bp", {CRISIS}, "crisis-symptom-g3", systolic=165, diastolic=95, symptoms=["chest_pain"]
        ),
        case(
            "bp",
            {CRISIS},
            "crisis-symptoms-marked",
            systolic=180,
            diastolic=110,
            symptoms=["visual_change", "confusion"],
        ),
        case("bp", {HOLD, CRISIS}, "crisis-pre-dose", phase=PRE, systolic=200, diastolic=125),
        case("bp", set(), "no-symptoms-empty-list", systolic=120, diastolic=80, symptoms=[]),
    ],
    # Sedation: MOAA/S 3 and 2 high, 1 urgent, 0 critical.
    "sedation": [
        case("dis", set(), "moaa-s-5-no", moaa_s=5),
        case("dis", set(), "moaa-s-4-no", moaa_s=4),
        case("dis", {SED3}, "moaa-s-3", moaa_s=3),
        case("dis", {SED3}, "moaa-s-2", moaa_s=2),
        case("dis", {SED1}, "moaa-s-1", moaa_s=1),
        case("dis", {LOC}, "moaa-s-0", moaa_s=0),
    ],
    # Respiratory depression: SpO2 below 90, or observed.
    "respiratory-depression": [
        case("dis", {RESP}, "spo2-89", spo2=89),
        case("dis", set(), "spo2-90-no", spo2=90),
        case("dis", {RESP}, "respiratory-depression", respiratory_depression=True, spo2=97),
    ],
    # Dissociation: CADSS above 4.
    "dissociation-present": [
        case("dis", {DISSOC}, "cadss-5", cadss_total=5),
        case("dis", set(), "cadss-4-no", cadss_total=4),
    ],
    # Not resolved at 120 minutes.
    "not-resolved-at-120-minutes": [
        case("dis", {UNRESOLVED}, "unresolved-120", resolved=False, minutes_after_dose=120),
        case("dis", set(), "unresolved-119-no", resolved=False, minutes_after_dose=119),
        case("dis", set(), "resolved-120-no", resolved=True, minutes_after_dose=120),
        case("dis", set(), "unresolved-no-minutes-no", resolved=False),
        case(
            "dis",
            {LOC, RESP, DISSOC, UNRESOLVED},
            "dissociation-everything",
            moaa_s=0,
            spo2=80,
            cadss_total=40,
            resolved=False,
            minutes_after_dose=180,
        ),
    ],
    # Any seriousness flag, on any kind.
    "serious-adverse-event": [
        *(
            case(kind, {SERIOUS}, f"serious-{flag}-{kind}", seriousness=[flag], **extra)
            for (kind, extra), flag in zip(
                [
                    ("bp", {"systolic": 120, "diastolic": 80}),
                    ("dis", {}),
                    ("mis", {"concern_type": "patient_behaviour", **NO_QUANTITIES}),
                ]
                * 2,
                SERIOUSNESS,
                strict=True,
            )
        ),
        case(
            "bp",
            {SERIOUS, MARKED},
            "serious-and-marked",
            systolic=180,
            diastolic=115,
            seriousness=["hospitalization", "disability"],
        ),
    ],
    # Misuse: theft and loss critical; any discrepancy high; other concerns no alert.
    "misuse-concern": [
        case("mis", {THEFT}, "theft", concern_type="theft"),
        case("mis", {THEFT}, "loss", concern_type="loss"),
        case("mis", {DISCREPANCY}, "inventory-discrepancy", concern_type="inventory_discrepancy"),
        case(
            "mis", set(), "patient-behaviour-no", concern_type="patient_behaviour", **NO_QUANTITIES
        ),
        case("mis", set(), "staff-suspected-no", concern_type="staff_suspected", **NO_QUANTITIES),
        case("mis", set(), "device-tampered-no", concern_type="device_tampered", **NO_QUANTITIES),
        case(
            "mis",
            {THEFT, SERIOUS},
            "theft-and-serious",
            concern_type="theft",
            seriousness=["other_medically_important"],
        ),
    ],
}


async def resolve_all(db: asyncpg.Connection[Any]) -> None:
    """Close every alert, so the next case opens its own (clinic-grouped rules attach)."""
    await db.execute(
        "UPDATE alerts SET status = 'resolved', resolved_at = now(), ack_deadline = NULL"
        " WHERE status <> 'resolved'"
    )


@pytest.mark.parametrize("cases", list(BOUNDARIES.values()), ids=list(BOUNDARIES))
async def test_default_rule_boundaries(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    cases: list[Case],
) -> None:
    """Each case in turn, one test database: its own patient, 31 days before the last
    case (out of every pattern window), and every alert resolved after it."""
    wrong: dict[str, tuple[set[str], set[str]]] = {}
    for i, c in enumerate(cases):
        patient = f"PT-B{i}"
        occurred_at = (BASE - timedelta(days=31 * i)).isoformat()
        body = make(c.kind, **{"patient_ref": patient, "occurred_at": occurred_at, **c.overrides})
        report = await create_report(client, nurse, body)
        alerts = await alerts_of(db, report["id"])
        got = {a["rule_id"] for a in alerts}
        if got != c.expected:
            wrong[c.name] = (got, set(c.expected))
        for alert in alerts:
            assert alert["report_count"] == 1, c.name
            assert await links(db, alert["id"]) == {(report["id"], 1)}, c.name
            await assert_opened(db, alert, report["id"], patient_ref=patient)
        open_count = await db.fetchval("SELECT count(*) FROM alerts WHERE status = 'open'")
        assert open_count == len(alerts), c.name
        await resolve_all(db)
    assert wrong == {}, "case: (fired, expected)"


def test_boundary_cases_cover_every_default_rule() -> None:
    covered: set[str] = set()
    for cases in BOUNDARIES.values():
        for c in cases:
            covered |= c.expected
    assert covered == set(SEVERITY) - PATTERNS


async def test_default_rule_set_is_what_the_tests_expect(db: asyncpg.Connection[Any]) -> None:
    rows = await db.fetch("SELECT id, version, severity, enabled, definition FROM alert_rules")
    assert {r["id"]: r["severity"] for r in rows} == SEVERITY
    assert all(r["version"] == default_version(r["id"]) and r["enabled"] for r in rows)
    grouped = {r["id"] for r in rows if r["definition"]["group_by"] == "clinic"}
    assert grouped == CLINIC_GROUPED
    assert {r["id"] for r in rows if r["definition"]["pattern"]} == PATTERNS
    assert {r["id"] for r in rows if r["definition"]["dea_deadlines"]} == {THEFT}
    versions = await db.fetch("SELECT rule_id, version, definition FROM alert_rule_versions")
    assert {(v["rule_id"], v["version"]) for v in versions} == {(r["id"], 1) for r in rows} | {
        (rule_id, 2) for rule_id in PROTECTED
    }


# --- theft and loss: DEA deadlines ------------------------------------------------


DEA_CASES = [
    # concern, occurred_at, DEA notice due (one business day later), as the case name
    ("theft", "2026-01-15T12:00:00Z", "2026-01-16T12:00:00Z"),  # Thursday: Friday
    ("loss", "2026-01-16T12:00:00Z", "2026-01-19T12:00:00Z"),  # Friday: Monday
    ("theft", "2026-01-17T08:00:00Z", "2026-01-19T08:00:00Z"),  # Saturday: Monday
    ("loss", "2026-01-18T23:00:00Z", "2026-01-19T23:00:00Z"),  # Sunday: Monday
    ("theft", "2026-01-19T07:30:00Z", "2026-01-20T07:30:00Z"),  # Monday: Tuesday
    ("loss", "2026-01-16T10:00:00+01:00", "2026-01-19T09:00:00Z"),  # Friday, with an offset
]


async def test_theft_and_loss_carry_dea_deadlines(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    for concern, occurred_at, notice_due in DEA_CASES:
        body = make("mis", concern_type=concern, occurred_at=occurred_at)
        report = await create_report(client, nurse, body)
        alert = await db.fetchrow(
            "SELECT * FROM alerts WHERE rule_id = $1 AND status = 'open'", THEFT
        )
        assert alert is not None, occurred_at
        await assert_opened(db, alert, report["id"])
        occurred = datetime.fromisoformat(occurred_at)
        assert alert["dea_notice_due"] == datetime.fromisoformat(notice_due), occurred_at
        assert alert["dea_form106_due"] == occurred + timedelta(days=45), occurred_at
        await resolve_all(db)


# --- patterns ---------------------------------------------------------------------


def high_bp(
    patient: str, days: float, clinic: str = "C1", minutes: float = 0, **overrides: Any
) -> dict[str, Any]:
    """Markedly abnormal (urgent); a different patient per report keeps the patient
    pattern out of the way."""
    return make(
        "bp",
        clinic,
        patient_ref=patient,
        occurred_at=at(days, minutes),
        **{"systolic": 180, "diastolic": 100, **overrides},
    )


async def test_bp_cluster_fires_on_the_third_report_within_7_days(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    first, second = await post_all(
        client, nurse, [high_bp("PT-A", 0), high_bp("PT-B", 3, systolic=210)]
    )
    assert await rule_alerts(db, CLUSTER) == []
    assert await fired(db, second) == {CRISIS}
    (third,) = await post_all(client, nurse, [high_bp("PT-C", 7, minutes=-1)])
    assert await fired(db, third) == {MARKED, CLUSTER}
    alert = await only_alert(db, CLUSTER)
    assert alert["from_pattern"] is True
    assert alert["report_count"] == 3
    assert await links(db, alert["id"]) == {(first, 1), (second, 1), (third, 1)}
    await assert_opened(db, alert, third)
    # A fourth joins the open cluster alert.
    (fourth,) = await post_all(client, nurse, [high_bp("PT-D", 8)])
    again = await only_alert(db, CLUSTER)
    assert again["id"] == alert["id"]
    assert again["report_count"] == 4
    assert (fourth, 1) in await links(db, alert["id"])
    assert await event_actions(db, alert["id"]) == ["opened", "matched"]


async def test_bp_cluster_counts_systolic_180_only(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    await post_all(
        client,
        nurse,
        [
            high_bp("PT-A", 0),
            high_bp("PT-B", 1),
            high_bp("PT-C", 2, systolic=179, diastolic=115),
        ],
    )
    assert await rule_alerts(db, CLUSTER) == []


async def test_bp_cluster_over_more_than_7_days_does_not_fire(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    await post_all(
        client, nurse, [high_bp("PT-A", 0), high_bp("PT-B", 4), high_bp("PT-C", 7, minutes=1)]
    )
    assert await rule_alerts(db, CLUSTER) == []


async def test_bp_cluster_counts_one_clinic_only(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    ids = await post_all(
        client,
        nurse,
        [high_bp("PT-A", 0), high_bp("PT-B", 1, clinic="C2"), high_bp("PT-C", 2)],
    )
    assert await rule_alerts(db, CLUSTER) == []
    (fourth,) = await post_all(client, nurse, [high_bp("PT-D", 3)])
    alert = await only_alert(db, CLUSTER)
    assert await links(db, alert["id"]) == {(ids[0], 1), (ids[2], 1), (fourth, 1)}
    c1 = await db.fetchval("SELECT id FROM clinics WHERE code = 'C1'")
    assert alert["clinic_id"] == c1


async def test_bp_cluster_does_not_depend_on_submission_order(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    await post_all(client, nurse, [high_bp("PT-A", 2), high_bp("PT-B", 1), high_bp("PT-C", 0)])
    alert = await only_alert(db, CLUSTER)
    assert alert["report_count"] == 3


def discrepancy(days: float, patient: str = "PT-003", minutes: float = 0) -> dict[str, Any]:
    return make(
        "mis",
        concern_type="inventory_discrepancy",
        occurred_at=at(days, minutes),
        patient_ref=patient,
    )


async def test_pattern_of_discrepancies_fires_on_the_third_in_30_days(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    first, second = await post_all(client, nurse, [discrepancy(0), discrepancy(10, "PT-X")])
    assert await rule_alerts(db, DISCREPANCIES) == []
    assert await fired(db, second) == {DISCREPANCY}
    (third,) = await post_all(client, nurse, [discrepancy(30, "PT-Y", minutes=-1)])
    assert await fired(db, third) == {DISCREPANCY, DISCREPANCIES}
    alert = await only_alert(db, DISCREPANCIES)
    assert alert["report_count"] == 3
    assert await links(db, alert["id"]) == {(first, 1), (second, 1), (third, 1)}
    await assert_opened(db, alert, third)


async def test_pattern_of_discrepancies_ignores_other_concerns_and_old_ones(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    await post_all(
        client,
        nurse,
        [
            discrepancy(0),
            make("mis", concern_type="theft", occurred_at=at(31)),
            make("mis", concern_type="loss", occurred_at=at(32)),
            discrepancy(30, minutes=1),
            discrepancy(31),
        ],
    )
    assert await rule_alerts(db, DISCREPANCIES) == []


async def test_repeated_urgent_fires_on_the_second_for_one_patient(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    (first,) = await post_all(client, nurse, [high_bp("PT-A", 0)])
    assert await fired(db, first) == {MARKED}
    # Another kind, critical, for the same patient, 29 days later.
    second_body = make("dis", patient_ref="PT-A", occurred_at=at(29), moaa_s=0)
    (second,) = await post_all(client, nurse, [second_body])
    assert await fired(db, second) == {LOC, REPEATED}
    alert = await only_alert(db, REPEATED)
    assert (alert["group_by"], alert["group_key"]) == ("patient", "PT-A")
    assert await links(db, alert["id"]) == {(first, 1), (second, 1)}
    assert alert["report_count"] == 2
    await assert_opened(db, alert, second, patient_ref="PT-A")


async def test_repeated_urgent_needs_the_same_patient(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    await post_all(client, nurse, [high_bp("PT-A", 0), high_bp("PT-B", 1)])
    assert await rule_alerts(db, REPEATED) == []


async def test_repeated_urgent_needs_urgent_or_critical(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    await post_all(
        client,
        nurse,
        [
            high_bp("PT-A", 0),
            high_bp("PT-A", 1, systolic=170, diastolic=100),  # grade 3: high
            make("dis", patient_ref="PT-A", occurred_at=at(2), moaa_s=3),  # high
            make("dis", patient_ref="PT-A", occurred_at=at(3), cadss_total=30),  # info
        ],
    )
    assert await rule_alerts(db, REPEATED) == []


async def test_repeated_urgent_needs_30_days(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    await post_all(client, nurse, [high_bp("PT-A", 0), high_bp("PT-A", 30, minutes=1)])
    assert await rule_alerts(db, REPEATED) == []


async def test_repeated_urgent_counts_one_clinic_only(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    await post_all(client, nurse, [high_bp("PT-A", 0), high_bp("PT-A", 1, clinic="C2")])
    assert await rule_alerts(db, REPEATED) == []


async def test_an_amended_away_urgent_event_does_not_count_for_the_patient(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    first = await create_report(client, nurse, high_bp("PT-A", 0))
    response = await amend(
        client, nurse, first["id"], {"reason": "typo", "systolic": 120, "diastolic": 80}
    )
    assert response.status_code == 201, response.text
    await post_all(client, nurse, [high_bp("PT-A", 1)])
    assert await rule_alerts(db, REPEATED) == []


# --- grouping ---------------------------------------------------------------------


def grade3(patient: str = "PT-001", clinic: str = "C1", days: float = 0) -> dict[str, Any]:
    return make("bp", clinic, patient_ref=patient, systolic=170, diastolic=95, occurred_at=at(days))


async def test_second_match_attaches_to_the_open_alert(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    first, second = await post_all(client, nurse, [grade3(), grade3(days=1)])
    alert = await only_alert(db, G3)
    assert alert["report_count"] == 2
    assert alert["status"] == "open"
    assert alert["last_seen_at"] > alert["first_seen_at"]
    assert alert["revision"] == 2
    assert await links(db, alert["id"]) == {(first, 1), (second, 1)}
    assert await event_actions(db, alert["id"]) == ["opened", "matched"]
    matched = await audit_rows(db, "alert.matched", str(alert["id"]))
    assert len(matched) == 1
    assert matched[0]["chain"] == "clinic:C1"
    assert matched[0]["details"]["report_id"] == second
    assert matched[0]["details"]["report_count"] == 2
    assert len(await audit_rows(db, "alert.opened", str(alert["id"]))) == 1


async def test_after_resolution_the_next_match_opens_a_new_alert(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    (first,) = await post_all(client, nurse, [grade3()])
    old = await only_alert(db, G3)
    await db.execute(
        "UPDATE alerts SET status = 'resolved', resolved_at = now(), ack_deadline = NULL"
        " WHERE id = $1",
        old["id"],
    )
    (second,) = await post_all(client, nurse, [grade3(days=1)])
    resolved, new = await rule_alerts(db, G3)
    assert resolved["id"] == old["id"]
    assert resolved["status"] == "resolved"
    assert resolved["report_count"] == 1
    assert await links(db, old["id"]) == {(first, 1)}
    assert new["status"] == "open"
    assert new["report_count"] == 1
    assert await links(db, new["id"]) == {(second, 1)}
    await assert_opened(db, new, second, patient_ref="PT-001")


async def test_acknowledged_alert_still_takes_new_matches(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    await post_all(client, nurse, [grade3()])
    old = await only_alert(db, G3)
    await db.execute(
        "UPDATE alerts SET status = 'acknowledged', acknowledged_at = now(),"
        " ack_deadline = NULL WHERE id = $1",
        old["id"],
    )
    await post_all(client, nurse, [grade3(days=1)])
    alert = await only_alert(db, G3)
    assert alert["status"] == "acknowledged"
    assert alert["report_count"] == 2


async def test_patient_grouped_rules_keep_patients_apart(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    a1, b1, a2 = await post_all(client, nurse, [grade3("PT-A"), grade3("PT-B"), grade3("PT-A")])
    alerts = {a["group_key"]: a for a in await rule_alerts(db, G3)}
    assert set(alerts) == {"PT-A", "PT-B"}
    assert await links(db, alerts["PT-A"]["id"]) == {(a1, 1), (a2, 1)}
    assert await links(db, alerts["PT-B"]["id"]) == {(b1, 1)}


async def test_same_patient_at_another_clinic_is_another_alert(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    await post_all(client, nurse, [grade3("PT-A"), grade3("PT-A", clinic="C2")])
    alerts = await rule_alerts(db, G3)
    assert len(alerts) == 2
    assert {a["report_count"] for a in alerts} == {1}
    c2_alert = next(a for a in alerts if a["clinic_id"] != alerts[0]["clinic_id"])
    entries = await audit_rows(db, "alert.opened", str(c2_alert["id"]))
    assert [e["chain"] for e in entries] == ["clinic:C2"]


async def test_clinic_grouped_rules_join_patients(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    first, second = await post_all(
        client,
        nurse,
        [
            make("mis", patient_ref="PT-A", concern_type="theft"),
            make("mis", patient_ref="PT-B", concern_type="loss", occurred_at=at(20)),
        ],
    )
    alert = await only_alert(db, THEFT)
    assert alert["report_count"] == 2
    assert await links(db, alert["id"]) == {(first, 1), (second, 1)}
    # The deadlines stay those of the first discovery.
    assert alert["dea_notice_due"] == datetime(2026, 1, 16, 12, 0, tzinfo=UTC)


# --- rules are data ---------------------------------------------------------------


async def test_a_disabled_rule_does_not_fire(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    await db.execute("UPDATE alert_rules SET enabled = false WHERE id = $1", G3)
    (first,) = await post_all(client, nurse, [grade3()])
    assert await fired(db, first) == set()
    await db.execute("UPDATE alert_rules SET enabled = true WHERE id = $1", G3)
    (second,) = await post_all(client, nurse, [grade3()])
    assert await fired(db, second) == {G3}


async def test_a_changed_definition_takes_effect(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    await db.execute(
        "UPDATE alert_rules SET version = 2,"
        " definition = jsonb_set(definition, '{when,value}', '10') WHERE id = $1",
        DISSOC,
    )
    (ten,) = await post_all(client, nurse, [make("dis", cadss_total=10)])
    (eleven,) = await post_all(client, nurse, [make("dis", cadss_total=11)])
    assert await fired(db, ten) == set()
    assert await fired(db, eleven) == {DISSOC}


async def test_an_alert_records_the_rule_version_that_fired_it(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    await db.execute("UPDATE alert_rules SET version = 2 WHERE id = $1", G3)
    report = await create_report(client, nurse, grade3())
    alert = await only_alert(db, G3)
    assert alert["rule_version"] == 2
    (event,) = await db.fetch("SELECT details FROM alert_events WHERE alert_id = $1", alert["id"])
    assert event["details"]["rule_version"] == 2
    entries = await audit_rows(db, "alert.opened", str(alert["id"]))
    assert entries[0]["details"]["rule_version"] == 2
    assert entries[0]["details"]["report_id"] == report["id"]


async def test_an_amendment_that_crosses_a_threshold_raises_the_alert(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    report = await create_report(client, nurse, make("bp", systolic=150, diastolic=92))
    assert await fired(db, report["id"]) == set()
    response = await amend(client, nurse, report["id"], {"reason": "re-read", "systolic": 165})
    assert response.status_code == 201, response.text
    alert = await only_alert(db, G3)
    assert await links(db, alert["id"]) == {(report["id"], 2)}
    await assert_opened(db, alert, report["id"], patient_ref="PT-001")
    assert alert["report_count"] == 1
    (event,) = await db.fetch("SELECT details FROM alert_events WHERE alert_id = $1", alert["id"])
    assert event["details"]["report_version"] == 2
    # Still over the threshold: the same alert takes version 3, still one report.
    response = await amend(client, nurse, report["id"], {"reason": "again", "systolic": 170})
    assert response.status_code == 201, response.text
    again = await only_alert(db, G3)
    assert again["id"] == alert["id"]
    assert again["report_count"] == 1
    assert await links(db, alert["id"]) == {(report["id"], 2), (report["id"], 3)}
    assert await event_actions(db, alert["id"]) == ["opened", "matched"]


async def test_an_amendment_into_a_crisis_opens_the_crisis_alert(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    report = await create_report(client, nurse, grade3())
    response = await amend(client, nurse, report["id"], {"reason": "typo", "systolic": 190})
    assert response.status_code == 201, response.text
    g3 = await only_alert(db, G3)
    crisis = await only_alert(db, CRISIS)
    assert await links(db, g3["id"]) == {(report["id"], 1)}
    assert await links(db, crisis["id"]) == {(report["id"], 2)}


# --- atomicity --------------------------------------------------------------------

BROKEN_DEFINITIONS = [
    pytest.param({"kinds": [], "when": {"bogus": 1}}, id="condition-rejected"),
    pytest.param({"kinds": ["nope"], "when": {"field": "x", "op": "empty"}}, id="bad-kind"),
]


async def add_broken_rule(db: asyncpg.Connection[Any], definition: dict[str, Any]) -> None:
    await db.execute(
        "INSERT INTO alert_rules (id, version, name, severity, description, enabled,"
        " definition) VALUES ('broken', 1, 'Broken', 'high', 'Rejected at evaluation', true, $1)",
        definition,
    )


@pytest.mark.parametrize("definition", BROKEN_DEFINITIONS)
async def test_failed_evaluation_rolls_the_report_back(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    definition: dict[str, Any],
) -> None:
    await add_broken_rule(db, definition)
    key = new_key()
    body = make("bp", systolic=200, diastolic=110)
    response = await post_report(client, nurse, body, key=key)
    assert response.status_code >= 400, response.text
    assert await stored(db) == NOTHING
    assert await db.fetchval("SELECT count(*) FROM alerts") == 0
    assert await db.fetchval("SELECT count(*) FROM alert_events") == 0
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    assert await audit_rows(db, "alert.opened") == []
    await db.execute("UPDATE alert_rules SET enabled = false WHERE id = 'broken'")
    retry = await post_report(client, nurse, body, key=key)
    assert retry.status_code == 201, retry.text
    assert "Idempotency-Replayed" not in retry.headers
    assert await stored(db) == Stored(1, 1, 1)
    assert await fired(db, retry.json()["id"]) == {CRISIS}


@pytest.mark.parametrize(
    "definition",
    [
        pytest.param(
            BROKEN_DEFINITIONS[0].values[0],
            id="condition-rejected",
        ),
        BROKEN_DEFINITIONS[1],
    ],
)
async def test_failed_evaluation_is_a_server_error(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    definition: dict[str, Any],
) -> None:
    await add_broken_rule(db, definition)
    response = await post_report(client, nurse, make("bp"))
    assert 500 <= response.status_code < 600, response.text


async def test_failed_evaluation_rolls_an_amendment_back(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    report = await create_report(client, nurse, make("bp"))
    await add_broken_rule(db, {"kinds": [], "when": {"bogus": 1}})
    response = await amend(client, nurse, report["id"], {"reason": "re-read", "systolic": 190})
    assert response.status_code >= 400, response.text
    versions = await db.fetchval(
        "SELECT count(*) FROM report_versions WHERE report_id = $1::uuid", report["id"]
    )
    assert versions == 1
    assert await audit_rows(db, "report.amended") == []
    assert await db.fetchval("SELECT count(*) FROM alerts") == 0


# --- evaluation off the event loop (issue 10 item 2) --------------------------------


async def test_heavy_matching_runs_in_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Matching whose size (rules x nodes, or pattern candidates x nodes) is above
    OFF_LOOP_EVALUATIONS runs in a worker thread, so the event loop serves other requests
    meanwhile; light matching stays on the loop."""
    import threading

    from safetyreport.alerts import evaluate
    from safetyreport.alerts.limits import OFF_LOOP_EVALUATIONS

    threads: list[int] = []

    def work(value: int) -> int:
        threads.append(threading.get_ident())
        return value

    loop_thread = threading.get_ident()
    assert await evaluate._off_loop_if_heavy(OFF_LOOP_EVALUATIONS, work, 1) == 1
    assert await evaluate._off_loop_if_heavy(OFF_LOOP_EVALUATIONS + 1, work, 2) == 2
    assert threads[0] == loop_thread
    assert threads[1] != loop_thread
