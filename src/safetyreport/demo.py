"""Demo data for `safetyreport serve --demo`: one clinic, one user per role, a few reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from safetyreport.audit.chain import SYSTEM_CLI
from safetyreport.auth.permissions import Role
from safetyreport.auth.users import add_clinic, add_user, principal_by_username
from safetyreport.caller import Caller
from safetyreport.db.pool import Conn
from safetyreport.reports.service import insert_report
from safetyreport.reports.validation import validate_report
from safetyreport.settings import AlertSettings

DEMO_CLINIC = ("DEMO", "Demo Ketamine Clinic")
# Demo only: printed at start-up so a newcomer can log in. Never use these elsewhere.
DEMO_USERS: tuple[tuple[str, Role, str], ...] = (
    ("nurse", "nurse", "demo-lilac-harbour-7"),
    ("officer", "safety_officer", "demo-copper-lantern-4"),
    ("auditor", "auditor", "demo-quiet-meadow-9"),
    ("admin", "admin", "demo-silver-compass-2"),
)


def _demo_reports(now: datetime) -> list[dict[str, Any]]:
    common = {"clinic": DEMO_CLINIC[0], "drug": "esketamine_nasal", "outcome": "resolved"}
    return [
        {
            **common,
            "kind": "blood_pressure",
            "patient_ref": "PT-0001",
            "phase": "pre_dose",
            "occurred_at": (now - timedelta(hours=3)).isoformat(),
            "systolic": 128,
            "diastolic": 82,
        },
        {
            **common,
            "kind": "blood_pressure",
            "patient_ref": "PT-0001",
            "phase": "post_dose",
            "occurred_at": (now - timedelta(hours=2, minutes=20)).isoformat(),
            "systolic": 168,
            "diastolic": 96,
            "minutes_after_dose": 40,
            "dose_mg": 56,
        },
        {
            **common,
            "kind": "dissociation",
            "patient_ref": "PT-0002",
            "moaa_s": 4,
            "cadss_total": 9,
            "severity": "moderate",
            "resolved": True,
            "respiratory_depression": False,
            "spo2": 97,
            "occurred_at": (now - timedelta(hours=1)).isoformat(),
            "minutes_after_dose": 35,
        },
        {
            **common,
            "kind": "adverse_event",
            "patient_ref": "PT-0004",
            "category": "vomiting",
            "verbatim_term": "Vomited once in the chair, alert and talking",
            "moaa_s": 5,
            "outcome": "resolved",
            "pulse": 88,
            "spo2": 98,
            "occurred_at": (now - timedelta(minutes=50)).isoformat(),
            "minutes_after_dose": 25,
            "dose_mg": 84,
        },
        {
            **common,
            "kind": "misuse_concern",
            "patient_ref": "PT-0003",
            "outcome": "unknown",
            "concern_type": "extra_dose_request",
            "description": "Asked twice for a fourth device after the 84 mg dose.",
            "occurred_at": (now - timedelta(minutes=40)).isoformat(),
        },
        {
            # The clinic's stock, not a patient: no patient reference, seriousness or outcome.
            "clinic": DEMO_CLINIC[0],
            "kind": "stock_incident",
            "drug": "ketamine_iv",
            "incident_type": "inventory_discrepancy",
            "description": "End-of-day count short by one vial.",
            "expected_quantity": 10,
            "actual_quantity": 9,
            "unit": "ml",
            "discovered_at": (now - timedelta(minutes=30)).isoformat(),
        },
    ]


async def seed(conn: Conn, alert_settings: AlertSettings) -> bool:
    """Create the demo data unless the demo clinic exists; True when it was created."""
    if await conn.fetchval("SELECT 1 FROM clinics WHERE code = $1", DEMO_CLINIC[0]):
        return False
    await add_clinic(conn, DEMO_CLINIC[0], DEMO_CLINIC[1], SYSTEM_CLI)
    for username, role, password in DEMO_USERS:
        await add_user(
            conn,
            username=username,
            password=password,
            role=role,
            clinics=[DEMO_CLINIC[0]],
            all_clinics=False,
            actor=SYSTEM_CLI,
        )
    nurse = await principal_by_username(conn, "nurse")
    assert nurse is not None
    for raw in _demo_reports(datetime.now(UTC)):
        body = validate_report(raw, skew=timedelta(0))
        async with conn.transaction():
            await insert_report(conn, Caller(nurse, "demo-seed"), body, alert_settings)
    return True
