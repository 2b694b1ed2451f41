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
    adverse_report,
    amend,
    audit_rows,
    bp_report,
    create_report,
    dissociation_report,
    errors_of,
    misuse_report,
    new_key,
    post_report,
    stock_report,
    stored,
)
from tests.helpers.world import World

HOLD = "bp-pre-dose-hold"
G3 = "bp-ctcae-grade-3"
MARKED = "bp-markedly-abnormal"
SEVERE = "bp-severe-hypertension"
CRISIS = "bp-hypertensive-crisis"
TARGET = "target-organ-symptom"
HYPO = "hypotension"
HYPO_SEVERE = "hypotension-severe"
HR = "heart-rate"
HR_SEVERE = "heart-rate-severe"
BREATHING = "breathing-impaired"
RESP = "respiratory-depression"
SED3 = "sedation-moaa-s-3"
SED1 = "sedation-moaa-s-1"
LOC = "sedation-loss-of-consciousness"
DISSOC = "dissociation-present"
UNRESOLVED = "not-resolved-at-120-minutes"
SUICIDAL = "suicidal-behaviour"
IDEATION = "suicidal-ideation"
RESCUE = "emergence-rescue-medication"
ED = "emergence-ed-transfer"
VOMITING = "vomiting-while-sedated"
FALL = "fall"
URO = "urological-symptoms"
HAEMATURIA = "urological-haematuria"
PREGNANCY = "pregnancy-exposure"
DOSE = "dose-off-protocol"
SERIOUS = "serious-adverse-event"
DAST = "dast10-moderate"
MISUSE = "pattern-patient-misuse"
THEFT = "controlled-substance-theft-or-loss"
DISCREPANCY = "inventory-discrepancy"
DISCREPANCIES = "pattern-of-discrepancies"
DIVERSION = "suspected-staff-diversion"
TAMPERED = "device-tampered"
CLUSTER = "pattern-blood-pressure-cluster"
REPEATED = "pattern-patient-repeated-urgent"
DISCHARGE_OVERRIDE = "discharge-override"
REMS_OVERDUE = "rems-form-overdue"
OPEN_TOO_LONG = "session-open-too-long"
FREQUENCY = "esketamine-frequency"
SIGNAL = "rate-above-control-limit"

# Severity of each default rule, as the rules table in docs/clinical-rules.md gives it.
SEVERITY = {
    HOLD: "high",
    G3: "high",
    MARKED: "urgent",
    SEVERE: "urgent",
    CRISIS: "critical",
    TARGET: "critical",
    HYPO: "high",
    HYPO_SEVERE: "urgent",
    HR: "high",
    HR_SEVERE: "urgent",
    BREATHING: "high",
    RESP: "critical",
    SED3: "high",
    SED1: "urgent",
    LOC: "critical",
    DISSOC: "info",
    UNRESOLVED: "high",
    SUICIDAL: "critical",
    IDEATION: "high",
    RESCUE: "high",
    ED: "urgent",
    VOMITING: "urgent",
    FALL: "high",
    URO: "high",
    HAEMATURIA: "urgent",
    PREGNANCY: "high",
    DOSE: "high",
    SERIOUS: "critical",
    DAST: "high",
    MISUSE: "high",
    THEFT: "critical",
    DISCREPANCY: "high",
    DISCREPANCIES: "urgent",
    DIVERSION: "urgent",
    TAMPERED: "high",
    CLUSTER: "urgent",
    REPEATED: "urgent",
    DISCHARGE_OVERRIDE: "high",
    REMS_OVERDUE: "high",
    OPEN_TOO_LONG: "high",
    FREQUENCY: "high",
    SIGNAL: "high",
}
# The safety signal is a clinic's (tests/test_analytics_signals.py).
CLINIC_GROUPED = {DISCREPANCY, DISCREPANCIES, DIVERSION, TAMPERED, CLUSTER, SIGNAL}
# Every theft or loss is an alert of its own, with its own DEA clocks; so is every
# overdue REMS form and every session left open (tests/test_rems_forms.py).
REPORT_GROUPED = {THEFT, REMS_OVERDUE, OPEN_TOO_LONG}
PATTERNS = {DISCREPANCIES, CLUSTER, REPEATED, MISUSE}
# Installed but off: CADSS above 4 is expected after a dose, counted and not queued.
DISABLED = {DISSOC}
# Raised by a treatment session's discharge reading (tests/test_sessions.py) or the
# periodic session check (tests/test_rems_forms.py) only: no report carries their facts,
# nor the course facts of a session's dose (tests/test_patient_timeline.py); nor the
# safety signal, raised by the periodic signal check (tests/test_analytics_signals.py).
SESSION_ONLY = {DISCHARGE_OVERRIDE, REMS_OVERDUE, OPEN_TOO_LONG, FREQUENCY, SIGNAL}
PROTECTED = {CRISIS, RESP, THEFT, TARGET, SUICIDAL}
# Each migration that changed a default rule made a new version of it: 0005 protected
# three, 0007 (the clinical model) revised these; the rules 0007 added are version 1;
# 0008 grouped the theft rule by report.
PROTECTED_BY_0005 = {CRISIS, RESP, THEFT}
CHANGED_BY_0007 = {
    HOLD,
    G3,
    MARKED,
    CRISIS,
    RESP,
    DISSOC,
    SERIOUS,
    THEFT,
    DISCREPANCY,
    DISCREPANCIES,
    CLUSTER,
    SED3,
    SED1,
    LOC,
}


CHANGED_BY_0008 = {THEFT}


def default_version(rule_id: str) -> int:
    if rule_id in SESSION_ONLY:
        return 1  # added by 0013 or 0014, with its guidance
    # Migration 0009 gave every default rule its guidance: a version more.
    return (
        2
        + (rule_id in PROTECTED_BY_0005)
        + (rule_id in CHANGED_BY_0007)
        + (rule_id in CHANGED_BY_0008)
    )


Builder = Callable[..., dict[str, Any]]
BUILDERS: dict[str, Builder] = {
    "bp": bp_report,
    "dis": dissociation_report,
    "ae": adverse_report,
    "mis": misuse_report,
    "stock": stock_report,
}
NO_QUANTITIES: dict[str, Any] = {"expected_quantity": None, "actual_quantity": None, "unit": None}
ACK_WITHIN = {
    "critical": timedelta(minutes=15),
    "urgent": timedelta(minutes=60),
    "high": timedelta(hours=24),
}
# Rules that set their own acknowledgement minutes (migration 0009): the pre-dose hold
# and every critical rule; the others take their severity's.
ACK_MINUTES = {
    "bp-pre-dose-hold": 5,
    "bp-hypertensive-crisis": 5,
    "target-organ-symptom": 5,
    "respiratory-depression": 5,
    "sedation-loss-of-consciousness": 5,
    "suicidal-behaviour": 5,
    "serious-adverse-event": 10,
    "controlled-substance-theft-or-loss": 10,
}
TOLERANCE = timedelta(seconds=5)
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
    minutes = ACK_MINUTES.get(alert["rule_id"])
    expected = ACK_WITHIN.get(alert["severity"]) if minutes is None else timedelta(minutes=minutes)
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
    elif rule_id in REPORT_GROUPED:
        assert (alert["group_by"], alert["group_key"]) == ("report", report_id)
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
SYMPTOMS = [
    "severe_headache",
    "chest_pain",
    "shortness_of_breath",
    "visual_change",
    "neurological_deficit",
    "confusion",
    "seizure",
]
PRE = "pre_dose"
# Each patient kind, with what makes it a report that raises nothing on its own.
PATIENT_KINDS: list[tuple[str, dict[str, Any]]] = [
    ("bp", {"systolic": 120, "diastolic": 80}),
    ("dis", {}),
    ("mis", {}),
    ("ae", {"category": "other", "verbatim_term": "Chest tightness"}),
]
# Death among the seriousness criteria needs outcome fatal (and fatal needs death).
FATAL_IF_DEATH: dict[str, dict[str, Any]] = {"death": {"outcome": "fatal"}}


def cssrs(*yes: int) -> dict[str, bool]:
    """The C-SSRS screener's answers: the questions named are yes, the others no."""
    return {f"q{n}": n in yes for n in range(1, 7)}


def suicidality(**fields: Any) -> dict[str, Any]:
    return {"category": "suicidality", "verbatim_term": "Says life is not worth it", **fields}


def vomiting(moaa_s: int) -> dict[str, Any]:
    return {"category": "vomiting", "verbatim_term": "Vomited in the chair", "moaa_s": moaa_s}


def emergence(rescue: bool, transfer: bool) -> dict[str, Any]:
    return {
        "category": "emergence_reaction",
        "verbatim_term": "Agitated and frightened on waking",
        "rescue_medication": rescue,
        "ed_transfer": transfer,
    }


def urological(*symptoms: str) -> dict[str, Any]:
    return {
        "category": "urological",
        "verbatim_term": "Burning on passing urine",
        "urological_symptoms": list(symptoms),
    }


def iv_dose(dose_mg: float, weight_kg: float, **fields: Any) -> dict[str, Any]:
    return {"drug": "ketamine_iv", "dose_mg": dose_mg, "weight_kg": weight_kg, **fields}


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
        case("bp", {HOLD, SEVERE}, "hold-and-severe", phase=PRE, systolic=200, diastolic=125),
        # On any kind that carries a pre-dose pressure.
        case("dis", {HOLD}, "hold-on-dissociation", phase=PRE, systolic=141, diastolic=80),
        case("dis", set(), "hold-on-dissociation-140-no", phase=PRE, systolic=140, diastolic=80),
    ],
    # CTCAE grade 3: 160/100, below 180/110 (markedly abnormal and beyond).
    "ctcae-grade-3": [
        case("bp", set(), "g3-159/99-no", systolic=159, diastolic=99),
        case("bp", {G3}, "g3-160/80", systolic=160, diastolic=80),
        case("bp", {G3}, "g3-150/100", systolic=150, diastolic=100),
        case("bp", {G3}, "g3-179/109", systolic=179, diastolic=109),
        case("ae", {FALL, G3}, "g3-on-adverse-event", systolic=165, diastolic=90),
    ],
    # Markedly abnormal: diastolic 110-119 with systolic below 180.
    "markedly-abnormal": [
        case("bp", {MARKED}, "marked-170/110", systolic=170, diastolic=110),
        case("bp", {G3}, "marked-170/109-g3", systolic=170, diastolic=109),
        case("bp", {MARKED}, "marked-179/119", systolic=179, diastolic=119),
        case("bp", {SEVERE}, "marked-179/120-severe", systolic=179, diastolic=120),
        case("bp", {SEVERE}, "marked-180/110-severe", systolic=180, diastolic=110),
        case("dis", {MARKED}, "marked-on-dissociation", systolic=150, diastolic=112),
    ],
    # Severe hypertension (ACC/AHA 2017): 180 or 120 without a target-organ symptom.
    "severe-hypertension": [
        case("bp", {SEVERE}, "severe-180/100", systolic=180, diastolic=100),
        case("bp", {G3}, "severe-179/100-g3", systolic=179, diastolic=100),
        case("bp", {SEVERE}, "severe-150/120", systolic=150, diastolic=120),
        case("bp", {MARKED}, "severe-150/119-marked", systolic=150, diastolic=119),
        case("bp", {SEVERE}, "severe-190/100", systolic=190, diastolic=100),
        case("bp", {SEVERE}, "severe-empty-symptoms", systolic=185, diastolic=100, symptoms=[]),
        case("dis", {SEVERE}, "severe-on-dissociation", systolic=185, diastolic=100),
        case("mis", {SEVERE}, "severe-on-misuse-concern", systolic=150, diastolic=120),
    ],
    # Hypertensive emergency: 180 or 120 with a target-organ symptom.
    "hypertensive-crisis": [
        case(
            "bp", {CRISIS}, "crisis-180/100", systolic=180, diastolic=100, symptoms=["chest_pain"]
        ),
        case(
            "bp",
            {G3, TARGET},
            "crisis-179/100-target-organ",
            systolic=179,
            diastolic=100,
            symptoms=["chest_pain"],
        ),
        case("bp", {CRISIS}, "crisis-170/120", systolic=170, diastolic=120, symptoms=["seizure"]),
        case(
            "bp",
            {MARKED, TARGET},
            "crisis-170/119-target-organ",
            systolic=170,
            diastolic=119,
            symptoms=["seizure"],
        ),
        case(
            "bp",
            {CRISIS},
            "crisis-symptoms-180/110",
            systolic=180,
            diastolic=110,
            symptoms=["visual_change", "confusion"],
        ),
        case(
            "bp",
            {HOLD, CRISIS},
            "crisis-pre-dose",
            phase=PRE,
            systolic=200,
            diastolic=125,
            symptoms=["severe_headache"],
        ),
    ],
    # A target-organ symptom below 180/120: critical, an event of its own.
    "target-organ-symptom": [
        *(
            case("bp", {TARGET}, f"target-organ-{s}", systolic=118, diastolic=76, symptoms=[s])
            for s in SYMPTOMS
        ),
        case(
            "bp",
            {G3, TARGET},
            "target-organ-g3",
            systolic=165,
            diastolic=95,
            symptoms=["chest_pain"],
        ),
        case("bp", set(), "no-symptoms-empty-list", systolic=120, diastolic=80, symptoms=[]),
    ],
    # Hypotension: below 90/60 high; below 80 systolic or syncope urgent.
    "hypotension": [
        case("bp", {HYPO}, "hypo-89/70", systolic=89, diastolic=70),
        case("bp", set(), "hypo-90/70-no", systolic=90, diastolic=70),
        case("bp", {HYPO}, "hypo-110/59", systolic=110, diastolic=59),
        case("bp", set(), "hypo-110/60-no", systolic=110, diastolic=60),
        case("bp", {HYPO_SEVERE}, "hypo-79/50-severe", systolic=79, diastolic=50),
        case("bp", {HYPO}, "hypo-80/50", systolic=80, diastolic=50),
        case("bp", {HYPO_SEVERE}, "syncope-normal-bp", systolic=120, diastolic=80, syncope=True),
        case("bp", set(), "no-syncope-no", systolic=120, diastolic=80, syncope=False),
        case("bp", {HYPO_SEVERE}, "syncope-and-hypo", systolic=85, diastolic=55, syncope=True),
        # The review's example: 70/40 with a pulse of 38 was grade 0 and raised nothing.
        case(
            "bp",
            {HYPO_SEVERE, HR_SEVERE},
            "review-70/40-pulse-38",
            systolic=70,
            diastolic=40,
            pulse=38,
        ),
        case("dis", {HYPO}, "hypo-on-dissociation", systolic=85, diastolic=55),
        case("ae", {FALL, HYPO_SEVERE}, "syncope-on-adverse-event", syncope=True),
        case("dis", {HYPO_SEVERE}, "syncope-without-pressure", syncope=True),
    ],
    # Heart rate: below 50 or above 130 high; below 40 or above 150 urgent.
    "heart-rate": [
        case("bp", {HR}, "pulse-49", pulse=49),
        case("bp", set(), "pulse-50-no", pulse=50),
        case("bp", set(), "pulse-130-no", pulse=130),
        case("bp", {HR}, "pulse-131", pulse=131),
        case("bp", {HR_SEVERE}, "pulse-39", pulse=39),
        case("bp", {HR}, "pulse-40", pulse=40),
        case("bp", {HR}, "pulse-150", pulse=150),
        case("bp", {HR_SEVERE}, "pulse-151", pulse=151),
        case("ae", {FALL, HR_SEVERE}, "pulse-151-on-adverse-event", pulse=151),
        case("mis", {HR}, "pulse-45-on-misuse-concern", pulse=45),
        case("dis", set(), "pulse-72-on-dissociation-no", pulse=72),
    ],
    # Breathing: RR below 10 or SpO2 below 94 high; RR below 8, SpO2 below 90 or
    # respiratory depression observed critical.
    "breathing": [
        case("dis", {BREATHING}, "rr-9", respiratory_rate=9),
        case("dis", set(), "rr-10-no", respiratory_rate=10),
        case("dis", {RESP}, "rr-7", respiratory_rate=7),
        case("dis", {BREATHING}, "rr-8", respiratory_rate=8),
        case("dis", {BREATHING}, "spo2-93", spo2=93),
        case("dis", set(), "spo2-94-no", spo2=94),
        case("dis", {RESP}, "spo2-89", spo2=89),
        case("dis", {BREATHING}, "spo2-90", spo2=90),
        case("dis", {RESP}, "respiratory-depression", respiratory_depression=True, spo2=97),
        case("dis", {RESP}, "respiratory-depression-and-93", respiratory_depression=True, spo2=93),
        case("ae", {FALL, RESP}, "spo2-88-on-adverse-event", spo2=88),
        case("bp", {BREATHING}, "rr-9-on-blood-pressure", respiratory_rate=9),
        case("mis", {BREATHING}, "spo2-93-on-misuse-concern", spo2=93),
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
    # Dissociation with CADSS above 4 is counted, not queued: the rule is disabled.
    "dissociation-present": [
        case("dis", set(), "cadss-5-not-queued", cadss_total=5),
        case("dis", set(), "cadss-92-not-queued", cadss_total=92),
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
            {LOC, RESP, UNRESOLVED},
            "dissociation-everything",
            moaa_s=0,
            spo2=80,
            cadss_total=40,
            resolved=False,
            minutes_after_dose=180,
        ),
    ],
    # Suicidality: C-SSRS Q4, Q5 or Q6 critical; Q1-Q3 or PHQ-9 item 9 of 1 or more high.
    "suicidality": [
        case("ae", set(), "cssrs-all-no", **suicidality(cssrs=cssrs())),
        *(case("ae", {IDEATION}, f"cssrs-q{q}", **suicidality(cssrs=cssrs(q))) for q in (1, 2, 3)),
        *(case("ae", {SUICIDAL}, f"cssrs-q{q}", **suicidality(cssrs=cssrs(q))) for q in (4, 5, 6)),
        case("ae", {SUICIDAL}, "cssrs-q1-q2-q3-q6", **suicidality(cssrs=cssrs(1, 2, 3, 6))),
        case("ae", set(), "phq9-0-no", **suicidality(phq9_item9=0)),
        case("ae", {IDEATION}, "phq9-1", **suicidality(phq9_item9=1)),
        case("ae", {IDEATION}, "phq9-3", **suicidality(phq9_item9=3)),
        case("ae", {IDEATION}, "phq9-1-cssrs-no", **suicidality(phq9_item9=1, cssrs=cssrs())),
        case("ae", {SUICIDAL}, "phq9-3-and-q4", **suicidality(phq9_item9=3, cssrs=cssrs(4))),
    ],
    # Emergence reaction: rescue medication high; transfer to an ED urgent.
    "emergence-reaction": [
        case("ae", set(), "emergence-neither-no", **emergence(False, False)),
        case("ae", {RESCUE}, "emergence-rescue", **emergence(True, False)),
        case("ae", {ED}, "emergence-ed-transfer", **emergence(False, True)),
        case("ae", {ED}, "emergence-rescue-and-ed", **emergence(True, True)),
    ],
    # Vomiting at MOAA/S 3 or less: urgent (aspiration); the sedation rules look at the
    # MOAA/S of any report, so they fire beside it.
    "vomiting": [
        case("ae", set(), "vomiting-moaa-s-5", **vomiting(5)),
        case("ae", set(), "vomiting-moaa-s-4", **vomiting(4)),
        case("ae", {VOMITING, SED3}, "vomiting-moaa-s-3", **vomiting(3)),
        case("ae", {VOMITING, SED1}, "vomiting-moaa-s-1", **vomiting(1)),
        case("ae", {VOMITING, LOC}, "vomiting-moaa-s-0", **vomiting(0)),
    ],
    # Falls, pregnancy exposure, and the category "other" (seriousness decides).
    "other-adverse-events": [
        case("ae", {FALL}, "fall"),
        case(
            "ae",
            {PREGNANCY},
            "pregnancy-exposure",
            category="pregnancy_exposure",
            verbatim_term="Positive pregnancy test at week 3",
        ),
        case("ae", set(), "other-no", category="other", verbatim_term="Metallic taste"),
    ],
    # Urological: dysuria, frequency or pelvic pain high; haematuria urgent.
    "urological": [
        *(
            case("ae", {URO}, f"urological-{s}", **urological(s))
            for s in ("dysuria", "frequency", "pelvic_pain")
        ),
        case("ae", {URO}, "urological-three", **urological("dysuria", "frequency", "pelvic_pain")),
        case("ae", {HAEMATURIA}, "urological-haematuria", **urological("haematuria")),
        case(
            "ae",
            {HAEMATURIA},
            "urological-dysuria-and-haematuria",
            **urological("dysuria", "haematuria"),
        ),
    ],
    # IV ketamine above 1.0 mg/kg or an infusion shorter than 40 minutes: high.
    "dose-off-protocol": [
        case("bp", set(), "iv-1.0-mg-per-kg-no", **iv_dose(70, 70)),
        case("bp", {DOSE}, "iv-1.01-mg-per-kg", **iv_dose(70.7, 70)),
        case("dis", set(), "iv-80.5-kg-exactly-1.0-no", **iv_dose(80.5, 80.5)),
        case("dis", {DOSE}, "iv-on-dissociation", **iv_dose(100, 70)),
        case("ae", {FALL, DOSE}, "iv-on-adverse-event", **iv_dose(100, 70)),
        case("dis", set(), "iv-infusion-40-no", **iv_dose(35, 70, infusion_minutes=40)),
        case("dis", {DOSE}, "iv-infusion-39", **iv_dose(35, 70, infusion_minutes=39)),
        case("dis", set(), "iv-no-dose-no", drug="ketamine_iv", weight_kg=70),
        case("dis", set(), "im-1.43-mg-per-kg-no", **iv_dose(100, 70, drug="ketamine_im")),
        case("bp", set(), "esketamine-84-mg-40-kg-no", dose_mg=84, weight_kg=40),
        case("mis", set(), "oral-4-mg-per-kg-no", drug="ketamine_oral", dose_mg=200, weight_kg=50),
    ],
    # Any seriousness flag, on any patient kind (death with outcome fatal).
    "serious-adverse-event": [
        *(
            case(
                kind,
                {SERIOUS},
                f"serious-{flag}-{kind}",
                seriousness=[flag],
                **FATAL_IF_DEATH.get(flag, {}),
                **extra,
            )
            for (kind, extra), flag in zip(
                PATIENT_KINDS * 2,
                [*SERIOUSNESS, "death", "hospitalization"],
                strict=True,
            )
        ),
        case(
            "bp",
            {SERIOUS, MARKED},
            "serious-and-marked",
            systolic=179,
            diastolic=115,
            seriousness=["hospitalization", "disability"],
        ),
    ],
    # A patient's misuse concern: DAST-10 of 3 or more high; one concern alone nothing.
    "misuse-concern": [
        case("mis", set(), "drug-seeking-no"),
        *(
            case("mis", set(), f"{concern}-no", concern_type=concern)
            for concern in (
                "patient_behaviour",
                "extra_dose_request",
                "patient_tampering",
                "positive_drug_screen",
            )
        ),
        case("mis", set(), "dast10-2-no", dast10_score=2),
        case("mis", {DAST}, "dast10-3", dast10_score=3),
        case("mis", {DAST}, "dast10-10", dast10_score=10),
        case(
            "mis",
            {DAST, SERIOUS},
            "dast10-and-serious",
            dast10_score=6,
            seriousness=["other_medically_important"],
        ),
    ],
    # Stock incidents: theft and loss critical (DEA), discrepancy high, staff diversion
    # urgent, tampered device high.
    "stock-incident": [
        case("stock", {THEFT}, "theft", incident_type="theft"),
        case("stock", {THEFT}, "loss", incident_type="loss"),
        case(
            "stock", {DISCREPANCY}, "inventory-discrepancy", incident_type="inventory_discrepancy"
        ),
        case(
            "stock",
            {DIVERSION},
            "suspected-staff-diversion",
            incident_type="suspected_staff_diversion",
            **NO_QUANTITIES,
        ),
        case(
            "stock", {TAMPERED}, "device-tampered", incident_type="device_tampered", **NO_QUANTITIES
        ),
        case(
            "stock",
            {TAMPERED},
            "device-tampered-with-lot",
            incident_type="device_tampered",
            expected_quantity=None,
            actual_quantity=1,
            unit="device",
            lot="LOT-42",
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
        moment = (BASE - timedelta(days=31 * i)).isoformat()
        # A stock incident names no patient; its time is when it was discovered.
        own = (
            {"discovered_at": moment}
            if c.kind == "stock"
            else {"patient_ref": patient, "occurred_at": moment}
        )
        body = make(c.kind, **{**own, **c.overrides})
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
    # Every enabled rule on one report fires in some case; the disabled one in none.
    assert covered == set(SEVERITY) - PATTERNS - DISABLED - SESSION_ONLY


async def test_default_rule_set_is_what_the_tests_expect(db: asyncpg.Connection[Any]) -> None:
    rows = await db.fetch(
        "SELECT id, version, severity, enabled, protected, definition FROM alert_rules"
    )
    assert {r["id"]: r["severity"] for r in rows} == SEVERITY
    assert {r["id"]: r["version"] for r in rows} == {r: default_version(r) for r in SEVERITY}
    assert {r["id"] for r in rows if not r["enabled"]} == DISABLED
    assert {r["id"] for r in rows if r["protected"]} == PROTECTED
    grouped = {r["id"] for r in rows if r["definition"]["group_by"] == "clinic"}
    assert grouped == CLINIC_GROUPED
    by_report = {r["id"] for r in rows if r["definition"]["group_by"] == "report"}
    assert by_report == REPORT_GROUPED
    assert {r["id"] for r in rows if r["definition"]["pattern"]} == PATTERNS
    assert {r["id"] for r in rows if r["definition"]["dea_deadlines"]} == {THEFT}
    # The cluster counts distinct patients; the other patterns count reports.
    counted = {
        r["id"]: r["definition"]["pattern"].get("count", "reports")
        for r in rows
        if r["definition"]["pattern"]
    }
    assert counted == {p: "patients" if p == CLUSTER else "reports" for p in PATTERNS}
    # Every version of every rule is kept, from 1 to the one in force.
    versions = await db.fetch("SELECT rule_id, version FROM alert_rule_versions")
    assert {(v["rule_id"], v["version"]) for v in versions} == {
        (rule_id, version)
        for rule_id in SEVERITY
        for version in range(1, default_version(rule_id) + 1)
    }


async def test_doses_off_the_label_are_refused_before_any_rule_runs(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    """The review's 560 mg of nasal esketamine (a typo for 56) is a 422, as is an IV
    ketamine dose without the weight the mg/kg rule needs."""
    typo = await post_report(client, nurse, make("bp", dose_mg=560))
    assert errors_of(typo) == [("dose_mg", "esketamine_dose")]
    no_weight = await post_report(client, nurse, make("dis", dose_mg=35))
    assert errors_of(no_weight) == [("weight_kg", "required")]
    assert await stored(db) == NOTHING
    report = await create_report(client, nurse, make("bp", dose_mg=56))
    assert await fired(db, report["id"]) == set()


# --- theft and loss: DEA deadlines ------------------------------------------------


DEA_CASES = [
    # incident, discovered_at, DEA notice due (the end of the next business day) and
    # Form 106 due (the end of the 45th day), in UTC: the clinic has no time zone.
    # Monday 19 January 2026 is Martin Luther King Jr. Day, a federal holiday.
    ("theft", "2026-01-15T12:00:00Z", "2026-01-16T23:59:59Z", "2026-03-01T23:59:59Z"),  # Thu
    ("loss", "2026-01-16T12:00:00Z", "2026-01-20T23:59:59Z", "2026-03-02T23:59:59Z"),  # Fri
    ("theft", "2026-01-17T08:00:00Z", "2026-01-20T23:59:59Z", "2026-03-03T23:59:59Z"),  # Sat
    ("loss", "2026-01-18T23:00:00Z", "2026-01-20T23:59:59Z", "2026-03-04T23:59:59Z"),  # Sun
    ("theft", "2026-01-19T07:30:00Z", "2026-01-20T23:59:59Z", "2026-03-05T23:59:59Z"),  # Mon
    ("theft", "2026-01-20T07:30:00Z", "2026-01-21T23:59:59Z", "2026-03-06T23:59:59Z"),  # Tue
    # Friday 10:00 at +01:00 is Friday 09:00 UTC.
    ("loss", "2026-01-16T10:00:00+01:00", "2026-01-20T23:59:59Z", "2026-03-02T23:59:59Z"),
]


async def test_theft_and_loss_carry_dea_deadlines(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    for incident, discovered_at, notice_due, form106_due in DEA_CASES:
        body = make("stock", incident_type=incident, discovered_at=discovered_at)
        report = await create_report(client, nurse, body)
        assert report["patient_ref"] is None
        alert = await db.fetchrow(
            "SELECT * FROM alerts WHERE rule_id = $1 AND status = 'open'", THEFT
        )
        assert alert is not None, discovered_at
        await assert_opened(db, alert, report["id"])
        assert alert["dea_notice_due"] == datetime.fromisoformat(notice_due), discovered_at
        assert alert["dea_form106_due"] == datetime.fromisoformat(form106_due), discovered_at
        assert alert["dea_clock_zone"] is None, discovered_at
        await resolve_all(db)


async def test_a_theft_stored_as_a_misuse_concern_still_fires_on_amendment(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    """A theft filed as a misuse concern before stock incidents existed keeps the rules
    it was created with: amended, it raises the theft alert with its DEA due dates."""
    refused = await post_report(client, nurse, make("mis", concern_type="theft"))
    assert ("concern_type", "use_stock_incident") in errors_of(refused)
    report = await create_report(client, nurse, make("mis", patient_ref="PT-L"))
    assert await fired(db, report["id"]) == set()
    # As a report stored before: its body rewritten to the theft of old (past the
    # append-only trigger, for this one statement).
    async with db.transaction():
        await db.execute("ALTER TABLE report_versions DISABLE TRIGGER report_versions_append_only")
        await db.execute(
            "UPDATE report_versions SET body = body || $2::jsonb WHERE report_id = $1::uuid",
            report["id"],
            {"concern_type": "theft", "expected_quantity": 10, "actual_quantity": 8, "unit": "ml"},
        )
        await db.execute("ALTER TABLE report_versions ENABLE TRIGGER report_versions_append_only")
    response = await amend(
        client, nurse, report["id"], {"reason": "count checked", "actual_quantity": 7}
    )
    assert response.status_code == 201, response.text
    amended = response.json()
    assert (amended["version"], amended["body"]["concern_type"]) == (2, "theft")
    assert await fired(db, report["id"]) == {THEFT}
    alert = await only_alert(db, THEFT)
    assert await links(db, alert["id"]) == {(report["id"], 2)}
    await assert_opened(db, alert, report["id"])
    # The misuse concern's time (Thursday 15 January, 12:00 UTC) is the discovery.
    assert alert["dea_notice_due"] == datetime(2026, 1, 16, 23, 59, 59, tzinfo=UTC)
    # A stock concern of old is no patient's misuse: it does not count for the patient.
    later = make("mis", patient_ref="PT-L", occurred_at="2026-01-20T12:00:00Z")
    (concern,) = await post_all(client, nurse, [later])
    assert await fired(db, concern) == set()
    assert await rule_alerts(db, MISUSE) == []


# --- patterns ---------------------------------------------------------------------


def high_bp(
    patient: str, days: float, clinic: str = "C1", minutes: float = 0, **overrides: Any
) -> dict[str, Any]:
    """Severe hypertension after the dose (urgent); a different patient per report keeps
    the patient pattern out of the way."""
    return make(
        "bp",
        clinic,
        patient_ref=patient,
        occurred_at=at(days, minutes),
        **{"systolic": 180, "diastolic": 100, **overrides},
    )


async def test_bp_cluster_fires_on_the_third_patient_within_7_days(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    first, second = await post_all(
        client, nurse, [high_bp("PT-A", 0), high_bp("PT-B", 3, systolic=210)]
    )
    assert await rule_alerts(db, CLUSTER) == []
    assert await fired(db, second) == {SEVERE}
    (third,) = await post_all(client, nurse, [high_bp("PT-C", 7, minutes=-1)])
    assert await fired(db, third) == {SEVERE, CLUSTER}
    alert = await only_alert(db, CLUSTER)
    assert alert["from_pattern"] is True
    assert alert["report_count"] == 3
    assert await links(db, alert["id"]) == {(first, 1), (second, 1), (third, 1)}
    await assert_opened(db, alert, third)
    # A fourth joins the open cluster alert and, the alert being urgent, renews it.
    (fourth,) = await post_all(client, nurse, [high_bp("PT-D", 8)])
    again = await only_alert(db, CLUSTER)
    assert again["id"] == alert["id"]
    assert again["report_count"] == 4
    assert (fourth, 1) in await links(db, alert["id"])
    assert await event_actions(db, alert["id"]) == ["opened", "renewed"]


async def test_bp_cluster_counts_systolic_180_only(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    await post_all(
        client,
        nurse,
        [
            high_bp("PT-A", 0),
            high_bp("PT-B", 1),
            high_bp("PT-C", 2, systolic=179, diastolic=119),
        ],
    )
    assert await rule_alerts(db, CLUSTER) == []


async def test_re_checks_of_one_patient_are_not_a_cluster(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    await post_all(
        client,
        nurse,
        [high_bp("PT-A", 0), high_bp("PT-A", 0, minutes=15), high_bp("PT-A", 0, minutes=30)],
    )
    assert await rule_alerts(db, CLUSTER) == []
    # Two patients, however many readings, are not three.
    await post_all(client, nurse, [high_bp("PT-B", 1)])
    assert await rule_alerts(db, CLUSTER) == []
    # A third patient makes the cluster, which holds every reading of the three.
    (third,) = await post_all(client, nurse, [high_bp("PT-C", 2)])
    alert = await only_alert(db, CLUSTER)
    assert alert["report_count"] == 5
    assert (third, 1) in await links(db, alert["id"])


async def test_pre_dose_readings_are_not_a_cluster(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    first, second, pre = await post_all(
        client,
        nurse,
        [high_bp("PT-A", 0), high_bp("PT-B", 1), high_bp("PT-C", 2, phase="pre_dose")],
    )
    assert await fired(db, pre) == {HOLD, SEVERE}
    assert await rule_alerts(db, CLUSTER) == []
    # The same patient after the dose counts.
    (post,) = await post_all(client, nurse, [high_bp("PT-C", 2, minutes=40)])
    alert = await only_alert(db, CLUSTER)
    assert await links(db, alert["id"]) == {(first, 1), (second, 1), (post, 1)}


async def test_bp_cluster_counts_readings_on_any_patient_kind(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    reading: dict[str, Any] = {"phase": "post_dose", "systolic": 185, "diastolic": 100}
    await post_all(
        client,
        nurse,
        [
            high_bp("PT-A", 0),
            make("dis", patient_ref="PT-B", occurred_at=at(1), **reading),
        ],
    )
    assert await rule_alerts(db, CLUSTER) == []
    (third,) = await post_all(
        client, nurse, [make("ae", patient_ref="PT-C", occurred_at=at(2), **reading)]
    )
    assert await fired(db, third) == {FALL, SEVERE, CLUSTER}


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


def discrepancy(days: float, minutes: float = 0) -> dict[str, Any]:
    return make("stock", incident_type="inventory_discrepancy", discovered_at=at(days, minutes))


async def test_pattern_of_discrepancies_fires_on_the_third_in_30_days(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    first, second = await post_all(client, nurse, [discrepancy(0), discrepancy(10)])
    assert await rule_alerts(db, DISCREPANCIES) == []
    assert await fired(db, second) == {DISCREPANCY}
    (third,) = await post_all(client, nurse, [discrepancy(30, minutes=-1)])
    assert await fired(db, third) == {DISCREPANCY, DISCREPANCIES}
    alert = await only_alert(db, DISCREPANCIES)
    assert alert["report_count"] == 3
    assert await links(db, alert["id"]) == {(first, 1), (second, 1), (third, 1)}
    await assert_opened(db, alert, third)


async def test_pattern_of_discrepancies_ignores_other_incidents_and_old_ones(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    await post_all(
        client,
        nurse,
        [
            discrepancy(0),
            make("stock", incident_type="theft", discovered_at=at(31)),
            make("stock", incident_type="loss", discovered_at=at(32)),
            discrepancy(30, minutes=1),
            discrepancy(31),
        ],
    )
    assert await rule_alerts(db, DISCREPANCIES) == []


def concern(patient: str, days: float, clinic: str = "C1", **overrides: Any) -> dict[str, Any]:
    return make("mis", clinic, patient_ref=patient, occurred_at=at(days), **overrides)


async def test_patient_misuse_fires_on_the_second_concern_within_90_days(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    (first,) = await post_all(client, nurse, [concern("PT-A", 0)])
    assert await fired(db, first) == set()
    second_body = concern("PT-A", 90, concern_type="positive_drug_screen")
    second_body["occurred_at"] = at(90, minutes=-1)
    (second,) = await post_all(client, nurse, [second_body])
    assert await fired(db, second) == {MISUSE}
    alert = await only_alert(db, MISUSE)
    assert (alert["group_by"], alert["group_key"]) == ("patient", "PT-A")
    assert alert["report_count"] == 2
    assert await links(db, alert["id"]) == {(first, 1), (second, 1)}
    await assert_opened(db, alert, second, patient_ref="PT-A")


async def test_patient_misuse_needs_90_days_the_same_patient_and_clinic(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    second_body = concern("PT-A", 90)
    second_body["occurred_at"] = at(90, minutes=1)
    await post_all(
        client,
        nurse,
        [
            concern("PT-A", 0),
            second_body,
            concern("PT-B", 100),
            concern("PT-C", 101),
            concern("PT-D", 102),
            concern("PT-D", 103, clinic="C2"),
        ],
    )
    assert await rule_alerts(db, MISUSE) == []


async def test_repeated_urgent_fires_on_the_second_for_one_patient(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    (first,) = await post_all(client, nurse, [high_bp("PT-A", 0)])
    assert await fired(db, first) == {SEVERE}
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
            make("dis", patient_ref="PT-A", occurred_at=at(3), cadss_total=30),  # not queued
            make("ae", patient_ref="PT-A", occurred_at=at(4)),  # a fall: high
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


async def test_stock_incidents_never_feed_patient_rules(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    """A stock incident names no patient: no rule grouped by patient runs on it or
    counts it, not even one on any kind whose condition it meets."""
    await db.execute(
        "INSERT INTO alert_rules (id, version, name, severity, description, guidance, enabled,"
        " definition) VALUES ('any-iv-ketamine', 1, 'IV ketamine', 'high', 'Any report of"
        " IV ketamine', 'Check the dose', true, $1)",
        {
            "kinds": [],
            "when": {"field": "drug", "op": "==", "value": "ketamine_iv"},
            "pattern": None,
            "group_by": "patient",
            "dea_deadlines": False,
        },
    )
    (urgent,) = await post_all(client, nurse, [high_bp("PT-A", 0)])
    thefts = await post_all(
        client,
        nurse,
        [
            make("stock", incident_type="theft", discovered_at=at(1)),
            make("stock", incident_type="loss", discovered_at=at(2)),
            make("stock", incident_type="suspected_staff_diversion", discovered_at=at(3)),
        ],
    )
    for theft in thefts:
        assert await fired(db, theft) <= CLINIC_GROUPED | REPORT_GROUPED
    assert await rule_alerts(db, REPEATED) == []
    assert await rule_alerts(db, "any-iv-ketamine") == []
    patient_alerts = await db.fetch("SELECT group_key FROM alerts WHERE group_by = 'patient'")
    assert [a["group_key"] for a in patient_alerts] == ["PT-A"]
    # The same rule fires on a patient's report of IV ketamine, and the patient's
    # second urgent event is counted with the first, the stock incidents between not.
    (sedated,) = await post_all(
        client, nurse, [make("dis", patient_ref="PT-A", occurred_at=at(4), moaa_s=1)]
    )
    assert await fired(db, sedated) == {SED1, "any-iv-ketamine", REPEATED}
    alert = await only_alert(db, REPEATED)
    assert await links(db, alert["id"]) == {(urgent, 1), (sedated, 1)}


async def test_stock_incidents_are_no_patients_for_a_distinct_patient_count(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    """A clinic pattern that counts distinct patients counts none for a stock incident,
    even when the incident meets its condition."""
    await db.execute(
        "INSERT INTO alert_rules (id, version, name, severity, description, guidance, enabled,"
        " definition) VALUES ('iv-patients', 1, 'IV ketamine patients', 'high', 'Two"
        " patients on IV ketamine', 'Check the doses', true, $1)",
        {
            "kinds": [],
            "when": {"field": "drug", "op": "==", "value": "ketamine_iv"},
            "pattern": {"min_count": 2, "window_days": 7, "count": "patients"},
            "group_by": "clinic",
            "dea_deadlines": False,
        },
    )
    first, stock = await post_all(
        client,
        nurse,
        [
            make("dis", patient_ref="PT-A", occurred_at=at(0)),
            make("stock", incident_type="loss", discovered_at=at(1)),
        ],
    )
    assert await fired(db, stock) == {THEFT}
    assert await rule_alerts(db, "iv-patients") == []
    (second,) = await post_all(client, nurse, [make("dis", patient_ref="PT-B", occurred_at=at(2))])
    alert = await only_alert(db, "iv-patients")
    assert await links(db, alert["id"]) == {(first, 1), (second, 1)}
    # Nor does a stock incident join or touch the open alert.
    await post_all(client, nurse, [make("stock", incident_type="loss", discovered_at=at(3))])
    assert await links(db, alert["id"]) == {(first, 1), (second, 1)}
    assert await event_actions(db, alert["id"]) == ["opened"]


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


async def test_clinic_grouped_rules_join_reports(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    tampered = {"incident_type": "device_tampered", **NO_QUANTITIES}
    first, second = await post_all(
        client,
        nurse,
        [make("stock", **tampered), make("stock", discovered_at=at(20), **tampered)],
    )
    alert = await only_alert(db, TAMPERED)
    assert alert["report_count"] == 2
    assert await links(db, alert["id"]) == {(first, 1), (second, 1)}
    assert await event_actions(db, alert["id"]) == ["opened", "matched"]


async def test_report_grouped_rules_never_join_reports(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    """Every theft or loss is an alert of its own, with its own DEA clocks, even while
    the first one's alert is open."""
    first, second = await post_all(
        client,
        nurse,
        [
            make("stock", incident_type="theft"),
            make("stock", incident_type="loss", discovered_at=at(20)),
        ],
    )
    alerts = await rule_alerts(db, THEFT)
    assert [await links(db, a["id"]) for a in alerts] == [{(first, 1)}, {(second, 1)}]
    for alert, report_id in zip(alerts, (first, second), strict=True):
        await assert_opened(db, alert, report_id)
        assert alert["report_count"] == 1
    # Each counts from its own discovery: Thursday 15 January (due Friday), and Sunday
    # 25 January (due Monday).
    assert [a["dea_notice_due"] for a in alerts] == [
        datetime(2026, 1, 16, 23, 59, 59, tzinfo=UTC),
        datetime(2026, 1, 26, 23, 59, 59, tzinfo=UTC),
    ]


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
        "UPDATE alert_rules SET version = version + 1, enabled = true,"
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


async def test_an_amendment_into_severe_hypertension_and_then_a_crisis(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    report = await create_report(client, nurse, grade3())
    response = await amend(client, nurse, report["id"], {"reason": "typo", "systolic": 190})
    assert response.status_code == 201, response.text
    g3 = await only_alert(db, G3)
    severe = await only_alert(db, SEVERE)
    assert await links(db, g3["id"]) == {(report["id"], 1)}
    assert await links(db, severe["id"]) == {(report["id"], 2)}
    assert await rule_alerts(db, CRISIS) == []
    response = await amend(
        client, nurse, report["id"], {"reason": "chest pain", "symptoms": ["chest_pain"]}
    )
    assert response.status_code == 201, response.text
    crisis = await only_alert(db, CRISIS)
    assert await links(db, crisis["id"]) == {(report["id"], 3)}
    assert await links(db, severe["id"]) == {(report["id"], 2)}


async def test_the_disabled_dissociation_rule_fires_at_its_boundary_when_enabled(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    """Counted, not queued by default; a network that wants the alert turns it on."""
    (off,) = await post_all(client, nurse, [make("dis", cadss_total=5)])
    assert await fired(db, off) == set()
    await db.execute("UPDATE alert_rules SET enabled = true WHERE id = $1", DISSOC)
    four, five = await post_all(
        client,
        nurse,
        [
            make("dis", patient_ref="PT-4", cadss_total=4),
            make("dis", patient_ref="PT-5", cadss_total=5),
        ],
    )
    assert await fired(db, four) == set()
    assert await fired(db, five) == {DISSOC}
    alert = await only_alert(db, DISSOC)
    assert alert["severity"] == "info"
    assert alert["ack_deadline"] is None
    # The score stays in the report as given.
    read = await client.get(f"/api/v1/reports/{off}", headers=nurse)
    assert read.json()["body"]["cadss_total"] == 5


# --- atomicity --------------------------------------------------------------------

BROKEN_DEFINITIONS = [
    pytest.param({"kinds": [], "when": {"bogus": 1}}, id="condition-rejected"),
    pytest.param({"kinds": ["nope"], "when": {"field": "x", "op": "empty"}}, id="bad-kind"),
]


async def add_broken_rule(db: asyncpg.Connection[Any], definition: dict[str, Any]) -> None:
    await db.execute(
        "INSERT INTO alert_rules (id, version, name, severity, description, guidance, enabled,"
        " definition) VALUES ('broken', 1, 'Broken', 'high', 'Rejected at evaluation', '-',"
        " true, $1)",
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
    assert await fired(db, retry.json()["id"]) == {SEVERE}


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
