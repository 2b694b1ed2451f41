"""Report bodies, posting reports and counting what was stored."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
from litestar.testing import AsyncTestClient
from litestar.testing import transport as litestar_transport

REPORTS = "/api/v1/reports"


@dataclass(frozen=True)
class Stored:
    """Rows that a created report leaves behind."""

    reports: int
    versions: int
    created_audits: int


async def stored(db: asyncpg.Connection[Any]) -> Stored:
    row = await db.fetchrow(
        """
        SELECT (SELECT count(*) FROM reports) AS reports,
               (SELECT count(*) FROM report_versions) AS versions,
               (SELECT count(*) FROM audit_entries WHERE action = 'report.created') AS created
        """
    )
    assert row is not None
    return Stored(row["reports"], row["versions"], row["created"])


NOTHING = Stored(0, 0, 0)


def new_key() -> str:
    return f"key-{uuid.uuid4()}"


async def post_report(
    client: AsyncTestClient[Any],
    headers: dict[str, str],
    body: Any,
    *,
    key: str | None = None,
) -> httpx.Response:
    """POST a report (any JSON value) with a fresh Idempotency-Key unless one is given."""
    return await client.post(
        REPORTS, json=body, headers={**headers, "Idempotency-Key": key or new_key()}
    )


async def create_report(
    client: AsyncTestClient[Any], headers: dict[str, str], body: dict[str, Any]
) -> dict[str, Any]:
    """POST a report that must be accepted; its JSON view."""
    response = await post_report(client, headers, body)
    assert response.status_code == 201, response.text
    view: dict[str, Any] = response.json()
    return view


async def amend(
    client: AsyncTestClient[Any],
    headers: dict[str, str],
    report_id: str,
    body: Any,
) -> httpx.Response:
    return await client.post(f"{REPORTS}/{report_id}/amendments", json=body, headers=headers)


def errors_of(response: httpx.Response) -> list[tuple[str, str]]:
    """(field, rule) of each error in a 422 body, in order."""
    assert response.status_code == 422, response.text
    errors: list[dict[str, str]] = response.json()["errors"]
    for error in errors:
        assert set(error) == {"field", "rule", "message"}, error
        assert error["message"], error
    return [(e["field"], e["rule"]) for e in errors]


async def audit_rows(
    db: asyncpg.Connection[Any], action: str, object_id: str | None = None
) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT * FROM audit_entries WHERE action = $1"
        " AND ($2::text IS NULL OR object_id = $2) ORDER BY chain, seq",
        action,
        object_id,
    )


def _send_blocking(client: AsyncTestClient[Any], request: httpx.Request) -> httpx.Response:
    response = litestar_transport.TestClientTransport(client=client).handle_request(request)
    response.read()
    return response


async def send_concurrently(
    client: AsyncTestClient[Any], requests: list[httpx.Request]
) -> list[httpx.Response]:
    """Send ``requests`` at once, each from its own thread; their responses in order.

    AsyncTestClient hands a request to the app and blocks until it is answered, so
    asyncio.gather over it sends one request at a time; from threads they overlap.
    """
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        futures = [loop.run_in_executor(pool, _send_blocking, client, r) for r in requests]
        return list(await asyncio.gather(*futures))


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
    """A patient's behaviour (drug-seeking): no rule fires on it alone."""
    body: dict[str, Any] = {
        "kind": "misuse_concern",
        "clinic": clinic,
        "patient_ref": "PT-003",
        "occurred_at": "2026-01-15T12:00:00+00:00",
        "drug": "ketamine_im",
        "outcome": "unknown",
        "concern_type": "drug_seeking",
        "description": "Asked for an extra dose before the session.",
    }
    body.update(overrides)
    return body


def adverse_report(clinic: str = "C1", **overrides: Any) -> dict[str, Any]:
    """A fall (high); override category and its fields for the others."""
    body: dict[str, Any] = {
        "kind": "adverse_event",
        "clinic": clinic,
        "patient_ref": "PT-004",
        "occurred_at": "2026-01-15T12:30:00Z",
        "drug": "esketamine_nasal",
        "outcome": "recovering",
        "category": "fall",
        "verbatim_term": "Slipped getting up from the chair, bruised knee",
    }
    body.update(overrides)
    return body


def stock_report(clinic: str = "C1", **overrides: Any) -> dict[str, Any]:
    """A theft of two vials (critical, with the DEA due dates); no patient."""
    body: dict[str, Any] = {
        "kind": "stock_incident",
        "clinic": clinic,
        "drug": "ketamine_iv",
        "incident_type": "theft",
        "discovered_at": "2026-01-15T12:00:00+00:00",
        "description": "Two vials missing from the locked cabinet.",
        "expected_quantity": 10,
        "actual_quantity": 8,
        "unit": "ml",
    }
    body.update(overrides)
    return body


_CLONE_REPORT = """
WITH template AS (
    SELECT r.clinic_id, r.kind, r.patient_ref, r.occurred_at, r.created_by, v.body,
           v.hypertension_reading_grade
    FROM reports r JOIN report_versions v ON v.report_id = r.id AND v.version = 1
    WHERE r.id = $1
), copies AS (
    INSERT INTO reports (id, clinic_id, kind, patient_ref, occurred_at, current_version, created_by)
    SELECT gen_random_uuid(), t.clinic_id, t.kind, t.patient_ref,
           t.occurred_at + i * interval '1 minute', 1, t.created_by
    FROM template t, generate_series(1, $2) AS i
    RETURNING id, occurred_at
)
INSERT INTO report_versions (report_id, version, body, hypertension_reading_grade, created_by)
SELECT c.id, 1,
       jsonb_set(t.body, '{occurred_at}',
                 to_jsonb(to_char(c.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))),
       t.hypertension_reading_grade, t.created_by
FROM copies c CROSS JOIN template t
"""


async def seed_copies(db: asyncpg.Connection[Any], report_id: str, copies: int) -> None:
    """``copies`` more reports like ``report_id``, a minute apart after it, in one statement."""
    await db.execute(_CLONE_REPORT, uuid.UUID(report_id), copies)
