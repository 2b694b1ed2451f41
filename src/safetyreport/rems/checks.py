"""The periodic session check: a REMS form overdue, a session left open.

Every service process runs it (``session_checks_task``), as often as escalation. Each
run, in one transaction, claims with ``FOR UPDATE SKIP LOCKED`` a batch of

- REMS forms due and not submitted, not yet checked: each raises ``rems-form-overdue``;
- treatment sessions still open ``OPEN_TOO_LONG`` (4 hours) after their dose, not yet
  checked: each raises ``session-open-too-long``;

and marks them checked in the same statement, so a row claimed by one process is skipped
by another and no longer matches once that commits: each alert is raised once. The
alerts go through the rule engine (alerts/evaluate.py) as a session's readings do, with
the fact ``rems_form_overdue`` or ``session_open_too_long``; both rules are grouped by
report, so each form and each session has an alert of its own, linked to its session in
alert_session_readings. A clinic that disabled a rule gets no alert, and the row is not
checked again. The clinics' audit chains are locked first, as escalation does.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

import asyncpg

from safetyreport import audit
from safetyreport.alerts.evaluate import StoredReport, evaluate_report
from safetyreport.background import Periodic
from safetyreport.db.pool import Conn
from safetyreport.settings import AlertSettings

_log = logging.getLogger(__name__)

SYSTEM_SESSION_CHECKS = audit.Actor(name="system:session-checks")
SESSION_CHECKS_TASK = "session-checks"
BATCH_SIZE = 100
OPEN_TOO_LONG = timedelta(hours=4)

_FORMS_DUE = """
SELECT clinic_id FROM rems_forms
WHERE submitted_at IS NULL AND overdue_checked_at IS NULL AND due_at <= now()
ORDER BY due_at LIMIT $1
"""
_SESSIONS_DUE = """
SELECT clinic_id FROM treatment_sessions
WHERE discharged_at IS NULL AND dosed_at IS NOT NULL AND open_too_long_checked_at IS NULL
  AND dosed_at <= now() - $2::interval
ORDER BY dosed_at LIMIT $1
"""
_DUE_CLINICS = f"""
SELECT DISTINCT c.id, c.code FROM clinics c
WHERE c.id IN ({_FORMS_DUE}) OR c.id IN ({_SESSIONS_DUE})
"""  # noqa: S608 (constant SQL fragments, no input)
_CLAIM_FORMS = """
WITH due AS (
    SELECT id FROM rems_forms
    WHERE submitted_at IS NULL AND overdue_checked_at IS NULL AND due_at <= now()
      AND clinic_id = ANY($2::bigint[])
    ORDER BY due_at LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE rems_forms f SET overdue_checked_at = now()
FROM due WHERE f.id = due.id
RETURNING f.id, f.session_id, f.due_at AS at
"""
_CLAIM_SESSIONS = """
WITH due AS (
    SELECT id FROM treatment_sessions
    WHERE discharged_at IS NULL AND dosed_at IS NOT NULL AND open_too_long_checked_at IS NULL
      AND dosed_at <= now() - $3::interval AND clinic_id = ANY($2::bigint[])
    ORDER BY dosed_at LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE treatment_sessions s SET open_too_long_checked_at = now()
FROM due WHERE s.id = due.id
RETURNING s.id AS session_id, s.dosed_at + $3::interval AS at
"""
_SESSION = """
SELECT s.clinic_id, c.code AS clinic, s.patient_ref, s.drug, s.age_band, s.weight_kg
FROM treatment_sessions s JOIN clinics c ON c.id = s.clinic_id WHERE s.id = $1
"""


async def _raise(
    conn: Conn,
    settings: AlertSettings,
    row: asyncpg.Record,
    *,
    reading: str,
    reading_id: uuid.UUID,
    fact: str,
) -> None:
    session = await conn.fetchrow(_SESSION, row["session_id"])
    assert session is not None
    body: dict[str, Any] = {
        "clinic": session["clinic"],
        "patient_ref": session["patient_ref"],
        "drug": session["drug"],
        fact: True,
    }
    await evaluate_report(
        conn,
        StoredReport(
            id=reading_id,
            version=1,
            clinic_id=session["clinic_id"],
            kind="dissociation",
            patient_ref=session["patient_ref"],
            occurred_at=row["at"],
            body=body,
            reading_grade=None,
            session_reading=(row["session_id"], reading),
        ),
        actor=SYSTEM_SESSION_CHECKS,
        client_addr=None,
        settings=settings,
    )


async def check_sessions(conn: Conn, settings: AlertSettings, *, limit: int = BATCH_SIZE) -> int:
    """Claim and raise up to ``limit`` overdue forms and ``limit`` sessions open too long,
    in the caller's transaction; how many were claimed."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    clinics = await conn.fetch(_DUE_CLINICS, limit, OPEN_TOO_LONG)
    if not clinics:
        return 0
    # Chains before the rows, as writes by users take them (see audit.lock_chains).
    await audit.lock_chains(conn, [c["code"] for c in clinics])
    clinic_ids = [c["id"] for c in clinics]
    forms = await conn.fetch(_CLAIM_FORMS, limit, clinic_ids)
    sessions = await conn.fetch(_CLAIM_SESSIONS, limit, clinic_ids, OPEN_TOO_LONG)
    for form in sorted(forms, key=lambda r: (r["at"], r["id"])):
        await _raise(
            conn,
            settings,
            form,
            reading="rems_form",
            reading_id=form["id"],
            fact="rems_form_overdue",
        )
    for session in sorted(sessions, key=lambda r: (r["at"], r["session_id"])):
        await _raise(
            conn,
            settings,
            session,
            reading="open_too_long",
            reading_id=uuid.uuid5(session["session_id"], "open_too_long"),
            fact="session_open_too_long",
        )
    if forms or sessions:
        _log.info(
            "session checks: %d REMS forms overdue, %d sessions open too long",
            len(forms),
            len(sessions),
            extra={"rems_forms_overdue": len(forms), "sessions_open_too_long": len(sessions)},
        )
    return max(len(forms), len(sessions))


def session_checks_task(settings: AlertSettings) -> Periodic:
    """Run the session checks every ``escalation_interval``, a batch per transaction."""

    async def check(conn: Conn) -> int:
        return await check_sessions(conn, settings)

    # A full batch of either means more may be due: the runner goes again at once.
    return Periodic(SESSION_CHECKS_TASK, settings.escalation_interval, check, batch=BATCH_SIZE)
