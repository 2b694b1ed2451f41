"""The rules API: rules are data, every change a new version, audited; invalid rules are
refused with a 422 that says what is wrong; only admins and safety officers change them.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from safetyreport.db.pool import connect
from tests.helpers.reports import audit_rows, bp_report, create_report, send_concurrently
from tests.helpers.rules import RULES, RulesAs, Users
from tests.helpers.world import World

# Each default rule and its version: migration 0005 made three rules protected,
# migration 0007 (the clinical model) revised eleven and added the rules at version 1,
# migration 0008 grouped the theft-or-loss rule by report, and migration 0009 gave every
# rule its guidance (and some their acknowledgement minutes).
DEFAULT_VERSIONS = {
    "bp-pre-dose-hold": 3,
    "bp-ctcae-grade-3": 3,
    "bp-markedly-abnormal": 3,
    "bp-severe-hypertension": 2,
    "bp-hypertensive-crisis": 4,
    "target-organ-symptom": 2,
    "hypotension": 2,
    "hypotension-severe": 2,
    "heart-rate": 2,
    "heart-rate-severe": 2,
    "breathing-impaired": 2,
    "respiratory-depression": 4,
    "sedation-moaa-s-3": 3,
    "sedation-moaa-s-1": 3,
    "sedation-loss-of-consciousness": 3,
    "dissociation-present": 3,
    "not-resolved-at-120-minutes": 2,
    "suicidal-behaviour": 2,
    "suicidal-ideation": 2,
    "emergence-rescue-medication": 2,
    "emergence-ed-transfer": 2,
    "vomiting-while-sedated": 2,
    "fall": 2,
    "urological-symptoms": 2,
    "urological-haematuria": 2,
    "pregnancy-exposure": 2,
    "dose-off-protocol": 2,
    "serious-adverse-event": 3,
    "dast10-moderate": 2,
    "pattern-patient-misuse": 2,
    "controlled-substance-theft-or-loss": 5,
    "inventory-discrepancy": 3,
    "pattern-of-discrepancies": 3,
    "suspected-staff-diversion": 2,
    "device-tampered": 2,
    "pattern-blood-pressure-cluster": 3,
    "pattern-patient-repeated-urgent": 2,
    "discharge-override": 1,
    "rems-form-overdue": 1,
    "session-open-too-long": 1,
    "esketamine-frequency": 1,
    "rate-above-control-limit": 1,
}
DEFAULT_RULES = set(DEFAULT_VERSIONS)
# What a rule's body holds (besides its id and scope).
RULE_FIELDS = ("name", "severity", "description", "guidance", "ack_minutes", "definition")
PROTECTED = {
    "bp-hypertensive-crisis",
    "target-organ-symptom",
    "respiratory-depression",
    "suicidal-behaviour",
    "controlled-substance-theft-or-loss",
}
# Installed but off: CADSS above 4 is counted, not queued.
DISABLED = {"dissociation-present"}
# Rules, versions and audited rule changes of a fresh database (the test template is
# migrated without the migrate command's recording of rule versions).
DEFAULT_COUNTS = (len(DEFAULT_VERSIONS), sum(DEFAULT_VERSIONS.values()), 0)


def default_version(rule_id: str) -> int:
    """A default rule's version; a rule a test created is at version 1."""
    return DEFAULT_VERSIONS.get(rule_id, 1)


# The sources of the rules table (docs/clinical-rules.md); each default rule cites one.
SOURCES = (
    "Source:",
    "Spravato",
    "REMS",
    "CTCAE",
    "ACC/AHA",
    "CFR",
    "ICH E2B",
    "DEA",
    "convention",
)

# name -> (role, clinics, all_clinics)
USERS: Users = {
    "nina": ("nurse", ["C1"], False),
    "olga": ("safety_officer", ["C1"], False),
    "aude": ("auditor", ["C1"], False),
    "adam": ("admin", [], True),
    "ada": ("admin", [], True),
}


def pulse_rule(**overrides: Any) -> dict[str, Any]:
    """A custom rule: a pulse above 120 on a blood-pressure report is high."""
    body: dict[str, Any] = {
        "id": "tachycardia",
        "name": "Tachycardia",
        "severity": "high",
        "description": "Pulse above 120 bpm. Source: convention.",
        "guidance": "Recheck the pulse in 5 minutes and tell the prescriber if it stays high.",
        "definition": {
            "kinds": ["blood_pressure"],
            "when": {"field": "pulse", "op": ">", "value": 120},
        },
    }
    body.update(overrides)
    return body


def without_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "id"}


class Rules(RulesAs):
    async def get(self, who: str, rule_id: str) -> dict[str, Any]:
        response = await self.client.get(f"{RULES}/{rule_id}", headers=await self.as_(who))
        assert response.status_code == 200, response.text
        view: dict[str, Any] = response.json()
        return view

    async def alert_of(self, report_id: str, rule_id: str) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self.db.fetchrow(
            "SELECT a.* FROM alerts a JOIN alert_reports ar ON ar.alert_id = a.id"
            " WHERE ar.report_id = $1::uuid AND a.rule_id = $2",
            report_id,
            rule_id,
        )
        return row

    async def report(self, **overrides: Any) -> str:
        view = await create_report(self.client, await self.as_("nina"), bp_report(**overrides))
        report_id: str = view["id"]
        return report_id

    async def versions(self, rule_id: str) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            "SELECT * FROM alert_rule_versions WHERE rule_id = $1 ORDER BY version", rule_id
        )
        return [dict(r) for r in rows]

    async def counts(self) -> tuple[int, int, int]:
        row = await self.db.fetchrow(
            "SELECT (SELECT count(*) FROM alert_rules) AS rules,"
            " (SELECT count(*) FROM alert_rule_versions) AS versions,"
            " (SELECT count(*) FROM audit_entries WHERE action LIKE 'rule.%') AS audits"
        )
        assert row is not None
        return row["rules"], row["versions"], row["audits"]


@pytest.fixture
async def r(world: World) -> Rules:
    await world.clinic("C1")
    return Rules(world, USERS)


@pytest.fixture
async def other_conn(database_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A second owner connection: a concurrent writer the test controls."""
    conn = await connect(database_url)
    yield conn
    await conn.close()


async def wait_for_a_lock_wait(db: asyncpg.Connection[Any]) -> None:
    """Return once some session waits for a lock (pg_locks is read live, not snapshotted)."""
    for _ in range(500):
        if await db.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the request never waited for a lock")


def errors(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 422, response.text
    found: list[dict[str, str]] = response.json()["errors"]
    assert found
    for error in found:
        assert set(error) == {"field", "rule", "message"}, error
        assert error["message"], error
    return found


# --- reading -------------------------------------------------------------------------


async def test_list_has_the_default_rules_each_citing_a_source(r: Rules) -> None:
    response = await r.client.get(RULES, headers=await r.as_("olga"))
    assert response.status_code == 200, response.text
    page = response.json()
    assert set(page) == {"items", "next_cursor"}
    assert page["next_cursor"] is None
    items = page["items"]
    assert len(items) == len(DEFAULT_RULES) == 42
    assert {item["id"] for item in items} == DEFAULT_RULES
    for item in items:
        assert set(item) == {
            "id",
            "version",
            "name",
            "severity",
            "description",
            "guidance",
            "ack_minutes",
            "enabled",
            "definition",
            "updated_at",
            "clinics",
            "overrides",
            "protected",
        }
        expected = (default_version(item["id"]), item["id"] not in DISABLED)
        assert (item["version"], item["enabled"]) == expected, item["id"]
        assert (item["clinics"], item["overrides"]) == (None, None), item["id"]
        assert item["protected"] is (item["id"] in PROTECTED), item["id"]
        assert any(source in item["description"] for source in SOURCES), item
        assert item["definition"]["when"], item["id"]
    by_id = {item["id"]: item for item in items}
    assert by_id["bp-hypertensive-crisis"]["severity"] == "critical"
    assert by_id["dissociation-present"]["severity"] == "info"
    theft = by_id["controlled-substance-theft-or-loss"]
    assert theft["definition"]["dea_deadlines"] is True
    assert "21 CFR 1301.76(b)" in theft["description"]
    assert by_id["pattern-of-discrepancies"]["definition"]["pattern"] == {
        "min_count": 3,
        "window_days": 30,
    }


async def test_read_one_rule(r: Rules) -> None:
    view = await r.get("olga", "bp-hypertensive-crisis")
    assert view["id"] == "bp-hypertensive-crisis"
    assert view["name"] == "Hypertensive emergency"
    assert view["version"] == default_version("bp-hypertensive-crisis")
    # On any kind: vital signs may be given on every report about a patient.
    assert view["definition"]["kinds"] == []
    assert view["definition"]["group_by"] == "patient"
    listed = (await r.client.get(RULES, headers=await r.as_("olga"))).json()["items"]
    assert [item for item in listed if item["id"] == view["id"]] == [view]


@pytest.mark.parametrize("rule_id", ["no-such-rule", "BP-HYPERTENSIVE-CRISIS"])
async def test_an_unknown_rule_is_404(r: Rules, rule_id: str) -> None:
    headers = await r.as_("adam")
    response = await r.client.get(f"{RULES}/{rule_id}", headers=headers)
    assert response.status_code == 404, response.text
    response = await r.update("adam", rule_id, without_id(pulse_rule()))
    assert response.status_code == 404, response.text
    response = await r.disable("adam", rule_id)
    assert response.status_code == 404, response.text
    assert await r.counts() == DEFAULT_COUNTS


# --- creating, versions, firing ------------------------------------------------------


async def test_a_created_rule_fires_and_each_change_is_a_new_version(r: Rules) -> None:
    response = await r.create("adam", pulse_rule())
    assert response.status_code == 201, response.text
    created = response.json()
    assert (created["id"], created["version"], created["enabled"]) == ("tachycardia", 1, True)
    assert created["severity"] == "high"
    assert created["definition"]["when"] == {"field": "pulse", "op": ">", "value": 120}
    assert await r.get("aude", "tachycardia") == created

    # Version 1 fires on a matching report, not on others.
    fired = await r.report(patient_ref="PT-1", pulse=130)
    alert = await r.alert_of(fired, "tachycardia")
    assert alert is not None
    assert (alert["rule_version"], alert["severity"], alert["status"]) == (1, "high", "open")
    assert await r.alert_of(await r.report(patient_ref="PT-2", pulse=115), "tachycardia") is None

    # Version 2: a lower threshold, by another admin (a network rule: safety officers,
    # who are not granted every clinic, may not change it since issue 10).
    [v1] = await r.versions("tachycardia")
    assert (v1["version"], v1["changed_by"]) == (1, "adam")
    changed = without_id(pulse_rule(name="Tachycardia (110)"))
    changed["definition"]["when"]["value"] = 110
    response = await r.update("ada", "tachycardia", changed)
    assert response.status_code == 200, response.text
    updated = response.json()
    assert (updated["version"], updated["name"]) == (2, "Tachycardia (110)")
    assert updated["definition"]["when"]["value"] == 110
    versions = await r.versions("tachycardia")
    assert versions[0] == v1, "version 1 must stay as it was"
    assert [(v["version"], v["changed_by"]) for v in versions] == [(1, "adam"), (2, "ada")]
    assert versions[1]["definition"]["when"]["value"] == 110

    # Version 2 fires where version 1 did not, and the alert says so; the first alert
    # keeps the version that fired it.
    later = await r.report(patient_ref="PT-3", pulse=115)
    second = await r.alert_of(later, "tachycardia")
    assert second is not None
    assert second["rule_version"] == 2
    first = await r.alert_of(fired, "tachycardia")
    assert first is not None
    assert first["rule_version"] == 1

    # Disabled: a new version, and it no longer fires.
    response = await r.disable("adam", "tachycardia")
    assert response.status_code == 200, response.text
    disabled = response.json()
    assert (disabled["version"], disabled["enabled"]) == (3, False)
    assert disabled["definition"] == updated["definition"]
    assert (await r.get("olga", "tachycardia"))["enabled"] is False
    none = await r.report(patient_ref="PT-4", pulse=150)
    assert await r.alert_of(none, "tachycardia") is None
    versions = await r.versions("tachycardia")
    assert [(v["version"], v["enabled"]) for v in versions] == [(1, True), (2, True), (3, False)]
    assert versions[0] == v1

    entries = await r.db.fetch(
        "SELECT * FROM audit_entries WHERE object_id = 'tachycardia' ORDER BY chain, seq"
    )
    # A network rule: recorded in every clinic's chain and the global one.
    changes = [("rule.created", "adam"), ("rule.updated", "ada"), ("rule.updated", "adam")]
    assert [(e["action"], e["actor"], e["chain"]) for e in entries] == [
        *((action, actor, "clinic:C1") for action, actor in changes),
        *((action, actor, "global") for action, actor in changes),
    ]
    assert [e["details"]["version"] for e in entries] == [1, 2, 3] * 2
    assert [e["object_type"] for e in entries] == ["alert_rule"] * 6
    assert [e["actor_role"] for e in entries] == ["admin"] * 6


async def test_a_safety_officer_may_create_a_rule(r: Rules) -> None:
    body = pulse_rule(id="olga-rule", enabled=False, clinics=["C1"])
    response = await r.create("olga", body)
    assert response.status_code == 201, response.text
    assert (response.json()["version"], response.json()["enabled"]) == (1, False)
    assert response.json()["clinics"] == ["C1"]
    [entry] = await audit_rows(r.db, "rule.created", "olga-rule")
    assert (entry["actor"], entry["chain"]) == ("olga", "clinic:C1")
    # Created disabled: it does not fire.
    report = await r.report(pulse=140)
    assert await r.alert_of(report, "olga-rule") is None


async def test_changing_a_default_rule_takes_effect(r: Rules) -> None:
    # The crisis rule is protected: the change takes effect once a second admin approves.
    crisis = await r.get("adam", "bp-hypertensive-crisis")
    body = {k: crisis[k] for k in RULE_FIELDS}
    body["severity"] = "urgent"
    response = await r.update("adam", "bp-hypertensive-crisis", body)
    assert response.status_code == 202, response.text
    change = response.json()["id"]
    approved = await r.client.post(f"{RULES}/changes/{change}/approve", headers=await r.as_("ada"))
    assert approved.status_code == 200, approved.text
    report = await r.report(systolic=185, diastolic=100, symptoms=["chest_pain"])
    alert = await r.alert_of(report, "bp-hypertensive-crisis")
    assert alert is not None
    version = default_version("bp-hypertensive-crisis") + 1
    assert (alert["severity"], alert["rule_version"]) == ("urgent", version)


async def test_a_disabled_rule_can_be_enabled_again(r: Rules) -> None:
    marked = "bp-markedly-abnormal"
    assert (await r.disable("adam", marked)).status_code == 200
    report = await r.report(patient_ref="PT-1", systolic=170, diastolic=112)
    assert await r.alert_of(report, marked) is None
    current = await r.get("adam", marked)
    body = {k: current[k] for k in RULE_FIELDS}
    response = await r.update("adam", marked, {**body, "enabled": True})
    assert response.status_code == 200, response.text
    # Disabled and enabled again: two versions more.
    version = default_version(marked) + 2
    assert (response.json()["version"], response.json()["enabled"]) == (version, True)
    report = await r.report(patient_ref="PT-2", systolic=170, diastolic=112)
    alert = await r.alert_of(report, marked)
    assert alert is not None
    assert alert["rule_version"] == version


# --- invalid rules -------------------------------------------------------------------


_DELETE = object()


def _mutate(path: list[str | int], value: Any) -> dict[str, Any]:
    body = copy.deepcopy(pulse_rule())
    target: Any = body
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body


@pytest.mark.parametrize(
    ("body", "field", "rule", "mentions"),
    [
        pytest.param(
            _mutate(["definition", "when", "op"], "~="),
            "definition.when.op",
            "enum",
            "op",
            id="unknown-op",
        ),
        pytest.param(
            _mutate(["definition", "when"], {"all": [{"field": "pulse", "op": "~="}]}),
            "definition.when.all[0].op",
            "enum",
            "op",
            id="unknown-op-nested",
        ),
        pytest.param(
            _mutate(["severity"], "severe"), "severity", "enum", "severe", id="bad-severity"
        ),
        pytest.param(
            _mutate(["definition", "when"], {"field": "concern_type", "op": "in", "value": "x"}),
            "definition.when.value",
            "type",
            "list",
            id="in-needs-a-list",
        ),
        pytest.param(
            _mutate(["definition", "pattern"], {"min_count": 1, "window_days": 7}),
            "definition.pattern.min_count",
            "range",
            ">= 2",
            id="pattern-of-one",
        ),
        pytest.param(_mutate(["id"], "Bad ID!"), "id", "pattern", "", id="bad-id"),
        pytest.param(_mutate(["id"], "-leading-dash"), "id", "pattern", "", id="id-dash-first"),
        pytest.param(_mutate(["id"], "x" * 65), "id", "pattern", "", id="id-too-long"),
        pytest.param(
            _mutate(["definition", "kinds"], ["vitals"]),
            "definition.kinds[0]",
            "enum",
            "vitals",
            id="unknown-kind",
        ),
        pytest.param(
            _mutate(["definition", "group_by"], "room"),
            "definition.group_by",
            "enum",
            "room",
            id="bad-group-by",
        ),
        pytest.param(_mutate(["name"], ""), "name", "length", "", id="empty-name"),
    ],
)
async def test_an_invalid_rule_is_422_saying_what_is_wrong(
    r: Rules, body: dict[str, Any], field: str, rule: str, mentions: str
) -> None:
    found = errors(await r.create("adam", body))
    assert [(e["field"], e["rule"]) for e in found] == [(field, rule)]
    assert mentions in found[0]["message"], found
    assert await r.counts() == DEFAULT_COUNTS
    # The same definition is refused when it replaces a rule's (no id in that body).
    if field != "id":
        found = errors(await r.update("adam", "bp-hypertensive-crisis", without_id(body)))
        assert [(e["field"], e["rule"]) for e in found] == [(field, rule)]
        crisis = await r.get("adam", "bp-hypertensive-crisis")
        assert crisis["version"] == default_version("bp-hypertensive-crisis")
    assert await r.counts() == DEFAULT_COUNTS


async def test_an_unknown_top_level_field_is_422_naming_it(r: Rules) -> None:
    found = errors(await r.create("adam", pulse_rule(colour="red")))
    assert [e["rule"] for e in found] == ["unknown_field"]
    assert "colour" in found[0]["field"] + found[0]["message"], found
    # An id in the body of an update is unknown too: the id is in the path.
    found = errors(await r.update("adam", "bp-hypertensive-crisis", pulse_rule()))
    assert [e["rule"] for e in found] == ["unknown_field"]
    assert "id" in found[0]["field"] + found[0]["message"], found
    assert await r.counts() == DEFAULT_COUNTS


MISSING = [
    pytest.param(_mutate(["definition", "when"], _DELETE), "when", id="when"),
    pytest.param(_mutate(["description"], _DELETE), "description", id="description"),
    pytest.param(_mutate(["guidance"], _DELETE), "guidance", id="guidance"),
    pytest.param(_mutate(["severity"], _DELETE), "severity", id="severity"),
]


@pytest.mark.parametrize(("body", "name"), MISSING)
async def test_a_missing_field_is_422_naming_it(r: Rules, body: dict[str, Any], name: str) -> None:
    found = errors(await r.create("adam", body))
    assert [e["rule"] for e in found] == ["required"]
    assert f"`{name}`" in found[0]["message"], found
    assert await r.counts() == DEFAULT_COUNTS


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(_mutate(["definition", "when"], _DELETE), "definition.when", id="when"),
        pytest.param(_mutate(["description"], _DELETE), "description", id="description"),
        pytest.param(pulse_rule(colour="red"), "colour", id="unknown-top-level"),
        pytest.param(
            _mutate(["definition", "colour"], "red"), "definition.colour", id="unknown-nested"
        ),
    ],
)
async def test_the_error_field_is_the_missing_or_unknown_field(
    r: Rules, body: dict[str, Any], field: str
) -> None:
    found = errors(await r.create("adam", body))
    assert [e["field"] for e in found] == [field]


@pytest.mark.parametrize("rule_id", ["bp-hypertensive-crisis", "tachycardia"])
async def test_a_duplicate_id_is_422_on_id(r: Rules, rule_id: str) -> None:
    if rule_id == "tachycardia":
        assert (await r.create("adam", pulse_rule())).status_code == 201
    before = await r.counts()
    found = errors(await r.create("olga", pulse_rule(id=rule_id, clinics=["C1"])))
    assert [(e["field"], e["rule"]) for e in found] == [("id", "unique")]
    assert await r.counts() == before
    assert (await r.get("olga", rule_id))["version"] == default_version(rule_id)


@pytest.mark.parametrize("body", [[], "rule", None, 17])
async def test_a_body_that_is_not_an_object_is_422(r: Rules, body: Any) -> None:
    assert errors(await r.create("adam", body))
    assert errors(await r.update("adam", "bp-hypertensive-crisis", body))
    assert await r.counts() == DEFAULT_COUNTS


async def test_two_creates_of_one_id_at_once_are_201_and_422(
    r: Rules, other_conn: asyncpg.Connection[Any]
) -> None:
    headers = await r.as_("adam")
    request = r.client.build_request("POST", RULES, json=pulse_rule(), headers=headers)
    concurrent = other_conn.transaction()
    await concurrent.start()
    try:
        # What the other create does, not yet committed when this one checks the id.
        await other_conn.execute(
            "INSERT INTO alert_rules (id, version, name, severity, description, guidance,"
            " enabled, definition) VALUES ('tachycardia', 1, 'other', 'info', 'other', 'other',"
            " true,"
            ' \'{"when": {"field": "pulse", "op": ">", "value": 200}}\')'
        )
        pending = asyncio.ensure_future(send_concurrently(r.client, [request]))
        await wait_for_a_lock_wait(r.db)
    finally:
        await concurrent.commit()
    [response] = await pending
    found = errors(response)
    assert [(e["field"], e["rule"]) for e in found] == [("id", "unique")]
    assert (await r.get("adam", "tachycardia"))["name"] == "other"


async def test_disable_keeps_a_concurrent_update(
    r: Rules, other_conn: asyncpg.Connection[Any]
) -> None:
    headers = await r.as_("adam")
    request = r.client.build_request("POST", f"{RULES}/sedation-moaa-s-1/disable", headers=headers)
    concurrent = other_conn.transaction()
    await concurrent.start()
    try:
        # A concurrent update to a new version (another threshold), not yet committed.
        await other_conn.execute(
            "UPDATE alert_rules SET version = version + 1, definition = jsonb_set(definition,"
            " '{when,value}', '2') WHERE id = 'sedation-moaa-s-1'"
        )
        pending = asyncio.ensure_future(send_concurrently(r.client, [request]))
        await wait_for_a_lock_wait(r.db)
    finally:
        await concurrent.commit()
    [response] = await pending
    assert response.status_code == 200, response.text
    view = await r.get("adam", "sedation-moaa-s-1")
    assert (view["version"], view["enabled"]) == (default_version("sedation-moaa-s-1") + 2, False)
    assert view["definition"]["when"]["value"] == 2


# --- roles ---------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["nina", "aude"])
async def test_nurses_and_auditors_may_not_change_rules(r: Rules, who: str) -> None:
    assert (await r.create(who, pulse_rule())).status_code == 403
    update = without_id(pulse_rule())
    assert (await r.update(who, "bp-hypertensive-crisis", update)).status_code == 403
    assert (await r.disable(who, "bp-hypertensive-crisis")).status_code == 403
    # Refused before anything is looked at: an invalid body or unknown rule is still 403.
    assert (await r.create(who, {"id": "Bad ID!"})).status_code == 403
    assert (await r.disable(who, "no-such-rule")).status_code == 403
    assert await r.counts() == DEFAULT_COUNTS
    crisis = await r.db.fetchrow(
        "SELECT version, enabled FROM alert_rules WHERE id = 'bp-hypertensive-crisis'"
    )
    assert crisis is not None
    assert (crisis["version"], crisis["enabled"]) == (
        default_version("bp-hypertensive-crisis"),
        True,
    )


async def test_auditors_can_read_rules(r: Rules) -> None:
    headers = await r.as_("aude")
    response = await r.client.get(RULES, headers=headers)
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == len(DEFAULT_RULES)
    assert (await r.get("aude", "serious-adverse-event"))["severity"] == "critical"


async def test_no_token_is_401(r: Rules) -> None:
    assert (await r.client.get(RULES)).status_code == 401
    assert (await r.client.get(f"{RULES}/bp-hypertensive-crisis")).status_code == 401
    assert (await r.client.post(RULES, json=pulse_rule())).status_code == 401
    assert (await r.client.post(f"{RULES}/bp-hypertensive-crisis/disable")).status_code == 401
    assert await r.counts() == DEFAULT_COUNTS
