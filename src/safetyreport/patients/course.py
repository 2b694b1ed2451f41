"""A patient's course of treatment sessions, across the network's clinics.

A patient is a ``patient_ref`` at a clinic. A session's optional ``network_ref`` (a
pseudonym the network assigns) links it to the sessions carrying the same pseudonym at
any clinic: the patient's linked identities are their own (clinic, patient_ref) pairs and
every pair with a session carrying one of the pseudonyms their sessions carry.

The esketamine course starts at the patient's first esketamine dose; its weeks are
7-day periods from then. The dose of a session gives the rules ``course_week`` (1 for the
first 7 days) and ``course_week_sessions`` (the dosed esketamine sessions in that
course-week, this one included); the rule ``esketamine-frequency`` looks at them
(docs/clinical-rules.md).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from safetyreport.db.pool import Conn

COURSE_DRUGS = frozenset({"esketamine_nasal"})
COURSE_WEEK = timedelta(days=7)

# The linked identities of the patient ``$2`` at the clinics ``$1`` (a CTE named ids).
LINKED_IDS = """
WITH seed AS (
    SELECT unnest($1::bigint[]) AS clinic_id, $2::text AS patient_ref
), ids AS (
    SELECT clinic_id, patient_ref FROM seed
    UNION
    SELECT t.clinic_id, t.patient_ref FROM treatment_sessions t
    WHERE t.network_ref IN (
        SELECT s.network_ref FROM treatment_sessions s JOIN seed USING (clinic_id, patient_ref)
        WHERE s.network_ref IS NOT NULL
    )
)
"""

_COURSE_DOSES = (
    LINKED_IDS
    + """
SELECT s.dosed_at FROM treatment_sessions s JOIN ids USING (clinic_id, patient_ref)
WHERE s.dosed_at IS NOT NULL AND s.drug = ANY($3::text[])
ORDER BY s.dosed_at
"""
)


def course_week(start: datetime, at: datetime) -> int:
    """The course-week ``at`` falls in: 1 for the first 7 days from ``start``."""
    return (at - start) // COURSE_WEEK + 1


async def course_facts(conn: Conn, session: Any, dosed_at: datetime) -> dict[str, Any]:
    """The facts of the course for the dose of ``session`` (its row; the dose stored):
    none for a drug with no course."""
    if session["drug"] not in COURSE_DRUGS:
        return {}
    doses: list[datetime] = [
        row["dosed_at"]
        for row in await conn.fetch(
            _COURSE_DOSES, [session["clinic_id"]], session["patient_ref"], sorted(COURSE_DRUGS)
        )
    ]
    start = min([*doses, dosed_at])
    week = course_week(start, dosed_at)
    same_week = sum(1 for at in doses if course_week(start, at) == week)
    return {"course_week": week, "course_week_sessions": same_week}
