"""The authorization matrix: no role ever reaches another clinic's data, on any route.

The routes come from the app itself (``create_app().routes``), so a new route cannot be
forgotten: every method of every route must be known here, as

- ``PUBLIC``: needs no sign-in and shows no clinic's data (the reason is written down);
- a route with path parameters: each parameter is filled by ``FOREIGN_IDS`` with the id
  of an object of a clinic the user does not belong to (or by ``GLOBAL_IDS`` when the
  object belongs to no clinic, such as a rule); ``BODIES`` gives writes a valid body,
  so the request reaches the authorization check rather than stopping at validation;
- a route without path parameters: ``PROBES`` lists the requests that point it at the
  foreign clinic (``?clinic=...``) and the plain requests whose answer must simply hold
  none of the foreign clinic's data.

``test_every_route_is_in_the_matrix`` fails, naming what to add, for a route or path
parameter it does not know. The matrix itself runs against a real ``safetyreport serve``:
each role (nurse, safety officer, auditor, admin; every user belongs to clinic OWN only)
calls every route. A request aimed at the foreign clinic must be answered 403 or 404;
no answer, whatever its status, may contain the foreign clinic's data (its report,
alert and notification ids, patient, free text, name or code) unless the request itself
named it; no answer may be a 5xx. Afterwards the foreign clinic's data is unchanged.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.routes import HTTPRoute

from safetyreport.app import create_app
from safetyreport.auth.permissions import Role
from safetyreport.settings import Settings
from tests.helpers.processes import serving
from tests.helpers.reports import bp_report, misuse_report
from tests.helpers.service import UserSpec, login, seed
from tests.helpers.waiting import eventually

OWN, FOREIGN = "OWN", "ZZFOREIGN"
FOREIGN_NAME = "Foreign Secret Clinic"
FOREIGN_PATIENT = "PT-FOREIGN-SECRET"
FOREIGN_TEXT = "FOREIGN-SECRET-NOTE"
ROLES: tuple[Role, ...] = ("nurse", "safety_officer", "auditor", "admin")
USERS = {role: f"own-{role.replace('_', '-')}" for role in ROLES}
DENIED = frozenset({403, 404})
WEBHOOK_ENV = {
    "SAFETYREPORT_WEBHOOK_URLS": "http://127.0.0.1:9/hook",
    "SAFETYREPORT_WEBHOOK_SECRET": "matrix-secret-long-enough-for-hmac-32",
    # Paging on, to a port nobody listens on: pages are written (and fail), so the
    # ledger has the foreign clinic's pages to leak.
    "SAFETYREPORT_SMTP_HOST": "127.0.0.1",
    "SAFETYREPORT_SMTP_PORT": "9",
    "SAFETYREPORT_SMTP_TLS": "none",
    "SAFETYREPORT_SMTP_SENDER": "matrix@own.example",
}
FOREIGN_ON_CALL = f"oncall-{FOREIGN}@secret.example"


@dataclass(frozen=True)
class Foreign:
    """The other clinic's objects, created through the API by its own staff."""

    report_ids: tuple[str, ...]
    alert_ids: tuple[str, ...]
    notification_ids: tuple[str, ...]
    # Its clinic rule and its override of a network rule; its pending rule change.
    rule_ids: tuple[str, ...] = ()
    change_ids: tuple[int, ...] = ()
    page_ids: tuple[str, ...] = ()
    # Its treatment session, discharged, and the session's REMS form.
    session_ids: tuple[str, ...] = ()
    form_ids: tuple[str, ...] = ()
    # An observation of that session.
    observation_ids: tuple[str, ...] = ()

    def markers(self) -> set[str]:
        """Strings that only the foreign clinic's data contains."""
        return {
            *self.report_ids,
            *self.alert_ids,
            *self.notification_ids,
            *self.rule_ids,
            *self.page_ids,
            *self.session_ids,
            *self.form_ids,
            *self.observation_ids,
            FOREIGN_ON_CALL,
            FOREIGN_PATIENT,
            FOREIGN_TEXT,
            FOREIGN_NAME,
            FOREIGN,
        }


@dataclass(frozen=True)
class Probe:
    """One request to a route. ``denied``: it names the foreign clinic, so it must be
    refused (403 or 404); otherwise any answer but a 5xx, without foreign data."""

    query: dict[str, str] = field(default_factory=dict)
    body: Callable[[Foreign], Any] | None = None
    denied: bool = True
    # Refusals other than 403 and 404 that this probe accepts, and why.
    also_refused: frozenset[int] = frozenset()
    # Sign out (or similar): the request gets a session of its own.
    own_session: bool = False
    # An endless event stream: read until the user's own event arrives, then hang up.
    stream: bool = False


# --- what the matrix knows -------------------------------------------------------------

PUBLIC: dict[tuple[str, str], str] = {
    ("GET", "/health"): "liveness; says nothing of any clinic",
    ("GET", "/health/ready"): "readiness for a load balancer; says nothing of any clinic",
    ("GET", "/metrics"): "for a Prometheus scraper with the metrics token (404 without one); "
    "counts by route template, kind and severity, never a clinic's data",
    ("POST", "/api/v1/auth/login"): "signing in",
    ("GET", "/login"): "the login form",
    ("POST", "/login"): "the login form, posted",
    ("GET", "/offline"): "the static page shown offline",
    ("GET", "/sw.js"): "the service worker script",
    ("GET", "/static/{file_path:path}"): "static assets",
    ("GET", "/schema"): "the API description",
    ("GET", "/schema/openapi.json"): "the API description",
    ("GET", "/schema/{path:str}"): "the API description",
}

# Path parameters: the id of the foreign clinic's object of that kind.
FOREIGN_IDS: dict[str, Callable[[Foreign], str]] = {
    "report_id": lambda f: f.report_ids[0],
    "alert_id": lambda f: f.alert_ids[0],
    "notification_id": lambda f: f.notification_ids[0],
    "rule_id": lambda f: f.rule_ids[0],
    "change_id": lambda f: str(f.change_ids[0]),
    "clinic": lambda f: FOREIGN,
    "session_id": lambda f: f.session_ids[0],
    "form_id": lambda f: f.form_ids[0],
    "observation_id": lambda f: f.observation_ids[0],
    # The foreign clinic's patient (its reports and session): unknown at OWN, so 404.
    "patient_ref": lambda f: FOREIGN_PATIENT,
}
# Path parameters naming objects that belong to no clinic: (value, why that is fine).
GLOBAL_IDS: dict[str, tuple[str, str]] = {}
FOREIGN_RULE = "zzforeign-secret-rule"
FOREIGN_OVERRIDE = "zzforeign-secret-override"
FOREIGN_PROTECTED = "zzforeign-secret-crisis"


def _rule_body(f: Foreign) -> dict[str, Any]:
    return {
        "name": "probe",
        "severity": "info",
        "description": "probe",
        "guidance": "probe",
        "definition": {"when": {"field": "systolic", "op": ">", "value": 999}},
    }


# Valid bodies for writes to routes with path parameters (None: the route takes none).
BODIES: dict[tuple[str, str], Callable[[Foreign], Any] | None] = {
    ("POST", "/api/v1/reports/{report_id:uuid}/amendments"): lambda f: {
        "reason": "probe",
        "systolic": 150,
    },
    ("POST", "/api/v1/alerts/{alert_id:uuid}/acknowledge"): lambda f: {},
    ("POST", "/api/v1/alerts/{alert_id:uuid}/assign"): lambda f: {"user": USERS["admin"]},
    ("POST", "/api/v1/alerts/{alert_id:uuid}/resolve"): lambda f: {"reason": "probe"},
    ("POST", "/api/v1/alerts/{alert_id:uuid}/reopen"): lambda f: {"reason": "probe"},
    ("POST", "/api/v1/alerts/{alert_id:uuid}/notes"): lambda f: {"text": "probe"},
    ("POST", "/api/v1/alerts/{alert_id:uuid}/override"): lambda f: {"reason": "probe"},
    ("PUT", "/api/v1/rules/{rule_id:str}"): _rule_body,
    ("POST", "/api/v1/rules/{rule_id:str}/disable"): None,
    ("POST", "/api/v1/rules/changes/{change_id:int}/approve"): None,
    ("POST", "/api/v1/rules/changes/{change_id:int}/reject"): None,
    ("POST", "/api/v1/sessions/{session_id:uuid}/dose"): lambda f: {
        "dose_mg": 56,
        "dosed_at": "2026-01-15T10:00:00Z",
    },
    ("POST", "/api/v1/sessions/{session_id:uuid}/observations"): lambda f: {
        "observed_at": "2026-01-15T10:40:00Z",
        "systolic": 150,
        "diastolic": 90,
    },
    ("POST", "/api/v1/sessions/{session_id:uuid}/discharge"): lambda f: {
        "discharged_at": "2026-01-15T12:10:00Z",
        "moaa_s": 5,
        "systolic": 130,
        "diastolic": 80,
        "escort": True,
        "override_reason": "probe",
    },
    ("POST", "/api/v1/sessions/{session_id:uuid}/amendments"): lambda f: {
        "reason": "probe",
        "prescriber": "Dr Probe",
    },
    (
        "POST",
        "/api/v1/sessions/{session_id:uuid}/observations/{observation_id:uuid}/amendments",
    ): lambda f: {"reason": "probe", "pulse": 70},
    ("POST", "/api/v1/rems/forms/{form_id:uuid}/submission"): lambda f: {
        "confirmation_number": "RMS-PROBE-1"
    },
    # Emptying the roster would show in foreign_state().
    ("PUT", "/api/v1/clinics/{clinic:str}/on-call"): lambda f: {"entries": []},
}


def _foreign_report(f: Foreign) -> dict[str, Any]:
    return bp_report(
        FOREIGN, patient_ref="PT-PROBE", systolic=190, diastolic=100, symptoms=["chest_pain"]
    )


def _foreign_session(f: Foreign) -> dict[str, Any]:
    return session_body(FOREIGN, "PT-PROBE")


def session_body(clinic: str, patient_ref: str) -> dict[str, Any]:
    """A treatment session with a checklist within every limit."""
    return {
        "clinic": clinic,
        "patient_ref": patient_ref,
        "drug": "esketamine_nasal",
        "checklist": {
            "systolic": 124,
            "diastolic": 80,
            "fasting": True,
            "cns_depressants": False,
            "pregnancy_possible": False,
            "transport_arranged": True,
        },
    }


SEEN_NOTHING = Probe(denied=False)
EXPORT_FORMATS = ("csv", "ndjson", "fhir")

# Routes without path parameters: how to aim each at the foreign clinic.
PROBES: dict[tuple[str, str], list[Probe]] = {
    ("GET", "/api/v1/me"): [SEEN_NOTHING],
    ("POST", "/api/v1/auth/logout"): [Probe(denied=False, own_session=True)],
    ("GET", "/api/v1/auth/lockouts"): [SEEN_NOTHING],
    ("GET", "/api/v1/reports"): [
        Probe(query={"clinic": FOREIGN}),
        SEEN_NOTHING,
        Probe(query={"patient_ref": FOREIGN_PATIENT}, denied=False),
    ],
    ("POST", "/api/v1/reports"): [
        # A body naming a clinic of someone else's is invalid input (422 on "clinic",
        # as tests/test_isolation.py pins), indistinguishable from a clinic that does
        # not exist; nothing is stored (checked at the end).
        Probe(body=_foreign_report, also_refused=frozenset({422}))
    ],
    ("GET", "/api/v1/sessions"): [
        Probe(query={"clinic": FOREIGN}),
        SEEN_NOTHING,
        Probe(query={"patient_ref": FOREIGN_PATIENT}, denied=False),
    ],
    ("POST", "/api/v1/sessions"): [
        # As for reports: a clinic of someone else's is invalid input (422 on "clinic").
        Probe(body=_foreign_session, also_refused=frozenset({422}))
    ],
    ("GET", "/api/v1/analytics/rates"): [
        Probe(query={"clinic": FOREIGN}),
        SEEN_NOTHING,
        Probe(query={"group": "clinic", "format": "csv"}, denied=False),
    ],
    ("GET", "/api/v1/analytics/control-chart"): [
        Probe(query={"event_type": "kind:adverse_event", "clinic": FOREIGN}),
        Probe(query={"event_type": "kind:adverse_event"}, denied=False),
    ],
    ("GET", "/api/v1/analytics/funnel"): [
        Probe(query={"event_type": "kind:adverse_event", "clinic": FOREIGN}),
        Probe(query={"event_type": "kind:adverse_event"}, denied=False),
    ],
    # Runs the network's check; answers the signals of the caller's clinics only.
    ("POST", "/api/v1/analytics/signals/run"): [SEEN_NOTHING],
    ("GET", "/api/v1/rems/forms"): [
        Probe(query={"clinic": FOREIGN}),
        SEEN_NOTHING,
        Probe(query={"status": "due"}, denied=False),
    ],
    ("GET", "/api/v1/reports/export"): [
        *(Probe(query={"clinic": FOREIGN, "format": fmt}) for fmt in EXPORT_FORMATS),
        *(Probe(query={"format": fmt}, denied=False) for fmt in EXPORT_FORMATS),
    ],
    ("GET", "/api/v1/audit/verify"): [SEEN_NOTHING, Probe(query={"full": "true"}, denied=False)],
    ("GET", "/api/v1/audit/entries"): [Probe(query={"clinic": FOREIGN}), SEEN_NOTHING],
    ("GET", "/api/v1/audit/export"): [
        Probe(query={"clinic": FOREIGN}),
        Probe(query={"clinic": FOREIGN, "format": "csv"}),
        Probe(query={"format": "ndjson"}, denied=False),
    ],
    ("POST", "/api/v1/audit/export/verify"): [Probe(body=lambda f: b"", denied=False)],
    ("GET", "/api/v1/audit/public-key"): [SEEN_NOTHING],
    ("GET", "/api/v1/audit/verifier.py"): [SEEN_NOTHING],
    ("GET", "/api/v1/audit/checkpoints"): [
        Probe(query={"clinic": FOREIGN}),
        Probe(query={"clinic": FOREIGN, "latest": "true"}),
        SEEN_NOTHING,
        Probe(query={"latest": "true"}, denied=False),
    ],
    ("POST", "/api/v1/audit/checkpoints"): [Probe(query={"clinic": FOREIGN}), SEEN_NOTHING],
    ("GET", "/api/v1/alerts"): [
        Probe(query={"clinic": FOREIGN}),
        SEEN_NOTHING,
        Probe(query={"rule": "bp-hypertensive-crisis"}, denied=False),
    ],
    ("GET", "/api/v1/alerts/stream"): [
        Probe(query={"last_event_id": "0"}, denied=False, stream=True)
    ],
    ("GET", "/api/v1/rules"): [SEEN_NOTHING],
    ("POST", "/api/v1/rules"): [
        Probe(body=lambda f: {}, denied=False),
        # A rule for the foreign clinic: 422 on "clinics", as for reports (no such clinic).
        Probe(
            body=lambda f: {**_rule_body(f), "id": "probe-rule", "clinics": [FOREIGN]},
            also_refused=frozenset({422}),
        ),
    ],
    ("GET", "/api/v1/rules/changes"): [
        SEEN_NOTHING,
        Probe(query={"status": "pending"}, denied=False),
    ],
    ("GET", "/api/v1/notifications"): [
        SEEN_NOTHING,
        Probe(query={"alert": "{alert}"}, denied=False),
    ],
    ("GET", "/api/v1/pages"): [
        Probe(query={"clinic": FOREIGN}),
        SEEN_NOTHING,
        Probe(query={"alert": "{alert}"}, denied=False),
    ],
    # Web pages (a bearer token works there as it does on the API).
    ("GET", "/"): [SEEN_NOTHING],
    ("GET", "/report"): [SEEN_NOTHING],
    ("GET", "/sessions/flowsheet"): [SEEN_NOTHING],
    ("GET", "/report/recent"): [SEEN_NOTHING],
    ("GET", "/alerts"): [SEEN_NOTHING],
    ("GET", "/audit"): [SEEN_NOTHING],
    ("GET", "/patients"): [
        SEEN_NOTHING,
        # The search box: sent on to the patient's page (which reads nothing itself).
        Probe(query={"patient_ref": FOREIGN_PATIENT}, denied=False),
    ],
    ("GET", "/rems"): [SEEN_NOTHING],
    # The dashboard's shell: its script asks the analytics API (which checks the clinic).
    ("GET", "/analytics"): [SEEN_NOTHING],
    ("GET", "/web/session"): [SEEN_NOTHING],
    ("POST", "/logout"): [Probe(denied=False, own_session=True)],
}

# Known leaks, each with the reason it is not fixed yet: (METHOD, path, role) -> reason.
# Checked strictly: a listed leak that no longer happens fails the test (remove it here).
KNOWN_LEAKS: dict[tuple[str, str, str], str] = {}


# --- the routes of the app ------------------------------------------------------------

_PARAM = re.compile(r"\{([^}:]+)(?::[^}]+)?\}")


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # as the app names it, e.g. /api/v1/reports/{report_id:uuid}
    params: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def app_endpoints() -> list[Endpoint]:
    """Every method of every route of the app (OPTIONS and HEAD answer as GET does)."""
    app = create_app(Settings.from_env({}))
    found = []
    for route in app.routes:
        params = tuple(_PARAM.findall(route.path))
        if not isinstance(route, HTTPRoute):
            found.append(Endpoint(type(route).__name__, route.path, params))
            continue
        for handler in route.route_handlers:
            for method in sorted(handler.http_methods - {"OPTIONS", "HEAD"}):
                found.append(Endpoint(method, route.path, params))
    return found


def problems_with(endpoint: Endpoint) -> list[str]:
    """What the matrix lacks to probe ``endpoint``; empty when it knows how."""
    key = (endpoint.method, endpoint.path)
    if key in PUBLIC:
        return []
    if not endpoint.params:
        if key in PROBES:
            return []
        return [
            f"{endpoint}: add it to PROBES in tests/test_authz_matrix.py (requests that aim "
            "it at the foreign clinic, e.g. ?clinic=FOREIGN, and plain ones whose answer "
            "must hold no foreign data), or to PUBLIC with the reason it needs no sign-in"
        ]
    problems = [
        f"{endpoint}: no id for path parameter {name!r}; add to FOREIGN_IDS in "
        "tests/test_authz_matrix.py a function giving the id of the foreign clinic's "
        "object of that kind (create the object in foreign_clinic()), or to GLOBAL_IDS "
        "if such objects belong to no clinic"
        for name in endpoint.params
        if name not in FOREIGN_IDS and name not in GLOBAL_IDS
    ]
    if endpoint.method in ("POST", "PUT", "PATCH") and key not in BODIES:
        problems.append(
            f"{endpoint}: add a valid body to BODIES in tests/test_authz_matrix.py (None if "
            "it takes none), so the request reaches the authorization check"
        )
    return problems


def test_every_route_is_in_the_matrix() -> None:
    endpoints = app_endpoints()
    problems = [problem for endpoint in endpoints for problem in problems_with(endpoint)]
    assert not problems, "routes the authorization matrix cannot probe:\n" + "\n".join(problems)
    known = {(e.method, e.path) for e in endpoints}
    stale = [k for k in (*PUBLIC, *PROBES, *BODIES) if k not in known]
    assert not stale, f"entries for routes the app no longer has: {stale}"


# --- the world: two clinics ------------------------------------------------------------


async def foreign_clinic(base_url: str, db: asyncpg.Connection[Any]) -> Foreign:
    """The foreign clinic's report and alerts (and their notifications and pages), made by
    its staff, and its on-call roster."""
    await db.execute(
        "INSERT INTO on_call (clinic_id, position, user_id, email)"
        " SELECT c.id, 1, u.id, $2 FROM clinics c, users u"
        " WHERE c.code = $1 AND u.username = 'foreign-officer'",
        FOREIGN,
        FOREIGN_ON_CALL,
    )
    nurse = await login(base_url, "foreign-nurse")
    officer = await login(base_url, "foreign-officer")
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        bodies = [
            bp_report(
                FOREIGN,
                patient_ref=FOREIGN_PATIENT,
                systolic=190,
                diastolic=100,
                symptoms=["chest_pain"],
            ),
            misuse_report(FOREIGN, patient_ref=FOREIGN_PATIENT, description=FOREIGN_TEXT),
        ]
        report_ids = []
        for body in bodies:
            created = await http.post(
                "/api/v1/reports",
                json=body,
                headers={**nurse, "Idempotency-Key": str(uuid.uuid4())},
            )
            assert created.status_code == 201, created.text
            report_ids.append(created.json()["id"])
        opened = await http.post(
            "/api/v1/sessions",
            json=session_body(FOREIGN, FOREIGN_PATIENT),
            headers={**nurse, "Idempotency-Key": str(uuid.uuid4())},
        )
        assert opened.status_code == 201, opened.text
        session_ids = (opened.json()["id"],)
        observed = await http.post(
            f"/api/v1/sessions/{session_ids[0]}/observations",
            json={"observed_at": datetime.now(UTC).isoformat(), "pulse": 72},
            headers={**nurse, "Idempotency-Key": str(uuid.uuid4())},
        )
        assert observed.status_code == 201, observed.text
        # Discharged (no dose: the criteria timed from it do not apply), it has a form.
        discharged = await http.post(
            f"/api/v1/sessions/{session_ids[0]}/discharge",
            json={
                "discharged_at": datetime.now(UTC).isoformat(),
                "moaa_s": 5,
                "systolic": 124,
                "diastolic": 80,
                "escort": True,
            },
            headers={**nurse, "Idempotency-Key": str(uuid.uuid4())},
        )
        assert discharged.status_code == 200, discharged.text
        forms = (await http.get("/api/v1/rems/forms", headers=officer)).json()["items"]
        form_ids = tuple(form["id"] for form in forms)
        assert len(form_ids) == 1, forms
        alerts = (await http.get("/api/v1/alerts", headers=officer)).json()["items"]
        assert alerts, "the foreign reports raised no alert"
        for alert in alerts:
            noted = await http.post(
                f"/api/v1/alerts/{alert['id']}/notes", json={"text": FOREIGN_TEXT}, headers=officer
            )
            assert noted.status_code == 201, noted.text
    alert_ids = tuple(alert["id"] for alert in alerts)
    notes = await db.fetch(
        "SELECT id::text FROM notifications WHERE alert_id = ANY($1::uuid[])", list(alert_ids)
    )
    assert notes, "no notification was queued for the foreign alerts"
    change_id = await foreign_rules(base_url, officer)

    async def paged() -> bool:
        count: int = await db.fetchval(
            "SELECT count(*) FROM pages WHERE alert_id = ANY($1::uuid[])", list(alert_ids)
        )
        return count > 0

    await eventually(paged, "the foreign clinic's on-call person to be paged")
    pages = await db.fetch(
        "SELECT id::text FROM pages WHERE alert_id = ANY($1::uuid[])", list(alert_ids)
    )
    return Foreign(
        tuple(report_ids),
        alert_ids,
        tuple(r["id"] for r in notes),
        (FOREIGN_RULE, FOREIGN_OVERRIDE, FOREIGN_PROTECTED),
        (change_id,),
        tuple(r["id"] for r in pages),
        session_ids,
        form_ids,
        (observed.json()["id"],),
    )


async def foreign_rules(base_url: str, officer: dict[str, str]) -> int:
    """The foreign clinic's own rule, its override of a network rule, and its proposed
    override of a protected rule (waiting for approval); the proposal's id."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        own = {
            "id": FOREIGN_RULE,
            "clinics": [FOREIGN],
            "name": FOREIGN_TEXT,
            "severity": "info",
            "description": FOREIGN_TEXT,
            "guidance": FOREIGN_TEXT,
            "definition": {"when": {"field": "systolic", "op": ">", "value": 999}},
        }
        created = await http.post("/api/v1/rules", json=own, headers=officer)
        assert created.status_code == 201, created.text
        for network_id, rule_id, status in (
            ("dissociation-present", FOREIGN_OVERRIDE, 201),
            ("bp-hypertensive-crisis", FOREIGN_PROTECTED, 202),
        ):
            network = (await http.get(f"/api/v1/rules/{network_id}", headers=officer)).json()
            override = {
                **{k: network[k] for k in ("name", "severity", "definition", "ack_minutes")},
                "guidance": FOREIGN_TEXT,
                "id": rule_id,
                "clinics": [FOREIGN],
                "overrides": network_id,
                "description": FOREIGN_TEXT,
            }
            created = await http.post("/api/v1/rules", json=override, headers=officer)
            assert created.status_code == status, created.text
    change_id: int = created.json()["id"]
    return change_id


async def own_clinic(base_url: str) -> str:
    """A crisis report in the users' own clinic: its alert is what they should see."""
    nurse = await login(base_url, USERS["nurse"])
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        created = await http.post(
            "/api/v1/reports",
            json=bp_report(
                OWN, patient_ref="PT-OWN", systolic=190, diastolic=100, symptoms=["chest_pain"]
            ),
            headers={**nurse, "Idempotency-Key": str(uuid.uuid4())},
        )
        assert created.status_code == 201, created.text
        officer = await login(base_url, USERS["safety_officer"])
        alerts = (await http.get("/api/v1/alerts", headers=officer)).json()["items"]
    assert alerts, "the own clinic's report raised no alert"
    alert_id: str = alerts[0]["id"]
    return alert_id


async def foreign_state(db: asyncpg.Connection[Any]) -> list[Any]:
    """Everything about the foreign clinic a request could change."""
    rows = await db.fetch(
        """
        SELECT 'report' AS kind, r.id::text, r.current_version::text AS state
          FROM reports r JOIN clinics c ON c.id = r.clinic_id WHERE c.code = $1
        UNION ALL
        SELECT 'alert', a.id::text,
               concat_ws('/', a.status, a.revision, a.assigned_to, a.escalation_level)
          FROM alerts a JOIN clinics c ON c.id = a.clinic_id WHERE c.code = $1
        UNION ALL
        SELECT 'events', c.code, count(e.id)::text
          FROM alert_events e JOIN clinics c ON c.id = e.clinic_id WHERE c.code = $1
          GROUP BY c.code
        UNION ALL
        SELECT 'rule', r.id, concat_ws('/', r.version, r.enabled)
          FROM alert_rules r JOIN clinics c ON c.id = ANY(r.clinic_ids) WHERE c.code = $1
        UNION ALL
        SELECT 'session', s.id::text,
               concat_ws('/', s.version, s.updated_at, s.dosed_at, s.discharged_at)
          FROM treatment_sessions s JOIN clinics c ON c.id = s.clinic_id WHERE c.code = $1
        UNION ALL
        SELECT 'observation', o.id::text, concat_ws('/', o.version, o.vitals)
          FROM session_observations o JOIN treatment_sessions s ON s.id = o.session_id
          JOIN clinics c ON c.id = s.clinic_id WHERE c.code = $1
        UNION ALL
        SELECT 'rems form', f.id::text, concat_ws('/', f.submitted_at, f.confirmation_number)
          FROM rems_forms f JOIN clinics c ON c.id = f.clinic_id WHERE c.code = $1
        UNION ALL
        SELECT 'on call', o.position::text, concat_ws('/', o.user_id, o.email)
          FROM on_call o JOIN clinics c ON c.id = o.clinic_id WHERE c.code = $1
        UNION ALL
        SELECT 'rule change', ch.id::text, ch.status
          FROM alert_rule_changes ch JOIN clinics c ON c.id = ANY(ch.clinic_ids)
         WHERE c.code = $1
        ORDER BY 1, 2
        """,
        FOREIGN,
    )
    return [tuple(r) for r in rows]


# --- running the probes ----------------------------------------------------------------


def fill(endpoint: Endpoint, foreign: Foreign) -> str:
    def value(match: re.Match[str]) -> str:
        name = match[1]
        if name in FOREIGN_IDS:
            return FOREIGN_IDS[name](foreign)
        return GLOBAL_IDS[name][0]

    return _PARAM.sub(value, endpoint.path)


def probes_of(endpoint: Endpoint) -> list[Probe]:
    key = (endpoint.method, endpoint.path)
    if endpoint.params:
        aims = any(name in FOREIGN_IDS for name in endpoint.params)
        return [Probe(body=BODIES.get(key), denied=aims)]
    return PROBES[key]


@dataclass(frozen=True)
class Answer:
    status: int
    text: str
    request: str  # the request as sent: what it named may come back in the answer


async def send(
    http: httpx.AsyncClient,
    endpoint: Endpoint,
    probe: Probe,
    headers: dict[str, str],
    foreign: Foreign,
    own_alert: str,
) -> Answer:
    query = {k: v.replace("{alert}", foreign.alert_ids[0]) for k, v in probe.query.items()}
    url = fill(endpoint, foreign)
    headers = {**headers, "Idempotency-Key": str(uuid.uuid4())}
    body = probe.body(foreign) if probe.body else None
    content = body if isinstance(body, bytes) else None
    payload = None if body is None or content is not None else body
    request = http.build_request(
        endpoint.method, url, params=query, json=payload, content=content, headers=headers
    )
    sent = f"{request.url} {json.dumps(payload) if payload is not None else ''}"
    if not probe.stream:
        response = await http.send(request)
        return Answer(response.status_code, response.text, sent)
    response = await http.send(request, stream=True)
    try:
        if response.status_code != 200:
            await response.aread()
            return Answer(response.status_code, response.text, sent)
        lines = []
        async with asyncio.timeout(15):  # replay comes first; own_alert is in it
            async for line in response.aiter_lines():
                lines.append(line)
                if own_alert in line:
                    break
        return Answer(response.status_code, "\n".join(lines), sent)
    finally:
        await response.aclose()


def violations_of(answer: Answer, probe: Probe, foreign: Foreign) -> list[str]:
    found = []
    if answer.status >= 500:
        found.append(f"server error {answer.status}")
    if probe.denied and answer.status not in DENIED | probe.also_refused:
        found.append(f"answered {answer.status}, not 403 or 404")
    leaked = sorted(m for m in foreign.markers() if m in answer.text and m not in answer.request)
    if leaked:
        found.append(f"foreign data in the answer: {leaked}")
    return found


@pytest.mark.end_to_end
@pytest.mark.timeout(180)
async def test_no_role_reaches_another_clinics_data(
    database_url: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    endpoints = app_endpoints()
    unknown = [p for e in endpoints for p in problems_with(e)]
    assert not unknown, "routes the matrix cannot probe:\n" + "\n".join(unknown)

    await seed(
        database_url,
        {OWN: "Own Clinic", FOREIGN: FOREIGN_NAME},
        [
            *(UserSpec(USERS[role], role, (OWN,)) for role in ROLES),
            UserSpec("foreign-nurse", "nurse", (FOREIGN,)),
            UserSpec("foreign-officer", "safety_officer", (FOREIGN,)),
        ],
    )
    # Probes that list or search run before the ones that name foreign ids, so an audit
    # entry recording a refused attempt (with the id the user sent) is not taken for a leak.
    ordered = sorted(
        (e for e in endpoints if (e.method, e.path) not in PUBLIC), key=lambda e: bool(e.params)
    )
    async with serving(database_url, tmp_path, "matrix", env=WEBHOOK_ENV) as service:
        foreign = await foreign_clinic(service.base_url, db)
        own_alert = await own_clinic(service.base_url)
        before = await foreign_state(db)
        tokens = {role: await login(service.base_url, USERS[role]) for role in ROLES}
        results: dict[tuple[str, str, str], list[str]] = {}
        async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as http:
            for endpoint in ordered:
                for role in ROLES:
                    for probe in probes_of(endpoint):
                        headers = tokens[role]
                        if probe.own_session:
                            headers = await login(service.base_url, USERS[role])
                        answer = await send(http, endpoint, probe, headers, foreign, own_alert)
                        found = violations_of(answer, probe, foreign)
                        if found:
                            where = (endpoint.method, endpoint.path, role)
                            detail = f"{answer.request}: {'; '.join(found)}"
                            results.setdefault(where, []).append(detail)
        after = await foreign_state(db)

    leaks = {k: v for k, v in results.items() if k not in KNOWN_LEAKS}
    assert not leaks, "\n".join(
        f"{method} {path} as {role}: {detail}"
        for (method, path, role), details in leaks.items()
        for detail in details
    )
    fixed = [k for k in KNOWN_LEAKS if k not in results]
    assert not fixed, f"known leaks that no longer happen (remove them from KNOWN_LEAKS): {fixed}"
    assert after == before, "the foreign clinic's data changed"
    stored = await db.fetchval("SELECT count(*) FROM reports WHERE patient_ref = 'PT-PROBE'")
    assert stored == 0, "a report for the foreign clinic was stored"
    opened = await db.fetchval(
        "SELECT count(*) FROM treatment_sessions WHERE patient_ref = 'PT-PROBE'"
    )
    assert opened == 0, "a session for the foreign clinic was stored"
