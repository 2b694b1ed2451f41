"""The year-six generator (bench/history.py), tiny: three clinics over two years copied
into the test's database. It makes the rows and entries asked for, over the years asked
for, in chains that verify (in full, and from the heads it signed) and that the service
appends to afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.history import HistoryOptions, populate
from bench.network import ADMIN
from safetyreport import audit
from safetyreport.audit import verify_chains
from safetyreport.audit.signing import Signer
from tests.helpers.world import World

OPTIONS = HistoryOptions(clinics=3, years=2, sessions=300, reports=90, audit=1_500, seed=5)


async def test_the_history_has_the_rows_asked_for_in_chains_that_verify(
    world: World, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    await world.user(ADMIN, "admin", all_clinics=True)
    signer = Signer(Ed25519PrivateKey.generate())
    generated = await populate(db, OPTIONS, tmp_path, signer)

    assert generated["dosed_sessions"] == 300
    assert generated["reports"] == 90
    assert generated["audit_entries"] == 1_500
    assert await db.fetchval("SELECT count(*) FROM reports") == 90
    assert await db.fetchval("SELECT count(*) FROM report_versions") == 90
    years = await db.fetch(
        "SELECT DISTINCT extract(year FROM occurred_at)::int AS y FROM reports ORDER BY 1"
    )
    assert [r["y"] for r in years] == [2020, 2021]
    per_chain = await db.fetch(
        "SELECT chain, count(*) AS n, min(recorded_at) AS first FROM audit_entries "
        "WHERE chain LIKE 'clinic:N%' AND action <> 'clinic.created' GROUP BY chain ORDER BY chain"
    )
    assert [(r["chain"], r["n"]) for r in per_chain] == [
        ("clinic:N001", 500),
        ("clinic:N002", 500),
        ("clinic:N003", 500),
    ]
    assert all(r["first"].year == 2020 for r in per_chain)
    # Patients' and reports' entries name the clinic's own patients and reports.
    strangers = await db.fetchval(
        "SELECT count(*) FROM audit_entries e JOIN clinics c ON 'clinic:' || c.code = e.chain "
        "WHERE (e.object_type = 'report' AND e.object_id IS NOT NULL AND NOT EXISTS "
        "  (SELECT 1 FROM reports r WHERE r.id::text = e.object_id AND r.clinic_id = c.id)) "
        "OR (e.object_type = 'patient' AND NOT EXISTS (SELECT 1 FROM treatment_sessions s "
        "  WHERE s.patient_ref = e.object_id AND s.clinic_id = c.id))"
    )
    assert strangers == 0
    assert await db.fetchval("SELECT count(*) FROM audit_entries WHERE object_type = 'patient'")

    assert generated["checkpoints_signed"] >= 3
    full = await verify_chains(db, full=True)
    assert full.ok, full
    # The service appends after the history, and the chains still verify from the heads
    # signed by the generator.
    event = audit.AuditEvent(
        actor=audit.Actor(name="system:test"), action="report.listed", clinic="N002"
    )
    async with db.transaction():
        await audit.append(db, event)
    incremental = await verify_chains(db, public_key=signer.public_key)
    assert incremental.ok, incremental
    assert incremental.entries < 20  # walked from the signed heads, not from the start
