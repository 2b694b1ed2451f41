"""Treatment sessions: opening one with its pre-dose checklist, the dose, the timed
observations, the discharge, reading and listing. Every write is audited in the clinic's
chain in the request's transaction, as reports are.

The checklist's blood pressure, each observation, the dose and the discharge reading run
through the rule engine of reports (alerts/evaluate.py) with the facts a report carrying
the same values would give (``_reading_facts``): the same rules, the same thresholds. A
reading is evaluated as a ``blood_pressure`` report when it carries a pressure and as a
``dissociation`` report otherwise; every default rule on vital signs applies to any kind.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from safetyreport.alerts import queue
from safetyreport.alerts.evaluate import StoredReport, evaluate_report, facts_of, rules_in_force
from safetyreport.alerts.raised import RaisedAlert, raised_alerts
from safetyreport.amendments import changed_fields, reason_and_changes
from safetyreport.auth.users import Principal
from safetyreport.caller import Caller
from safetyreport.db.pool import Conn
from safetyreport.db.query import Where
from safetyreport.errors import Conflict, FieldError, NotFound, ValidationFailed
from safetyreport.ids import new_id
from safetyreport.pagination import decode_cursor, encode_cursor
from safetyreport.patients.course import course_facts
from safetyreport.rems import service as rems
from safetyreport.reports.grading import hypertension_reading_grade
from safetyreport.reports.types import dose_mg_per_kg
from safetyreport.sessions.criteria import Discharge, unmet_criteria
from safetyreport.sessions.types import (
    VITALS,
    DischargeBody,
    DoseBody,
    ObservationBody,
    SessionCreate,
)
from safetyreport.sessions.validation import validate_dose, validate_observation, validate_session
from safetyreport.settings import AlertSettings
from safetyreport.times import require_utc

_canonical = msgspec.json.Encoder(order="sorted")
_encoder = msgspec.json.Encoder()


class ObservationView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    id: uuid.UUID
    session_id: uuid.UUID
    observed_at: datetime
    # Whole minutes after the dose; null for a reading taken before it.
    minutes_after_dose: int | None = None
    systolic: int | None = None
    diastolic: int | None = None
    pulse: int | None = None
    respiratory_rate: int | None = None
    spo2: int | None = None
    moaa_s: int | None = None
    cadss_total: int | None = None
    created_at: datetime
    created_by: str
    # 1 as recorded, one more for each amendment.
    version: int
    # On the single-session view: every version, the first as recorded.
    versions: list[ObservationVersionView] | None = None
    # Only in the answer to recording it: the alerts it raised or joined.
    alerts: list[RaisedAlert] | None = None


class ObservationVersionView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    version: int
    observed_at: datetime
    vitals: dict[str, Any]
    # Why it was amended (none for the first version).
    reason: str | None = None
    changed_by: str
    changed_at: datetime


class SessionVersionView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    version: int
    # opened, dosed, discharged, amended (migrated: the state when versions began).
    change: str
    # The session's fields after the change.
    state: dict[str, Any]
    reason: str | None = None
    changed_by: str
    changed_at: datetime


class SessionView(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    clinic: str
    patient_ref: str
    drug: str
    weight_kg: float | None
    age_band: str | None
    prescriber: str | None
    checklist: dict[str, Any]
    dose_mg: float | None
    # Derived from dose_mg and weight_kg (two decimals), as for reports.
    dose_mg_per_kg: float | None
    dosed_at: datetime | None
    lot: str | None
    infusion_minutes: int | None
    # The reason recorded when the dose was given despite an open hold.
    dose_override_reason: str | None
    discharged_at: datetime | None
    # moaa_s, systolic, diastolic, escort, override_reason and the criteria overridden.
    discharge: dict[str, Any] | None
    created_at: datetime
    created_by: str
    updated_at: datetime
    # On the single-session view and the answers to writes: every observation, in time order.
    observations: list[ObservationView] | None = None
    # Only in the answer to a write: the alerts it raised or joined.
    alerts: list[RaisedAlert] | None = None
    # The network's pseudonym linking the patient's sessions at several clinics.
    network_ref: str | None = None
    # The count of changes to the session (opening it is 1; the dose, the discharge and
    # each amendment add one).
    version: int = 1
    # On the single-session view: every version of the session, oldest first.
    versions: list[SessionVersionView] | None = None


class SessionPage(msgspec.Struct, frozen=True):
    items: list[SessionView]
    next_cursor: str | None


class SessionFilters(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    clinic: str | None = None
    patient_ref: str | None = None
    cursor: str | None = None
    limit: int = 50


def canonical_json(value: Any) -> bytes:
    return _canonical.encode(value)


def encode(view: msgspec.Struct) -> bytes:
    return _encoder.encode(view)


_SELECT = """
SELECT s.id, c.code AS clinic, s.clinic_id, s.patient_ref, s.drug, s.weight_kg, s.age_band,
       s.prescriber, s.checklist, s.dose_mg, s.dosed_at, s.lot, s.infusion_minutes,
       s.dose_override_reason, s.discharged_at, s.discharge, s.created_at,
       u.username AS created_by, s.updated_at, s.network_ref, s.version
FROM treatment_sessions s
JOIN clinics c ON c.id = s.clinic_id
JOIN users u ON u.id = s.created_by
"""
_SELECT_OBSERVATIONS = """
SELECT o.id, o.session_id, o.observed_at, o.vitals, o.created_at, u.username AS created_by,
       o.version
FROM session_observations o JOIN users u ON u.id = o.created_by
WHERE o.session_id = $1 ORDER BY o.observed_at, o.id
"""
_SELECT_VERSIONS = """
SELECT v.version, v.change, v.state, v.reason, u.username AS changed_by, v.changed_at
FROM treatment_session_versions v JOIN users u ON u.id = v.changed_by
WHERE v.session_id = $1 ORDER BY v.version
"""
_SELECT_OBSERVATION_VERSIONS = """
SELECT v.observation_id, v.version, v.observed_at, v.vitals, v.reason,
       u.username AS changed_by, v.changed_at
FROM session_observation_versions v
JOIN session_observations o ON o.id = v.observation_id
JOIN users u ON u.id = v.changed_by
WHERE o.session_id = $1 ORDER BY v.observation_id, v.version
"""
# Every change to a session's row adds a version holding the fields after it (the one
# list of what a version keeps; migration 0016 wrote the first versions with it too).
_RECORD_VERSION = """
WITH changed AS (
    UPDATE treatment_sessions SET version = version + 1, updated_at = now()
    WHERE id = $1 RETURNING *
)
INSERT INTO treatment_session_versions (session_id, version, change, state, reason, changed_by)
SELECT id, version, $2,
       jsonb_build_object(
           'weight_kg', weight_kg, 'age_band', age_band, 'prescriber', prescriber,
           'network_ref', network_ref, 'checklist', checklist, 'dose_mg', dose_mg,
           'dosed_at', dosed_at, 'lot', lot, 'infusion_minutes', infusion_minutes,
           'dose_override_reason', dose_override_reason,
           'discharged_at', discharged_at, 'discharge', discharge),
       $3, $4
FROM changed
RETURNING version
"""


async def _record_version(
    conn: Conn, session_id: uuid.UUID, change: str, caller: Caller, reason: str | None = None
) -> int:
    version: int = await conn.fetchval(
        _RECORD_VERSION, session_id, change, reason, caller.principal.id
    )
    return version


def _minutes_after(dosed_at: datetime | None, at: datetime) -> int | None:
    if dosed_at is None or at < dosed_at:
        return None
    return int((at - dosed_at).total_seconds() // 60)


def _observation_view(
    row: asyncpg.Record | dict[str, Any],
    dosed_at: datetime | None,
    versions: list[asyncpg.Record] | None = None,
) -> ObservationView:
    vitals: dict[str, Any] = row["vitals"]
    return ObservationView(
        id=row["id"],
        session_id=row["session_id"],
        observed_at=row["observed_at"],
        minutes_after_dose=_minutes_after(dosed_at, row["observed_at"]),
        created_at=row["created_at"],
        created_by=row["created_by"],
        version=row["version"],
        versions=None
        if versions is None
        else [
            ObservationVersionView(
                version=v["version"],
                observed_at=v["observed_at"],
                vitals=v["vitals"],
                reason=v["reason"],
                changed_by=v["changed_by"],
                changed_at=v["changed_at"],
            )
            for v in versions
        ],
        **{name: vitals.get(name) for name in VITALS},
    )


@dataclass(frozen=True, slots=True)
class _History:
    """What the single-session view shows beside the row."""

    observations: list[asyncpg.Record]
    versions: list[asyncpg.Record]
    observation_versions: dict[uuid.UUID, list[asyncpg.Record]]


async def _history(conn: Conn, session_id: uuid.UUID) -> _History:
    by_observation: dict[uuid.UUID, list[asyncpg.Record]] = {}
    for version in await conn.fetch(_SELECT_OBSERVATION_VERSIONS, session_id):
        by_observation.setdefault(version["observation_id"], []).append(version)
    return _History(
        observations=await conn.fetch(_SELECT_OBSERVATIONS, session_id),
        versions=await conn.fetch(_SELECT_VERSIONS, session_id),
        observation_versions=by_observation,
    )


def _view(row: asyncpg.Record, history: _History | None = None) -> SessionView:
    return SessionView(
        id=row["id"],
        clinic=row["clinic"],
        patient_ref=row["patient_ref"],
        drug=row["drug"],
        weight_kg=row["weight_kg"],
        age_band=row["age_band"],
        prescriber=row["prescriber"],
        checklist=row["checklist"],
        dose_mg=row["dose_mg"],
        dose_mg_per_kg=dose_mg_per_kg(row["dose_mg"], row["weight_kg"]),
        dosed_at=row["dosed_at"],
        lot=row["lot"],
        infusion_minutes=row["infusion_minutes"],
        dose_override_reason=row["dose_override_reason"],
        discharged_at=row["discharged_at"],
        discharge=row["discharge"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        updated_at=row["updated_at"],
        network_ref=row["network_ref"],
        version=row["version"],
        observations=None
        if history is None
        else [
            _observation_view(o, row["dosed_at"], history.observation_versions.get(o["id"], []))
            for o in history.observations
        ],
        versions=None
        if history is None
        else [SessionVersionView(**dict(v)) for v in history.versions],
    )


async def _load(
    conn: Conn, principal: Principal, session_id: uuid.UUID, *, lock: bool = False
) -> asyncpg.Record:
    """The session's row if the principal may see it; 404 otherwise (another clinic's too)."""
    if lock:
        await conn.execute("SELECT 1 FROM treatment_sessions WHERE id = $1 FOR UPDATE", session_id)
    row = await conn.fetchrow(_SELECT + " WHERE s.id = $1", session_id)
    if row is None or not principal.can_see(row["clinic_id"]):
        raise NotFound(f"no treatment session {session_id}")
    found: asyncpg.Record = row
    return found


async def _detail(conn: Conn, session_id: uuid.UUID, alerts: list[RaisedAlert]) -> SessionView:
    row = await conn.fetchrow(_SELECT + " WHERE s.id = $1", session_id)
    assert row is not None
    view = _view(row, await _history(conn, session_id))
    return msgspec.structs.replace(view, alerts=alerts)


@dataclass(frozen=True, slots=True)
class DoseContext:
    """What validating a dose needs of its session."""

    drug: str
    weight_kg: float | None


async def session_for_write(conn: Conn, caller: Caller, session_id: uuid.UUID) -> DoseContext:
    """The session (locked) if the caller may see it; 404 otherwise."""
    row = await _load(conn, caller.principal, session_id, lock=True)
    return DoseContext(drug=row["drug"], weight_kg=row["weight_kg"])


async def check_report_session(
    conn: Conn, session_id: uuid.UUID, clinic_id: int, patient_ref: str
) -> None:
    """A report's ``session_id`` must name a session of the report's clinic and patient;
    ValidationFailed otherwise (another clinic's session is not told apart from none)."""
    row = await conn.fetchrow(
        "SELECT clinic_id, patient_ref FROM treatment_sessions WHERE id = $1", session_id
    )
    if row is None or row["clinic_id"] != clinic_id:
        raise ValidationFailed.one(
            "session_id", "session", f"no treatment session {session_id} at this clinic"
        )
    if row["patient_ref"] != patient_ref:
        raise ValidationFailed.one("session_id", "same_patient", "the session is another patient's")


# --- the rules ---------------------------------------------------------------------------


def _reading_facts(session: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The body a report about this session carrying ``values`` would have: its clinic,
    patient, drug, age band and weight, and the values given (none left as null)."""
    body = {
        "clinic": session["clinic"],
        "patient_ref": session["patient_ref"],
        "drug": session["drug"],
        "age_band": session["age_band"],
        "weight_kg": session["weight_kg"],
        **values,
    }
    return {k: v for k, v in body.items() if v is not None}


# What the rules see of a reading (migration 0017): written again when an amendment
# corrects it.
_RECORD_READING = """
INSERT INTO session_readings (reading_id, session_id, reading, clinic_id, patient_ref, kind,
                              occurred_at, body, hypertension_reading_grade)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (reading_id) DO UPDATE
SET kind = excluded.kind, occurred_at = excluded.occurred_at, body = excluded.body,
    hypertension_reading_grade = excluded.hypertension_reading_grade, updated_at = now()
"""


async def _run_rules(
    conn: Conn,
    caller: Caller,
    *,
    session: dict[str, Any],
    reading: str,
    reading_id: uuid.UUID,
    at: datetime,
    values: dict[str, Any],
    settings: AlertSettings,
) -> list[RaisedAlert]:
    body = _reading_facts(session, values)
    systolic, diastolic = body.get("systolic"), body.get("diastolic")
    pressure = systolic is not None and diastolic is not None
    grade = (
        hypertension_reading_grade(systolic, diastolic, [])
        if systolic is not None and diastolic is not None
        else None
    )
    stored = StoredReport(
        id=reading_id,
        version=1,
        clinic_id=session["clinic_id"],
        kind="blood_pressure" if pressure else "dissociation",
        patient_ref=session["patient_ref"],
        occurred_at=at,
        body=body,
        reading_grade=grade,
        session_reading=(session["id"], reading),
    )
    # Stored first, as a report is before its rules run: the patterns count it.
    await conn.execute(
        _RECORD_READING,
        reading_id,
        session["id"],
        reading,
        stored.clinic_id,
        stored.patient_ref,
        stored.kind,
        at,
        body,
        grade,
    )
    outcome = await evaluate_report(
        conn,
        stored,
        actor=caller.principal.actor(),
        client_addr=caller.address,
        settings=settings,
    )
    return await raised_alerts(conn, outcome)


# The values each reading of a session gives the rules (opening it, an observation, the
# dose), whether first recorded or amended.


def _checklist_values(checklist: dict[str, Any]) -> dict[str, Any]:
    return {
        "phase": "pre_dose",
        "systolic": checklist["systolic"],
        "diastolic": checklist["diastolic"],
    }


def _observation_values(
    vitals: dict[str, Any], dosed_at: datetime | None, observed_at: datetime
) -> dict[str, Any]:
    """Post-dose once the dose is recorded and the reading follows it, else pre-dose (a
    recheck before dosing)."""
    minutes = _minutes_after(dosed_at, observed_at)
    return {
        **vitals,
        "phase": "pre_dose" if minutes is None else "post_dose",
        "minutes_after_dose": minutes,
    }


async def _dose_values(conn: Conn, row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """The dose as stored, with the protocol-frequency rule's facts (esketamine-frequency)."""
    return {
        "dose_mg": row["dose_mg"],
        "infusion_minutes": row["infusion_minutes"],
        **await course_facts(conn, row, row["dosed_at"]),
    }


# --- opening a session -------------------------------------------------------------------

_INSERT = """
INSERT INTO treatment_sessions (id, clinic_id, patient_ref, drug, weight_kg, age_band,
                                prescriber, checklist, created_by, network_ref)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""


async def open_session(
    conn: Conn, caller: Caller, body: SessionCreate, settings: AlertSettings
) -> SessionView:
    """Store the session and its checklist, audit it, and run the checklist's blood
    pressure through the rules as a pre-dose reading."""
    principal = caller.principal
    clinic_id = principal.clinic_ids.get(body.clinic)
    if clinic_id is None:
        raise ValidationFailed.one(
            "clinic", "member", f"you do not report for a clinic {body.clinic}"
        )
    session_id = body.id or new_id()
    checklist = msgspec.to_builtins(body.checklist)
    inserted = await conn.fetchval(
        _INSERT,
        session_id,
        clinic_id,
        body.patient_ref,
        body.drug,
        body.weight_kg,
        body.age_band,
        body.prescriber,
        checklist,
        principal.id,
        body.network_ref,
    )
    if inserted is None:
        raise Conflict(f"a treatment session {session_id} exists already; an id is used once")
    await _record_version(conn, session_id, "opened", caller)
    await caller.audit(
        conn,
        "session.opened",
        object_type="treatment_session",
        object_id=str(session_id),
        clinic=body.clinic,
        details={"body_sha256": hashlib.sha256(canonical_json(body)).hexdigest()},
    )
    row = await _load(conn, principal, session_id)
    alerts = await _run_rules(
        conn,
        caller,
        session=dict(row),
        reading="checklist",
        reading_id=session_id,
        at=row["created_at"],
        values=_checklist_values(checklist),
        settings=settings,
    )
    return await _detail(conn, session_id, alerts)


# --- the dose ----------------------------------------------------------------------------

# The holds open on the patient (the pre-dose hold, or a clinic's hold of its own) that
# no override covers: dosing waits for them.
_OPEN_HOLDS = """
SELECT a.id, a.rule_id FROM alerts a JOIN alert_rules r ON r.id = a.rule_id
WHERE a.clinic_id = $1 AND a.group_by = 'patient' AND a.group_key = $2
  AND a.status IN ('open', 'acknowledged') AND a.overridden_at IS NULL
  AND r.definition @> '{"hold": true}'::jsonb
ORDER BY a.first_seen_at, a.id
"""


async def record_dose(
    conn: Conn,
    caller: Caller,
    session_id: uuid.UUID,
    body: DoseBody,
    settings: AlertSettings,
) -> SessionView:
    """Record the dose. While a hold is open on the patient it is refused, unless the
    body carries an ``override_reason``: then the override is recorded on each such alert
    (as POST /api/v1/alerts/{id}/override does, audited) and the dose is stored."""
    row = await _load(conn, caller.principal, session_id, lock=True)
    if row["dosed_at"] is not None:
        raise Conflict("the session's dose is recorded already")
    if row["discharged_at"] is not None:
        raise Conflict("the session is discharged")
    holds = await conn.fetch(_OPEN_HOLDS, row["clinic_id"], row["patient_ref"])
    if holds and body.override_reason is None:
        raise ValidationFailed(
            [
                FieldError(
                    "override_reason",
                    hold["rule_id"],
                    f"the hold {hold['rule_id']} (alert {hold['id']}) is open: give a reason"
                    " to dose despite it",
                )
                for hold in holds
            ]
        )
    for hold in holds:
        assert body.override_reason is not None
        await queue.override(
            conn, caller, hold["id"], body.override_reason, revision=None, settings=settings
        )
    await conn.execute(
        "UPDATE treatment_sessions SET dose_mg = $2, dosed_at = $3, lot = $4,"
        " infusion_minutes = $5, dose_override_reason = $6, updated_at = now() WHERE id = $1",
        session_id,
        body.dose_mg,
        body.dosed_at,
        body.lot,
        body.infusion_minutes,
        body.override_reason if holds else None,
    )
    await _record_version(conn, session_id, "dosed", caller)
    await caller.audit(
        conn,
        "session.dosed",
        object_type="treatment_session",
        object_id=str(session_id),
        clinic=row["clinic"],
        details={
            **msgspec.to_builtins(body),
            "overridden_alerts": [str(h["id"]) for h in holds],
        },
    )
    alerts = await _run_rules(
        conn,
        caller,
        session=dict(row),
        reading="dose",
        reading_id=uuid.uuid5(session_id, "dose"),
        at=body.dosed_at,
        values=await _dose_values(
            conn,
            {
                **dict(row),
                "dose_mg": body.dose_mg,
                "dosed_at": body.dosed_at,
                "infusion_minutes": body.infusion_minutes,
            },
        ),
        settings=settings,
    )
    return await _detail(conn, session_id, alerts)


# --- observations ------------------------------------------------------------------------

# The observation and its first version, in one statement.
_INSERT_OBSERVATION = """
WITH stored AS (
    INSERT INTO session_observations (id, session_id, observed_at, vitals, created_by)
    VALUES ($1, $2, $3, $4, $5)
    RETURNING id, observed_at, vitals, created_by, created_at
)
INSERT INTO session_observation_versions (observation_id, version, observed_at, vitals,
                                          changed_by, changed_at)
SELECT id, 1, observed_at, vitals, created_by, created_at FROM stored
RETURNING changed_at AS created_at
"""


async def add_observation(
    conn: Conn,
    caller: Caller,
    session_id: uuid.UUID,
    body: ObservationBody,
    settings: AlertSettings,
) -> ObservationView:
    """Store a timed observation and run its values through the single-reading rules, as
    a report's: post-dose once the dose is recorded and the reading follows it, else
    pre-dose (a recheck before dosing)."""
    row = await _load(conn, caller.principal, session_id, lock=True)
    if row["discharged_at"] is not None:
        raise Conflict("the session is discharged")
    vitals = {name: getattr(body, name) for name in VITALS if getattr(body, name) is not None}
    observation_id = new_id()
    stored = await conn.fetchrow(
        _INSERT_OBSERVATION,
        observation_id,
        session_id,
        body.observed_at,
        vitals,
        caller.principal.id,
    )
    assert stored is not None
    await conn.execute("UPDATE treatment_sessions SET updated_at = now() WHERE id = $1", session_id)
    await caller.audit(
        conn,
        "session.observed",
        object_type="treatment_session",
        object_id=str(session_id),
        clinic=row["clinic"],
        details={
            "observation_id": str(observation_id),
            "observed_at": body.observed_at.isoformat(),
            **vitals,
        },
    )
    alerts = await _run_rules(
        conn,
        caller,
        session=dict(row),
        reading="observation",
        reading_id=observation_id,
        at=body.observed_at,
        values=_observation_values(vitals, row["dosed_at"], body.observed_at),
        settings=settings,
    )
    view = _observation_view(
        {
            "id": observation_id,
            "session_id": session_id,
            "observed_at": body.observed_at,
            "vitals": vitals,
            "created_at": stored["created_at"],
            "created_by": caller.principal.username,
            "version": 1,
        },
        row["dosed_at"],
    )
    return msgspec.structs.replace(view, alerts=alerts)


# --- discharge ---------------------------------------------------------------------------


async def _above_hold_level(conn: Conn, row: asyncpg.Record, systolic: int, diastolic: int) -> bool:
    """Whether the hold rules in force at the clinic (the pre-dose hold) would hold this
    pressure taken before a dose: the level lives in the rule, nowhere else."""
    facts = facts_of(
        _reading_facts(
            dict(row), {"phase": "pre_dose", "systolic": systolic, "diastolic": diastolic}
        ),
        "blood_pressure",
        hypertension_reading_grade(systolic, diastolic, []),
        None,
    )
    return any(
        rule.definition.hold and rule.definition.pattern is None and rule.condition.holds(facts)
        for rule in await rules_in_force(conn, row["clinic_id"])
        if rule.applies_to("blood_pressure")
    )


async def discharge(
    conn: Conn,
    caller: Caller,
    session_id: uuid.UUID,
    body: DischargeBody,
    settings: AlertSettings,
) -> SessionView:
    """Close the session. An unmet criterion refuses it (422 naming each), unless the
    body carries an ``override_reason``: then it is stored and audited, and the discharge
    reading raises ``discharge-override`` (high). An esketamine session gets its REMS
    Patient Monitoring Form (rems/service.py)."""
    row = await _load(conn, caller.principal, session_id, lock=True)
    if row["discharged_at"] is not None:
        raise Conflict("the session is discharged already")
    if row["dosed_at"] is not None and body.discharged_at < row["dosed_at"]:
        raise ValidationFailed.one("discharged_at", "after_dose", "discharge follows the dose")
    unmet = await unmet_criteria(
        conn,
        Discharge(session_id, row["drug"], row["dosed_at"], body),
        lambda systolic, diastolic: _above_hold_level(conn, row, systolic, diastolic),
    )
    if unmet and body.override_reason is None:
        raise ValidationFailed([FieldError(c.field, c.rule, c.message) for c in unmet])
    overridden = bool(unmet)
    record = {
        **msgspec.to_builtins(body),
        "unmet": [{"field": c.field, "rule": c.rule} for c in unmet],
    }
    record.pop("discharged_at")
    await conn.execute(
        "UPDATE treatment_sessions SET discharged_at = $2, discharge = $3, updated_at = now()"
        " WHERE id = $1",
        session_id,
        body.discharged_at,
        record,
    )
    await _record_version(conn, session_id, "discharged", caller)
    await caller.audit(
        conn,
        "session.discharged",
        object_type="treatment_session",
        object_id=str(session_id),
        clinic=row["clinic"],
        details={"discharged_at": body.discharged_at.isoformat(), **record},
    )
    await rems.create_for_session(conn, session_id)
    alerts = await _run_rules(
        conn,
        caller,
        session=dict(row),
        reading="discharge",
        reading_id=uuid.uuid5(session_id, "discharge"),
        at=body.discharged_at,
        values={
            "phase": "discharge",
            "systolic": body.systolic,
            "diastolic": body.diastolic,
            "moaa_s": body.moaa_s,
            "discharge_override": True if overridden else None,
        },
        settings=settings,
    )
    return await _detail(conn, session_id, alerts)


# --- amendments --------------------------------------------------------------------------

# Fields a session's amendment may change; its clinic, patient and drug make it the
# session it is (a wrong one is a new session), and the discharge is its own record.
_SESSION_FIELDS = ("weight_kg", "age_band", "prescriber", "network_ref", "checklist")
_DOSE_FIELDS = ("dose_mg", "dosed_at", "lot", "infusion_minutes")
_FIXED = frozenset({"id", "clinic", "patient_ref", "drug"})


def _present(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


async def amend_session(
    conn: Conn,
    caller: Caller,
    session_id: uuid.UUID,
    raw: Any,
    settings: AlertSettings,
    *,
    skew: timedelta,
) -> SessionView:
    """Correct the session's fields or its dose: validated as when they were first given,
    kept as a new version with the reason (audited), and the checklist's or the dose's
    rules run again on the corrected values, as a report's amendment does."""
    reason, changes = reason_and_changes(raw, noun="session", fixed=_FIXED)
    row = await _load(conn, caller.principal, session_id, lock=True)
    unknown = sorted(changes.keys() - {*_SESSION_FIELDS, *_DOSE_FIELDS})
    if unknown:
        raise ValidationFailed(
            [FieldError(f, "unknown_field", f"{f} cannot be amended here") for f in unknown]
        )
    dose_changes = {k: v for k, v in changes.items() if k in _DOSE_FIELDS}
    if dose_changes and row["dosed_at"] is None:
        raise ValidationFailed(
            [FieldError(f, "not_dosed", "no dose is recorded to correct") for f in dose_changes]
        )
    before = {name: row[name] for name in (*_SESSION_FIELDS, *_DOSE_FIELDS)}
    opened = validate_session(
        _present(
            {
                "clinic": row["clinic"],
                "patient_ref": row["patient_ref"],
                "drug": row["drug"],
                **{name: row[name] for name in _SESSION_FIELDS},
                **{k: v for k, v in changes.items() if k in _SESSION_FIELDS},
            }
        )
    )
    after: dict[str, Any] = {
        name: msgspec.to_builtins(getattr(opened, name)) for name in _SESSION_FIELDS
    }
    after.update({name: row[name] for name in _DOSE_FIELDS})
    if row["dosed_at"] is not None:
        dose = validate_dose(
            _present({**{name: row[name] for name in _DOSE_FIELDS}, **dose_changes}),
            row["drug"],
            opened.weight_kg,
            skew=skew,
        )
        after.update({name: getattr(dose, name) for name in _DOSE_FIELDS})
    changed = changed_fields(msgspec.to_builtins(before), msgspec.to_builtins(after))
    if not changed:
        raise ValidationFailed.one("$", "no_change", "the amendment changes nothing")
    await conn.execute(
        "UPDATE treatment_sessions SET weight_kg = $2, age_band = $3, prescriber = $4,"
        " network_ref = $5, checklist = $6, dose_mg = $7, dosed_at = $8, lot = $9,"
        " infusion_minutes = $10 WHERE id = $1",
        session_id,
        *(after[name] for name in (*_SESSION_FIELDS, *_DOSE_FIELDS)),
    )
    if "dosed_at" in changed:
        await rems.follow_dose_time(conn, session_id)
    version = await _record_version(conn, session_id, "amended", caller, reason)
    await caller.audit(
        conn,
        "session.amended",
        object_type="treatment_session",
        object_id=str(session_id),
        clinic=row["clinic"],
        details={"version": version, "reason": reason, "changes": changed},
    )
    return await _detail(
        conn, session_id, await _rerun_rules(conn, caller, session_id, changed, settings)
    )


async def _rerun_rules(
    conn: Conn,
    caller: Caller,
    session_id: uuid.UUID,
    changed: dict[str, Any],
    settings: AlertSettings,
) -> list[RaisedAlert]:
    """The rules of the readings an amendment changed, on the corrected session: the
    checklist's, and the dose's (the weight changes its mg/kg)."""
    row = dict(await _load(conn, caller.principal, session_id))
    alerts: list[RaisedAlert] = []
    if changed.keys() & {"checklist", "age_band", "weight_kg"}:
        alerts += await _run_rules(
            conn,
            caller,
            session=row,
            reading="checklist",
            reading_id=session_id,
            at=row["created_at"],
            values=_checklist_values(row["checklist"]),
            settings=settings,
        )
    if row["dosed_at"] is not None and changed.keys() & {*_DOSE_FIELDS, "weight_kg"}:
        alerts += await _run_rules(
            conn,
            caller,
            session=row,
            reading="dose",
            reading_id=uuid.uuid5(session_id, "dose"),
            at=row["dosed_at"],
            values=await _dose_values(conn, row),
            settings=settings,
        )
    return alerts


async def amend_observation(
    conn: Conn,
    caller: Caller,
    session_id: uuid.UUID,
    observation_id: uuid.UUID,
    raw: Any,
    settings: AlertSettings,
    *,
    skew: timedelta,
) -> ObservationView:
    """Correct an observation's time or values: validated as a new one, kept as a new
    version with the reason (audited), and its rules run again on the corrected values."""
    reason, changes = reason_and_changes(raw, noun="observation")
    row = await _load(conn, caller.principal, session_id, lock=True)
    stored = await conn.fetchrow(
        "SELECT observed_at, vitals, version, created_at, created_by FROM session_observations"
        " WHERE id = $1 AND session_id = $2 FOR UPDATE",
        observation_id,
        session_id,
    )
    if stored is None:
        raise NotFound(f"no observation {observation_id} in this session")
    before = {"observed_at": stored["observed_at"], **stored["vitals"]}
    body = validate_observation(_present({**before, **changes}), skew=skew)
    vitals = {name: getattr(body, name) for name in VITALS if getattr(body, name) is not None}
    after = {"observed_at": body.observed_at, **vitals}
    changed = changed_fields(msgspec.to_builtins(before), msgspec.to_builtins(after))
    if not changed:
        raise ValidationFailed.one("$", "no_change", "the amendment changes nothing")
    version = stored["version"] + 1
    await conn.execute(
        "INSERT INTO session_observation_versions"
        " (observation_id, version, observed_at, vitals, reason, changed_by)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        observation_id,
        version,
        body.observed_at,
        vitals,
        reason,
        caller.principal.id,
    )
    await conn.execute(
        "UPDATE session_observations SET observed_at = $2, vitals = $3, version = $4 WHERE id = $1",
        observation_id,
        body.observed_at,
        vitals,
        version,
    )
    await conn.execute("UPDATE treatment_sessions SET updated_at = now() WHERE id = $1", session_id)
    await caller.audit(
        conn,
        "session.observation_amended",
        object_type="treatment_session",
        object_id=str(session_id),
        clinic=row["clinic"],
        details={
            "observation_id": str(observation_id),
            "version": version,
            "reason": reason,
            "changes": changed,
        },
    )
    alerts = await _run_rules(
        conn,
        caller,
        session=dict(row),
        reading="observation",
        reading_id=observation_id,
        at=body.observed_at,
        values=_observation_values(vitals, row["dosed_at"], body.observed_at),
        settings=settings,
    )
    creator = await conn.fetchval("SELECT username FROM users WHERE id = $1", stored["created_by"])
    view = _observation_view(
        {
            "id": observation_id,
            "session_id": session_id,
            "observed_at": body.observed_at,
            "vitals": vitals,
            "created_at": stored["created_at"],
            "created_by": creator,
            "version": version,
        },
        row["dosed_at"],
    )
    return msgspec.structs.replace(view, alerts=alerts)


# --- reading and listing -----------------------------------------------------------------


async def session_view(conn: Conn, principal: Principal, session_id: uuid.UUID) -> SessionView:
    """The session with its observations, unaudited (for a read that audits its own);
    404 if the principal may not see it."""
    row = await _load(conn, principal, session_id)
    return _view(row, await _history(conn, session_id))


async def read_session(conn: Conn, caller: Caller, session_id: uuid.UUID) -> SessionView:
    row = await _load(conn, caller.principal, session_id)
    await caller.audit(
        conn,
        "session.read",
        object_type="treatment_session",
        object_id=str(session_id),
        clinic=row["clinic"],
    )
    return _view(row, await _history(conn, session_id))


async def list_sessions(conn: Conn, caller: Caller, filters: SessionFilters) -> SessionPage:
    """The newest sessions first, among the clinics the caller may see."""
    where = Where()
    where.in_clinics("s.clinic_id", caller.principal.visible_clinics(filters.clinic))
    where.equals("s.patient_ref", filters.patient_ref)
    if filters.cursor is not None:
        after, after_id = decode_cursor(filters.cursor, tuple[datetime, uuid.UUID])
        after = require_utc("cursor", after)
        where.add(f"(s.created_at, s.id) < ({where.param(after)}, {where.param(after_id)})")
    sql = (
        _SELECT
        + where.sql()
        + f" ORDER BY s.created_at DESC, s.id DESC LIMIT {where.param(filters.limit + 1)}"
    )
    rows = await conn.fetch(sql, *where.args)
    items = [_view(r) for r in rows[: filters.limit]]
    next_cursor = None
    if len(rows) > filters.limit:
        last = items[-1]
        next_cursor = encode_cursor(last.created_at, last.id)

    await caller.audit_page(
        conn,
        "session.listed",
        object_type="treatment_session",
        filters=filters,
        clinic_filter=filters.clinic,
        items=items,
        ids_key="session_ids",
    )
    return SessionPage(items=items, next_cursor=next_cursor)
