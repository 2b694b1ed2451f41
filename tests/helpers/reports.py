"""Report bodies, posting reports and counting what was stored."""

from __future__ import annotations

from typing import Any


def bp_report(clinic: str = "C1", **overrides: Any) -> dict[str, Any]:
    """A valid blood-pressure report body; override any field."""
    body: dict[str, Any] = {
        "kind": "blood_pressure",
        "clinic": clinic,
        "patient_ref": "PT-001",
        "occurred_at": "2026-01-15T10:30:00+01:00",
        "drug": "esketamine_nasal",
        "outcome": "resolved",
        "phase": "post_dose",
        "systolic": 150,
        "diastolic": 92,
    }
    body.update(overrides)
    return body


def dissociation_report(clinic: str = "C1", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "dissociation",
        "clinic": clinic,
        "patient_ref": "PT-002",
        "occurred_at": "2026-01-15T11:00:00Z",
        "drug": "ketamine_iv",
        "outcome": "resolved",
        "moaa_s": 4,
        "severity": "mild",
        "resolved": True,
        "respiratory_depression": False,
    }
    body.update(overrides)
    return body


def misuse_report(clinic: str = "C1", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "misuse_concern",
        "clinic": clinic,
        "patient_ref": "PT-003",
        "occurred_at": "2026-01-15T12:00:00+00:00",
        "drug": "ketamine_im",
        "outcome": "unknown",
        "concern_type": "theft",
        "description": "Two vials missing from the locked cabinet.",
        "expected_quantity": 10,
        "actual_quantity": 8,
        "unit": "ml",
    }
    body.update(overrides)
    return body
