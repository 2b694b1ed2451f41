"""Treatment sessions for the tests: bodies, posting with a fresh Idempotency-Key, a
session opened and dosed, one observed and discharged. ``client`` is the app's test
client or an ``httpx.AsyncClient`` of a served process."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx

from tests.helpers.reports import new_key

Headers = dict[str, str]
SESSIONS = "/api/v1/sessions"
# A discharge that meets every fitness-to-leave criterion.
FIT = {"moaa_s": 5, "systolic": 128, "diastolic": 82, "escort": True}


def iso(moment: datetime) -> str:
    return moment.isoformat()


def session_body(patient: str = "PT-1", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "clinic": "C1",
        "patient_ref": patient,
        "drug": "esketamine_nasal",
        "age_band": "under_65",
        "prescriber": "Dr Vale",
        "checklist": {
            "systolic": 122,
            "diastolic": 78,
            "fasting": True,
            "cns_depressants": False,
            "pregnancy_possible": False,
            "transport_arranged": True,
        },
    }
    body.update(overrides)
    return body


async def post(
    client: httpx.AsyncClient, path: str, headers: Headers, body: Any, key: str | None = None
) -> httpx.Response:
    return await client.post(
        path, json=body, headers={**headers, "Idempotency-Key": key or new_key()}
    )


async def open_session(
    client: httpx.AsyncClient, headers: Headers, body: dict[str, Any]
) -> dict[str, Any]:
    response = await post(client, SESSIONS, headers, body)
    assert response.status_code == 201, response.text
    view: dict[str, Any] = response.json()
    return view


async def dosed_session(
    client: httpx.AsyncClient,
    headers: Headers,
    dosed_at: datetime,
    patient: str = "PT-1",
    clinic: str = "C1",
) -> str:
    session = await open_session(client, headers, session_body(patient, clinic=clinic))
    dosed = await post(
        client,
        f"{SESSIONS}/{session['id']}/dose",
        headers,
        {"dose_mg": 56, "dosed_at": iso(dosed_at), "lot": "LOT-7"},
    )
    assert dosed.status_code == 201, dosed.text
    session_id: str = session["id"]
    return session_id


async def observed_session(
    client: httpx.AsyncClient,
    headers: Headers,
    patient: str,
    dosed_at: datetime,
    readings: list[dict[str, Any]],
    *,
    dose_mg: float = 56,
    discharge: bool = True,
    **overrides: Any,
) -> str:
    """A session opened, dosed at ``dosed_at`` with ``dose_mg``, observed (each reading's
    ``minutes`` after the dose, the rest its vital signs) and, with ``discharge``,
    discharged fit 125 minutes after the dose; its id."""
    session = await open_session(client, headers, session_body(patient, **overrides))
    path = f"{SESSIONS}/{session['id']}"
    dosed = await post(
        client, f"{path}/dose", headers, {"dose_mg": dose_mg, "dosed_at": iso(dosed_at)}
    )
    assert dosed.status_code == 201, dosed.text
    for reading in readings:
        vitals = {k: v for k, v in reading.items() if k != "minutes"}
        at = dosed_at + timedelta(minutes=reading["minutes"])
        observed = await post(
            client, f"{path}/observations", headers, {"observed_at": iso(at), **vitals}
        )
        assert observed.status_code == 201, observed.text
    if discharge:
        body = {"discharged_at": iso(dosed_at + timedelta(minutes=125)), **FIT}
        discharged = await post(client, f"{path}/discharge", headers, body)
        assert discharged.status_code == 200, discharged.text
    session_id: str = session["id"]
    return session_id


async def clone_sessions(db: Any, template: str, count: int) -> None:
    """``count`` copies of a dosed session, inserted in SQL for bulk (analytics tests that
    need hundreds of sessions): each with its own id and patient, dosed ``i`` minutes
    after the template, already checked for being open too long. The rollups' dirty marks
    are made by the table's triggers, as for a session made through the API."""
    columns: list[str] = [
        r["column_name"]
        for r in await db.fetch(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = 'treatment_sessions' ORDER BY ordinal_position"
        )
    ]
    replaced = {
        "id": "gen_random_uuid()",
        "patient_ref": "'BULK-' || i",
        "network_ref": "NULL",
        "dosed_at": "dosed_at + i * interval '1 minute'",
        "open_too_long_checked_at": "now()",
    }
    names = ", ".join(columns)
    values = ", ".join(replaced.get(c, c) for c in columns)
    await db.execute(
        f"INSERT INTO treatment_sessions ({names}) SELECT {values}"
        " FROM treatment_sessions, generate_series(1, $2::integer) AS i WHERE id = $1::uuid",
        template,
        count,
    )
