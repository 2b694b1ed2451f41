"""A patient's timeline: their treatment sessions (opened, dosed, observed, discharged),
reports and alerts in time order, with the doses summed over the last 30, 90 and 365
days. Linked across clinics by ``network_ref`` (patients/course.py); a caller sees the
part at the clinics they are granted, and ``complete`` says whether that is all of it.
Audited as a read in the chain of each clinic whose entries it showed.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
import msgspec

from safetyreport.auth.users import Principal
from safetyreport.caller import Caller
from safetyreport.db.pool import Conn
from safetyreport.errors import NotFound
from safetyreport.patients.course import LINKED_IDS
from safetyreport.reports.types import dose_mg_per_kg

# The summary's windows, in days before now.
WINDOWS_DAYS = (30, 90, 365)
VITALS = ("systolic", "diastolic", "pulse", "respiratory_rate", "spo2", "moaa_s", "cadss_total")

EntryType = Literal["session", "dose", "observation", "discharge", "report", "alert"]


class Entry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One thing that happened: ``type`` says which, ``id`` is the session's, the
    observation's, the report's or the alert's."""

    at: datetime
    type: EntryType
    clinic: str
    id: uuid.UUID
    patient_ref: str | None = None
    session_id: uuid.UUID | None = None
    drug: str | None = None
    network_ref: str | None = None
    weight_kg: float | None = None
    dose_mg: float | None = None
    dose_mg_per_kg: float | None = None
    lot: str | None = None
    infusion_minutes: int | None = None
    minutes_after_dose: int | None = None
    # An observation's vital signs, or the readings at discharge (and its escort).
    vitals: dict[str, Any] | None = None
    kind: str | None = None
    rule: str | None = None
    severity: str | None = None
    status: str | None = None


class Window(msgspec.Struct, frozen=True):
    days: int
    # Dosed sessions whose dose falls in the last ``days`` days, and their mg summed.
    sessions: int
    dose_mg: float


class Timeline(msgspec.Struct, frozen=True, kw_only=True):
    patient_ref: str
    as_of: datetime
    # The clinics whose part is shown; false when a linked part at a clinic the caller
    # is not granted is left out.
    clinics: list[str]
    complete: bool
    summary: list[Window]
    entries: list[Entry]


_SESSIONS = (
    LINKED_IDS
    + """
SELECT s.id, c.code AS clinic, s.clinic_id, s.patient_ref, s.drug, s.weight_kg, s.network_ref,
       s.dose_mg, s.dosed_at, s.lot, s.infusion_minutes, s.discharged_at, s.discharge,
       s.created_at
FROM treatment_sessions s JOIN ids USING (clinic_id, patient_ref)
JOIN clinics c ON c.id = s.clinic_id
"""
)
_OBSERVATIONS = """
SELECT o.id, o.session_id, o.observed_at, o.vitals FROM session_observations o
WHERE o.session_id = ANY($1::uuid[])
"""
_REPORTS = (
    LINKED_IDS
    + """
SELECT r.id, c.code AS clinic, r.clinic_id, r.patient_ref, r.kind, r.occurred_at,
       (v.body ->> 'session_id')::uuid AS session_id
FROM reports r JOIN ids USING (clinic_id, patient_ref)
JOIN report_versions v ON v.report_id = r.id AND v.version = r.current_version
JOIN clinics c ON c.id = r.clinic_id
"""
)
# The alerts of the patient (grouped by them) and those linked to their sessions or reports:
# each part through its index (a patient's alerts: alerts_patient_idx), not one OR over
# every alert.
_ALERTS = """
SELECT a.id, c.code AS clinic, a.clinic_id, a.rule_id, a.severity, a.status, a.first_seen_at
FROM alerts a JOIN clinics c ON c.id = a.clinic_id
WHERE a.id IN (
    SELECT p.id FROM unnest($1::bigint[], $2::text[]) AS ids (clinic_id, patient_ref)
    JOIN alerts p ON p.clinic_id = ids.clinic_id AND p.group_key = ids.patient_ref
    WHERE p.group_by = 'patient'
    UNION
    SELECT alert_id FROM alert_session_readings WHERE session_id = ANY($3::uuid[])
    UNION
    SELECT alert_id FROM alert_reports WHERE report_id = ANY($4::uuid[])
)
"""


def _session_entries(row: asyncpg.Record) -> list[Entry]:
    base = {"clinic": row["clinic"], "session_id": row["id"], "id": row["id"]}
    entries = [
        Entry(
            at=row["created_at"],
            type="session",
            patient_ref=row["patient_ref"],
            drug=row["drug"],
            network_ref=row["network_ref"],
            weight_kg=row["weight_kg"],
            **base,
        )
    ]
    if row["dosed_at"] is not None:
        entries.append(
            Entry(
                at=row["dosed_at"],
                type="dose",
                drug=row["drug"],
                dose_mg=row["dose_mg"],
                dose_mg_per_kg=dose_mg_per_kg(row["dose_mg"], row["weight_kg"]),
                lot=row["lot"],
                infusion_minutes=row["infusion_minutes"],
                **base,
            )
        )
    if row["discharged_at"] is not None:
        discharge: dict[str, Any] = row["discharge"]
        shown = ("moaa_s", "systolic", "diastolic", "escort")
        entries.append(
            Entry(
                at=row["discharged_at"],
                type="discharge",
                vitals={k: discharge[k] for k in shown if discharge.get(k) is not None},
                **base,
            )
        )
    return entries


def _minutes_after(dosed_at: datetime | None, at: datetime) -> int | None:
    if dosed_at is None or at < dosed_at:
        return None
    return int((at - dosed_at).total_seconds() // 60)


def summarize(doses: list[tuple[datetime, float]], as_of: datetime) -> list[Window]:
    """The dosed sessions and their mg in each window (as_of - days, as_of]."""
    windows = []
    for days in WINDOWS_DAYS:
        since = as_of - timedelta(days=days)
        within = [mg for at, mg in doses if since < at <= as_of]
        windows.append(Window(days=days, sessions=len(within), dose_mg=round(sum(within), 3)))
    return windows


_KNOWN = """
SELECT EXISTS (SELECT 1 FROM treatment_sessions WHERE clinic_id = ANY($1) AND patient_ref = $2)
    OR EXISTS (SELECT 1 FROM reports WHERE clinic_id = ANY($1) AND patient_ref = $2)
"""


async def patient_is_known(conn: Conn, principal: Principal, patient_ref: str) -> bool:
    """Whether the patient has a session or a report at one of the principal's clinics
    (as ``timeline`` would find them): the patient page is a 404 otherwise."""
    known: bool = await conn.fetchval(_KNOWN, sorted(principal.clinic_ids.values()), patient_ref)
    return known


async def timeline(conn: Conn, caller: Caller, patient_ref: str) -> Timeline:
    """The patient's timeline as the caller may see it; NotFound when the patient has no
    session or report at the caller's clinics."""
    granted = caller.principal.clinic_ids
    seed = sorted(granted.values())
    as_of = datetime.now(UTC)
    sessions = await conn.fetch(_SESSIONS, seed, patient_ref)
    reports = await conn.fetch(_REPORTS, seed, patient_ref)
    linked_clinics = {r["clinic_id"] for r in [*sessions, *reports]}
    visible = set(granted.values())
    sessions = [s for s in sessions if s["clinic_id"] in visible]
    reports = [r for r in reports if r["clinic_id"] in visible]
    if not sessions and not reports:
        raise NotFound(f"no patient {patient_ref} at your clinics")
    session_ids = [s["id"] for s in sessions]
    dosed_at = {s["id"]: s["dosed_at"] for s in sessions}
    pairs = sorted({(r["clinic_id"], r["patient_ref"]) for r in [*sessions, *reports]})
    alerts = [
        a
        for a in await conn.fetch(
            _ALERTS,
            [c for c, _ in pairs],
            [p for _, p in pairs],
            session_ids,
            [r["id"] for r in reports],
        )
        if a["clinic_id"] in visible
    ]
    clinic_of = {s["id"]: s["clinic"] for s in sessions}
    entries = [e for s in sessions for e in _session_entries(s)]
    entries += [
        Entry(
            at=o["observed_at"],
            type="observation",
            clinic=clinic_of[o["session_id"]],
            id=o["id"],
            session_id=o["session_id"],
            minutes_after_dose=_minutes_after(dosed_at[o["session_id"]], o["observed_at"]),
            vitals={k: o["vitals"][k] for k in VITALS if k in o["vitals"]},
        )
        for o in await conn.fetch(_OBSERVATIONS, session_ids)
    ]
    entries += [
        Entry(
            at=r["occurred_at"],
            type="report",
            clinic=r["clinic"],
            id=r["id"],
            patient_ref=r["patient_ref"],
            session_id=r["session_id"],
            kind=r["kind"],
        )
        for r in reports
    ]
    entries += [
        Entry(
            at=a["first_seen_at"],
            type="alert",
            clinic=a["clinic"],
            id=a["id"],
            rule=a["rule_id"],
            severity=a["severity"],
            status=a["status"],
        )
        for a in alerts
    ]
    entries.sort(key=lambda e: (e.at, e.type, str(e.id)))
    clinics = sorted({e.clinic for e in entries})

    def shown(clinic: str | None) -> dict[str, Any]:
        mine = [e for e in entries if e.clinic == clinic]
        return {
            "patient_ref": patient_ref,
            "session_ids": sorted({str(e.session_id) for e in mine if e.type == "session"}),
            "report_ids": sorted(str(e.id) for e in mine if e.type == "report"),
            "alert_ids": sorted(str(e.id) for e in mine if e.type == "alert"),
        }

    await caller.audit_each_clinic(
        conn,
        clinics,
        "patient.timeline_read",
        object_type="patient",
        object_id=patient_ref,
        details_for=shown,
    )
    doses = [(s["dosed_at"], s["dose_mg"]) for s in sessions if s["dosed_at"] is not None]
    return Timeline(
        patient_ref=patient_ref,
        as_of=as_of,
        clinics=clinics,
        complete=linked_clinics <= visible,
        summary=summarize(doses, as_of),
        entries=entries,
    )
