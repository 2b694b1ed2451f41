"""REMS Patient Monitoring Forms: made when an esketamine session is discharged, listed
by status, read, and their submission to the REMS recorded with its confirmation number.

A form is due 7 days after the session's dose (after its opening when none was
recorded): the REMS asks for a form per treatment session, and a week gives the clinic
time to add what follows the session (an adverse event reported the next day) while
keeping the form near the session. Its content is prefilled from the session when the
form is shown (so a report linked to the session later still appears); the content
submitted is kept with the confirmation number. Status: ``submitted`` once recorded,
else ``overdue`` from ``due_at`` on, else ``due``.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import asyncpg
import msgspec

from safetyreport.caller import Caller
from safetyreport.db.pool import Conn
from safetyreport.db.query import Where
from safetyreport.errors import Conflict, FieldError, NotFound, ValidationFailed
from safetyreport.ids import new_id
from safetyreport.pagination import decode_cursor, encode_cursor
from safetyreport.sessions.types import VITALS
from safetyreport.times import require_utc

# The drugs under the SPRAVATO REMS: a session of one of them yields a form.
REMS_DRUGS = frozenset({"esketamine_nasal"})
FORM_DUE_AFTER = timedelta(days=7)
# A REMS confirmation number as the portal shows it: letters, digits and dashes.
CONFIRMATION_MAX = 40
CONFIRMATION_REGEX = "^[A-Za-z0-9][A-Za-z0-9-]*$"
CONFIRMATION_PATTERN = re.compile(CONFIRMATION_REGEX)

Status = Literal["due", "overdue", "submitted"]
STATUSES: tuple[Status, ...] = ("due", "overdue", "submitted")


class VitalSigns(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    observed_at: datetime
    minutes_after_dose: int | None = None
    systolic: int | None = None
    diastolic: int | None = None
    pulse: int | None = None
    respiratory_rate: int | None = None
    spo2: int | None = None
    moaa_s: int | None = None
    cadss_total: int | None = None


class AdverseEvent(msgspec.Struct, frozen=True, kw_only=True):
    report_id: uuid.UUID
    kind: str
    occurred_at: datetime
    # For an adverse event report: its category and the nurse's own words.
    category: str | None
    verbatim_term: str | None
    # The rules the report's current version raised or joined.
    alert_rules: list[str]


class FormContent(msgspec.Struct, frozen=True, kw_only=True):
    """What the REMS Patient Monitoring Form asks, prefilled from the session."""

    clinic: str
    patient_ref: str
    drug: str
    prescriber: str | None
    dose_mg: float | None
    dosed_at: datetime | None
    lot: str | None
    session_opened_at: datetime
    first_observation_at: datetime | None
    last_observation_at: datetime | None
    discharged_at: datetime | None
    # Whole minutes from the dose to the discharge.
    minutes_monitored: int | None
    discharge: dict[str, Any] | None
    vital_signs: list[VitalSigns]
    adverse_events: list[AdverseEvent]


class FormView(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    session_id: uuid.UUID
    clinic: str
    due_at: datetime
    status: Status
    created_at: datetime
    submitted_at: datetime | None
    submitted_by: str | None
    confirmation_number: str | None
    # As submitted once submitted; else prefilled from the session as it is now.
    content: FormContent


class FormPage(msgspec.Struct, frozen=True):
    items: list[FormView]
    next_cursor: str | None


class FormFilters(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    status: Status | None = None
    clinic: str | None = None
    cursor: str | None = None
    limit: int = 50


class SubmissionBody(msgspec.Struct, frozen=True, kw_only=True):
    # The schema states the rules validate_submission checks, naming each broken one.
    confirmation_number: Annotated[
        str, msgspec.Meta(min_length=1, max_length=CONFIRMATION_MAX, pattern=CONFIRMATION_REGEX)
    ]


_encoder = msgspec.json.Encoder()


def encode(view: msgspec.Struct) -> bytes:
    return _encoder.encode(view)


# --- making a form -------------------------------------------------------------------------


async def create_for_session(conn: Conn, session_id: uuid.UUID) -> None:
    """Make the session's form if its drug is under the REMS (once; a second call does
    nothing). Called in the discharge's transaction."""
    await conn.execute(
        "INSERT INTO rems_forms (id, session_id, clinic_id, due_at)"
        " SELECT $1, s.id, s.clinic_id, coalesce(s.dosed_at, s.created_at) + $3::interval"
        " FROM treatment_sessions s WHERE s.id = $2 AND s.drug = ANY($4::text[])"
        " ON CONFLICT (session_id) DO NOTHING",
        new_id(),
        session_id,
        FORM_DUE_AFTER,
        sorted(REMS_DRUGS),
    )


async def follow_dose_time(conn: Conn, session_id: uuid.UUID) -> None:
    """A corrected dose time moves the due date of the session's form, if not submitted."""
    await conn.execute(
        "UPDATE rems_forms f SET due_at = s.dosed_at + $2::interval"
        " FROM treatment_sessions s"
        " WHERE f.session_id = $1 AND s.id = f.session_id AND f.submitted_at IS NULL",
        session_id,
        FORM_DUE_AFTER,
    )


# --- the content ---------------------------------------------------------------------------

# Each of a page's sessions at once ($1: their ids), so that a page of forms costs three
# queries, not three per form.
_SESSIONS = """
SELECT s.id, c.code AS clinic, s.patient_ref, s.drug, s.prescriber, s.dose_mg, s.dosed_at,
       s.lot, s.created_at, s.discharged_at, s.discharge
FROM treatment_sessions s JOIN clinics c ON c.id = s.clinic_id
WHERE s.id = ANY($1::uuid[])
"""
_OBSERVATIONS = """
SELECT session_id, observed_at, vitals FROM session_observations
WHERE session_id = ANY($1::uuid[]) ORDER BY session_id, observed_at, id
"""
# The reports linked to each session (their current version names it), of its clinic.
_ADVERSE_EVENTS = """
SELECT s.id AS session_id, r.id, r.kind, r.occurred_at,
       v.body ->> 'category' AS category, v.body ->> 'verbatim_term' AS verbatim_term,
       coalesce((SELECT array_agg(DISTINCT a.rule_id ORDER BY a.rule_id)
                 FROM alert_reports ar JOIN alerts a ON a.id = ar.alert_id
                 WHERE ar.report_id = r.id AND ar.report_version = r.current_version),
                '{}') AS alert_rules
FROM report_versions v
JOIN reports r ON r.id = v.report_id AND r.current_version = v.version
JOIN treatment_sessions s ON s.id::text = v.body ->> 'session_id' AND s.clinic_id = r.clinic_id
WHERE v.body ? 'session_id' AND v.body ->> 'session_id' = ANY($1::text[])
ORDER BY r.occurred_at, r.id
"""


def _minutes_after(dosed_at: datetime | None, at: datetime | None) -> int | None:
    if dosed_at is None or at is None or at < dosed_at:
        return None
    return int((at - dosed_at).total_seconds() // 60)


async def prefill(conn: Conn, session_id: uuid.UUID) -> FormContent:
    """The form's content from the session, its observations and its linked reports."""
    return (await prefill_many(conn, [session_id]))[session_id]


async def prefill_many(conn: Conn, session_ids: list[uuid.UUID]) -> dict[uuid.UUID, FormContent]:
    """The content of each session's form, in three queries whatever their number."""
    observations: dict[uuid.UUID, list[asyncpg.Record]] = {}
    for row in await conn.fetch(_OBSERVATIONS, session_ids):
        observations.setdefault(row["session_id"], []).append(row)
    reports: dict[uuid.UUID, list[asyncpg.Record]] = {}
    for row in await conn.fetch(_ADVERSE_EVENTS, [str(i) for i in session_ids]):
        reports.setdefault(row["session_id"], []).append(row)
    return {
        session["id"]: _content(
            session, observations.get(session["id"], []), reports.get(session["id"], [])
        )
        for session in await conn.fetch(_SESSIONS, session_ids)
    }


def _content(
    session: asyncpg.Record, observations: list[asyncpg.Record], reports: list[asyncpg.Record]
) -> FormContent:
    dosed_at: datetime | None = session["dosed_at"]
    return FormContent(
        clinic=session["clinic"],
        patient_ref=session["patient_ref"],
        drug=session["drug"],
        prescriber=session["prescriber"],
        dose_mg=session["dose_mg"],
        dosed_at=dosed_at,
        lot=session["lot"],
        session_opened_at=session["created_at"],
        first_observation_at=observations[0]["observed_at"] if observations else None,
        last_observation_at=observations[-1]["observed_at"] if observations else None,
        discharged_at=session["discharged_at"],
        minutes_monitored=_minutes_after(dosed_at, session["discharged_at"]),
        discharge=session["discharge"],
        vital_signs=[
            VitalSigns(
                observed_at=o["observed_at"],
                minutes_after_dose=_minutes_after(dosed_at, o["observed_at"]),
                **{name: o["vitals"].get(name) for name in VITALS},
            )
            for o in observations
        ],
        adverse_events=[
            AdverseEvent(
                report_id=r["id"],
                kind=r["kind"],
                occurred_at=r["occurred_at"],
                category=r["category"],
                verbatim_term=r["verbatim_term"],
                alert_rules=list(r["alert_rules"]),
            )
            for r in reports
        ],
    )


# --- reading -------------------------------------------------------------------------------

_STATUS_SQL = """CASE WHEN f.submitted_at IS NOT NULL THEN 'submitted'
            WHEN f.due_at <= now() THEN 'overdue' ELSE 'due' END"""
_SELECT = f"""
SELECT f.id, f.session_id, f.clinic_id, c.code AS clinic, f.due_at, f.created_at,
       f.submitted_at, u.username AS submitted_by, f.confirmation_number,
       f.submitted_content, {_STATUS_SQL} AS status
FROM rems_forms f
JOIN clinics c ON c.id = f.clinic_id
LEFT JOIN users u ON u.id = f.submitted_by
"""  # noqa: S608 (constant SQL fragments, no input)
_STATUS_WHERE = {
    "submitted": "f.submitted_at IS NOT NULL",
    "overdue": "f.submitted_at IS NULL AND f.due_at <= now()",
    "due": "f.submitted_at IS NULL AND f.due_at > now()",
}


def _view(row: asyncpg.Record, prefilled: FormContent | None) -> FormView:
    """The form: its content as submitted, else as prefilled now from its session."""
    stored = row["submitted_content"]
    content = (
        msgspec.convert(stored, FormContent, strict=False) if stored is not None else prefilled
    )
    assert content is not None, "an unsubmitted form is shown with its prefilled content"
    return FormView(
        id=row["id"],
        session_id=row["session_id"],
        clinic=row["clinic"],
        due_at=row["due_at"],
        status=row["status"],
        created_at=row["created_at"],
        submitted_at=row["submitted_at"],
        submitted_by=row["submitted_by"],
        confirmation_number=row["confirmation_number"],
        content=content,
    )


async def _views(conn: Conn, rows: list[asyncpg.Record]) -> list[FormView]:
    unsubmitted = [r["session_id"] for r in rows if r["submitted_content"] is None]
    prefilled = await prefill_many(conn, unsubmitted) if unsubmitted else {}
    return [_view(row, prefilled.get(row["session_id"])) for row in rows]


async def _load(
    conn: Conn, caller: Caller, form_id: uuid.UUID, *, lock: bool = False
) -> asyncpg.Record:
    """The form's row if the caller may see it; 404 otherwise (another clinic's too)."""
    if lock:
        await conn.execute("SELECT 1 FROM rems_forms WHERE id = $1 FOR UPDATE", form_id)
    row = await conn.fetchrow(_SELECT + " WHERE f.id = $1", form_id)
    if row is None or not caller.principal.can_see(row["clinic_id"]):
        raise NotFound(f"no REMS form {form_id}")
    found: asyncpg.Record = row
    return found


async def read_form(conn: Conn, caller: Caller, form_id: uuid.UUID) -> FormView:
    row = await _load(conn, caller, form_id)
    await caller.audit(
        conn,
        "rems_form.read",
        object_type="rems_form",
        object_id=str(form_id),
        clinic=row["clinic"],
    )
    [view] = await _views(conn, [row])
    return view


async def list_forms(conn: Conn, caller: Caller, filters: FormFilters) -> FormPage:
    """The forms of the caller's clinics, the earliest due first, a page at a time."""
    where = Where()
    where.in_clinics("f.clinic_id", caller.principal.visible_clinics(filters.clinic))
    if filters.status is not None:
        where.add(_STATUS_WHERE[filters.status])
    if filters.cursor is not None:
        after, after_id = decode_cursor(filters.cursor, tuple[datetime, uuid.UUID])
        after = require_utc("cursor", after)
        where.add(f"(f.due_at, f.id) > ({where.param(after)}, {where.param(after_id)})")
    sql = _SELECT + where.sql() + f" ORDER BY f.due_at, f.id LIMIT {where.param(filters.limit + 1)}"
    rows = await conn.fetch(sql, *where.args)
    items = await _views(conn, rows[: filters.limit])
    next_cursor = None
    if len(rows) > filters.limit:
        last = items[-1]
        next_cursor = encode_cursor(last.due_at, last.id)

    await caller.audit_page(
        conn,
        "rems_form.listed",
        object_type="rems_form",
        filters=filters,
        clinic_filter=filters.clinic,
        items=items,
        ids_key="form_ids",
    )
    return FormPage(items=items, next_cursor=next_cursor)


# --- submission ----------------------------------------------------------------------------


def validate_submission(raw: Any) -> SubmissionBody:
    """The body, or ValidationFailed naming ``confirmation_number`` and the rule broken."""
    field = "confirmation_number"
    if not isinstance(raw, dict):
        raise ValidationFailed.one("$", "type", "must be a JSON object")
    errors = [
        FieldError(name, "unknown_field", f"{name} is not a field here")
        for name in raw
        if name != field
    ]
    value = raw.get(field)
    if field not in raw:
        errors.append(FieldError(field, "required", "this field is required"))
    elif not isinstance(value, str):
        errors.append(FieldError(field, "type", "must be a string"))
    elif not value.strip():
        errors.append(FieldError(field, "not_empty", "must not be empty"))
    elif len(value) > CONFIRMATION_MAX:
        errors.append(FieldError(field, "max_length", f"at most {CONFIRMATION_MAX} characters"))
    elif not CONFIRMATION_PATTERN.fullmatch(value):
        errors.append(
            FieldError(
                field, "pattern", "letters, digits and dashes only, starting with a letter or digit"
            )
        )
    if errors:
        raise ValidationFailed(errors)
    assert isinstance(value, str)
    return SubmissionBody(confirmation_number=value)


async def submit(conn: Conn, caller: Caller, form_id: uuid.UUID, body: SubmissionBody) -> FormView:
    """Record the form's submission to the REMS: its confirmation number and the content
    as submitted (audited). 409 if recorded already."""
    row = await _load(conn, caller, form_id, lock=True)
    if row["submitted_at"] is not None:
        raise Conflict("the form's submission is recorded already")
    content = await prefill(conn, row["session_id"])
    await conn.execute(
        "UPDATE rems_forms SET submitted_at = now(), submitted_by = $2,"
        " confirmation_number = $3, submitted_content = $4 WHERE id = $1",
        form_id,
        caller.principal.id,
        body.confirmation_number,
        msgspec.to_builtins(content),
    )
    await caller.audit(
        conn,
        "rems_form.submitted",
        object_type="rems_form",
        object_id=str(form_id),
        clinic=row["clinic"],
        details={
            "session_id": str(row["session_id"]),
            "confirmation_number": body.confirmation_number,
            "was_overdue": row["status"] == "overdue",
        },
    )
    [view] = await _views(conn, [await _load(conn, caller, form_id)])
    return view
