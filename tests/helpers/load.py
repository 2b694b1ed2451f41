"""The load of the fault and failover tests, and what the database must hold afterwards.

The load is the one tablets make: concurrent clients, each submitting distinct valid
blood-pressure reports (every other one a hypertensive emergency) and retrying each with
the same Idempotency-Key until it gets a 2xx. ``assert_stored_exactly_once`` then checks
the database against what the clients were told: every acknowledged report exists
exactly once, nothing exists that no client sent, and each report has its audit entry
and exactly the alerts the default rules give it; every audit chain verifies.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from safetyreport.audit import verify_chains
from tests.helpers.reports import bp_report
from tests.helpers.service import UserSpec, login

REPORTS = "/api/v1/reports"
CRISIS = "bp-hypertensive-crisis"
CLUSTER = "pattern-blood-pressure-cluster"
CLINICS = {"F1": "Fault Clinic One", "F2": "Fault Clinic Two"}
NURSES = [UserSpec(f"nurse{i}", "nurse", tuple(CLINICS)) for i in range(4)]
REPORT_COUNT = 500
CLIENT_COUNT = 20
# Bounds: the whole load, one wait for progress, one outage of the database.
LOAD_SECONDS = 90.0
PROGRESS_SECONDS = 45.0
WEBHOOK_ENV = {
    # Notifications go to a port nobody listens on: the outbox fills, deliveries fail.
    "SAFETYREPORT_WEBHOOK_URLS": "http://127.0.0.1:9/hook",
    "SAFETYREPORT_WEBHOOK_SECRET": "fault-test-secret-long-enough-for-hmac",
}


# --- the load -------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """One report a tablet submits, under one Idempotency-Key, until it gets a 2xx."""

    index: int
    key: str
    clinic: str
    patient_ref: str
    occurred_at: datetime  # distinct per submission: it identifies the stored report
    crosses: bool  # a hypertensive emergency

    def body(self) -> dict[str, Any]:
        systolic, diastolic = (186, 104) if self.crosses else (128, 82)
        return bp_report(
            self.clinic,
            patient_ref=self.patient_ref,
            occurred_at=self.occurred_at.isoformat(),
            systolic=systolic,
            diastolic=diastolic,
            # With a target-organ symptom: a hypertensive emergency (the crisis rule).
            symptoms=["chest_pain"] if self.crosses else [],
            minutes_after_dose=40,
        )


def submissions(count: int, *, patients: int | None = None) -> list[Submission]:
    """``count`` distinct reports; every other one crosses an alert threshold.

    With ``patients`` the reports share that many patients, so concurrent reports
    attach to the same alerts; otherwise each report has a patient of its own.
    """
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    run = uuid.uuid4().hex[:8]
    return [
        Submission(
            index=i,
            key=f"fault-{run}-{i}",
            clinic=list(CLINICS)[i // 2 % len(CLINICS)],  # each clinic gets both kinds
            patient_ref=f"PT-{(i if patients is None else i % patients):04d}",
            occurred_at=start + timedelta(seconds=i),
            crosses=i % 2 == 0,
        )
        for i in range(count)
    ]


@dataclass
class Load:
    """What the clients sent and what they were told."""

    submissions: list[Submission]
    # index -> id of the report, from the 2xx that acknowledged it
    acknowledged: dict[int, str] = field(default_factory=dict)
    replayed: int = 0
    # Every answer that was not a 2xx: status code, or the transport error's class name.
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    # Answers no retry can fix (a 4xx other than 409): the submission is given up.
    refused: list[str] = field(default_factory=list)
    # Bodies of 5xx answers other than 503 (unavailable, retry), for the failure messages.
    server_errors: list[str] = field(default_factory=list)
    # 503 answers without a Retry-After header (a client would not know when to retry).
    unavailable_without_retry_after: int = 0
    # Every attempt: when it started (time.monotonic), how long it took, its outcome.
    samples: list[tuple[float, float, str]] = field(default_factory=list)

    def outcome(self) -> str:
        return (
            f"{len(self.acknowledged)}/{len(self.submissions)} acknowledged, "
            f"{self.replayed} replayed, failures {dict(self.failures)}"
        )


Client = tuple[str, dict[str, str]]  # base URL, authorization headers


async def _submit(
    http: httpx.AsyncClient, headers: dict[str, str], sub: Submission, load: Load
) -> None:
    """Send ``sub`` until it gets a 2xx, retrying with the same key (as tablets do)."""
    attempt = 0
    while True:
        attempt += 1
        started = time.monotonic()
        try:
            response = await http.post(
                REPORTS, json=sub.body(), headers={**headers, "Idempotency-Key": sub.key}
            )
        except httpx.TransportError as exc:
            load.failures[type(exc).__name__] += 1
            load.samples.append((started, time.monotonic() - started, type(exc).__name__))
        else:
            load.samples.append((started, time.monotonic() - started, str(response.status_code)))
            if response.is_success:
                load.acknowledged[sub.index] = response.json()["id"]
                load.replayed += response.headers.get("Idempotency-Replayed") == "true"
                return
            status = response.status_code
            load.failures[str(status)] += 1
            if status == 503 and not response.headers.get("Retry-After"):
                load.unavailable_without_retry_after += 1
            if status >= 500 and status != 503:  # 503: unavailable, retry shortly
                load.server_errors.append(response.text)
            elif status < 500 and status != 409:  # 409: the first attempt is still running
                load.refused.append(f"{sub.key}: {status} {response.text}")
                return
        await asyncio.sleep(min(0.05 * attempt, 0.5))


async def run_load(load: Load, clients: list[Client], seconds: float = LOAD_SECONDS) -> None:
    """Each client takes the next submission and sends it until acknowledged."""
    queue: asyncio.Queue[Submission] = asyncio.Queue()
    for sub in load.submissions:
        queue.put_nowait(sub)

    async def client(base_url: str, headers: dict[str, str]) -> None:
        timeout = httpx.Timeout(20, connect=5)
        async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as http:
            while not queue.empty():
                await _submit(http, headers, queue.get_nowait(), load)

    async with asyncio.timeout(seconds):
        await asyncio.gather(*(client(url, headers) for url, headers in clients))


async def wait_for(
    check: Callable[[], Awaitable[bool] | bool],
    what: str,
    within: float = PROGRESS_SECONDS,
    *,
    load: tuple[asyncio.Task[None], Load] | None = None,
) -> None:
    """Poll ``check`` until it holds; fail after ``within`` s, or if the ``load`` ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        if load is not None and load[0].done():
            load[0].result()  # raises what ended it
            pytest.fail(
                f"the load ended before {what}: {load[1].outcome()}; refused: {load[1].refused[:3]}"
            )
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {within} s waiting for {what}")


def acknowledged_at_least(load: Load, count: int) -> Callable[[], bool]:
    return lambda: len(load.acknowledged) >= count


def told_unavailable(load: Load, count: int) -> Callable[[], bool]:
    return lambda: load.failures["503"] >= count


# --- what the database must hold afterwards -------------------------------------------


def _listing(items: Any, limit: int = 10) -> str:
    items = sorted(items, key=str)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(map(str, items[:limit])) + more


async def assert_stored_exactly_once(db: asyncpg.Connection[Any], load: Load) -> None:
    """The database holds exactly what the clients were told, with audit and alerts."""
    assert not load.refused, f"submissions refused: {load.refused[:5]}"
    subs = {sub.occurred_at: sub for sub in load.submissions}
    rows = await db.fetch(
        "SELECT r.id, r.occurred_at, r.patient_ref, c.code AS clinic"
        " FROM reports r JOIN clinics c ON c.id = r.clinic_id"
    )
    stored: dict[int, list[str]] = collections.defaultdict(list)
    strangers = []
    for row in rows:
        sub = subs.get(row["occurred_at"])
        if sub is None or (row["patient_ref"], row["clinic"]) != (sub.patient_ref, sub.clinic):
            strangers.append(str(row["id"]))
        else:
            stored[sub.index].append(str(row["id"]))
    assert not strangers, f"reports that no client sent: {_listing(strangers)}"
    twice = {i: ids for i, ids in stored.items() if len(ids) > 1}
    assert not twice, f"reports stored more than once (submission: ids): {twice}"
    lost = {i: rid for i, rid in load.acknowledged.items() if stored.get(i) != [rid]}
    assert not lost, (
        f"{len(lost)} acknowledged reports are missing or stored under another id "
        f"(submission: acknowledged id): {_listing(lost.items())}"
    )
    unacknowledged = set(stored) - set(load.acknowledged)
    assert not unacknowledged, f"stored but never acknowledged: {_listing(unacknowledged)}"
    assert len(load.acknowledged) == len(load.submissions), load.outcome()

    report_of = {rid: load.submissions[i] for i, rid in load.acknowledged.items()}
    await _assert_audited(db, report_of)
    await _assert_alerts(db, report_of)
    keys = await db.fetchval("SELECT count(*) FROM idempotency_keys")
    assert keys == len(load.submissions), f"{keys} idempotency keys for {len(report_of)} reports"
    verified = await verify_chains(db)
    assert verified.ok, f"broken audit chains: {verified.broken}"


async def _assert_audited(db: asyncpg.Connection[Any], report_of: dict[str, Submission]) -> None:
    created = collections.Counter(
        r["object_id"]
        for r in await db.fetch(
            "SELECT object_id FROM audit_entries WHERE action = 'report.created'"
        )
    )
    wrong = {rid: created[rid] for rid in report_of if created[rid] != 1}
    assert not wrong, f"reports without exactly one report.created entry: {_listing(wrong.items())}"
    extra = set(created) - set(report_of)
    assert not extra, f"report.created entries of reports that do not exist: {_listing(extra)}"


async def _assert_alerts(db: asyncpg.Connection[Any], report_of: dict[str, Submission]) -> None:
    """Crossing reports have their crisis alert (and the clinic's cluster alert); the others
    have none; no alert exists twice; every alert was opened once, and audited."""
    links = await db.fetch(
        "SELECT ar.report_id::text AS report_id, a.id, a.rule_id, a.group_key, c.code AS clinic,"
        " a.report_count FROM alert_reports ar JOIN alerts a ON a.id = ar.alert_id"
        " JOIN clinics c ON c.id = a.clinic_id"
    )
    by_report: dict[str, list[asyncpg.Record]] = collections.defaultdict(list)
    linked: dict[uuid.UUID, set[str]] = collections.defaultdict(set)
    for link in links:
        by_report[link["report_id"]].append(link)
        linked[link["id"]].add(link["report_id"])

    quiet = [rid for rid, sub in report_of.items() if not sub.crosses and by_report.get(rid)]
    assert not quiet, f"reports below every threshold with alerts: {_listing(quiet)}"
    crossing = {rid: sub for rid, sub in report_of.items() if sub.crosses}
    for rid, sub in crossing.items():
        crises = [link for link in by_report.get(rid, []) if link["rule_id"] == CRISIS]
        assert len(crises) == 1, f"report {rid} ({sub}) has {len(crises)} crisis alerts"
        assert (crises[0]["clinic"], crises[0]["group_key"]) == (sub.clinic, sub.patient_ref)

    # One alert per rule and group (none is resolved here), with all of the group's reports.
    expected: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for rid, sub in crossing.items():
        expected[(sub.clinic, sub.patient_ref)].add(rid)
    alerts = await db.fetch(
        "SELECT a.id, a.rule_id, a.group_key, c.code AS clinic, a.report_count, a.status"
        " FROM alerts a JOIN clinics c ON c.id = a.clinic_id"
    )
    groups = collections.Counter((a["rule_id"], a["clinic"], a["group_key"]) for a in alerts)
    duplicates = [group for group, n in groups.items() if n > 1]
    assert not duplicates, f"alerts raised twice for one rule and group: {duplicates}"
    for alert in alerts:
        assert linked[alert["id"]], f"alert {alert['id']} has no report"
        assert alert["report_count"] == len(linked[alert["id"]]), dict(alert)
        if alert["rule_id"] == CRISIS:
            group = (alert["clinic"], alert["group_key"])
            assert linked[alert["id"]] == expected.pop(group, set()), f"crisis alert {dict(alert)}"
        if alert["rule_id"] == CLUSTER:
            clinic = {rid for rid, sub in crossing.items() if sub.clinic == alert["clinic"]}
            assert linked[alert["id"]] == clinic, f"{alert['clinic']}'s cluster alert"
    assert not expected, f"crisis alerts missing for (clinic, patient): {_listing(expected)}"
    # The cluster rule: 3 or more crossing reports of one clinic within a week.
    per_clinic = collections.Counter(sub.clinic for sub in crossing.values())
    clusters = {a["clinic"] for a in alerts if a["rule_id"] == CLUSTER}
    assert clusters == {c for c, n in per_clinic.items() if n >= 3}, f"cluster alerts: {clusters}"

    opened = collections.Counter(
        r["alert_id"]
        for r in await db.fetch("SELECT alert_id FROM alert_events WHERE action = 'opened'")
    )
    audited = collections.Counter(
        r["object_id"]
        for r in await db.fetch("SELECT object_id FROM audit_entries WHERE action = 'alert.opened'")
    )
    for alert in alerts:
        assert opened[alert["id"]] == 1, f"alert {alert['id']} opened {opened[alert['id']]} times"
        assert audited[str(alert["id"])] == 1, f"alert {alert['id']}: alert.opened entries"


async def logins(base_url: str) -> list[dict[str, str]]:
    return [await login(base_url, nurse.username) for nurse in NURSES]


def clients_of(tokens: list[dict[str, str]], *base_urls: str) -> list[Client]:
    return [(base_urls[i % len(base_urls)], tokens[i % len(tokens)]) for i in range(CLIENT_COUNT)]


def request_errors(stderr: str) -> list[str]:
    """Log lines of requests that ended in an unhandled error (a 500 with a traceback)."""
    return [line for line in stderr.splitlines() if '"unhandled error on' in line]


MAKE_OVERDUE = """
UPDATE alerts SET ack_deadline = now() - interval '1 minute'
WHERE id IN (SELECT id FROM alerts
             WHERE status = 'open' AND escalation_level = 0 AND ack_deadline > now()
             FOR UPDATE SKIP LOCKED)
RETURNING id
"""


async def assert_escalated_once(db: asyncpg.Connection[Any], made_overdue: set[uuid.UUID]) -> None:
    rows = await db.fetch(
        """
        SELECT a.id, a.escalation_level AS level,
               (SELECT count(*) FROM alert_events e
                 WHERE e.alert_id = a.id AND e.action = 'escalated') AS events,
               (SELECT count(*) FROM audit_entries e
                 WHERE e.object_id = a.id::text AND e.action = 'alert.escalated') AS audited,
               (SELECT count(*) FROM notifications n
                 WHERE n.alert_id = a.id AND n.event = 'escalated') AS notified
        FROM alerts a
        """
    )
    assert made_overdue, "no alert was made overdue"
    assert {r["id"] for r in rows} >= made_overdue
    wrong = {
        r["id"]: dict(r)
        for r in rows
        if (r["level"], r["events"], r["audited"], r["notified"])
        != ((1, 1, 1, 1) if r["id"] in made_overdue else (0, 0, 0, 0))
    }
    assert not wrong, f"alerts not escalated exactly once per missed deadline: {wrong}"
