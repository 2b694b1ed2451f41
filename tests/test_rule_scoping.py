"""Issue 10 item 2: alert rules are scoped to clinics, protected rules need two people,
rules have limits, and every rule change is in the audit chain of each clinic it affects.

Each test reproduces what the security review did as clinic DEMO's safety officer
against clinic OTHER, and shows it no longer works.
"""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

from safetyreport.alerts import limits
from safetyreport.db.migrations import audit_migrated_rule_versions
from tests.helpers.processes import cli_env, run_cli
from tests.helpers.reports import bp_report, create_report, dissociation_report
from tests.helpers.rules import RULES, RulesAs, Users
from tests.helpers.world import World

CRISIS = "bp-hypertensive-crisis"
# Protected by migration 0005 (version 2), revised by migration 0007 (version 3), given
# its guidance by migration 0009 (version 4).
CRISIS_VERSION = 4
RESP = "respiratory-depression"
MARKED = "bp-markedly-abnormal"
ATTACKER_TEXT = "ATTACKER-TEXT: call 555-0100 now"

# name -> (role, clinics, all_clinics)
USERS: Users = {
    "dora": ("safety_officer", ["DEMO"], False),  # the attacker of the review
    "dave": ("safety_officer", ["DEMO"], False),  # her colleague at DEMO
    "oona": ("safety_officer", ["OTHER"], False),
    "otto": ("auditor", ["OTHER"], False),
    "nd": ("nurse", ["DEMO"], False),
    "no": ("nurse", ["OTHER"], False),
    "adam": ("admin", [], True),
    "ada": ("admin", [], True),
}


class Scoped(RulesAs):
    async def decide(self, who: str, change_id: int, decision: str) -> httpx.Response:
        return await self.client.post(
            f"{RULES}/changes/{change_id}/{decision}", headers=await self.as_(who)
        )

    async def read(self, who: str, rule_id: str) -> httpx.Response:
        return await self.client.get(f"{RULES}/{rule_id}", headers=await self.as_(who))

    async def listed(self, who: str) -> set[str]:
        response = await self.client.get(RULES, headers=await self.as_(who))
        assert response.status_code == 200, response.text
        return {item["id"] for item in response.json()["items"]}

    async def rule(self, rule_id: str) -> dict[str, Any]:
        response = await self.read("adam", rule_id)
        assert response.status_code == 200, response.text
        view: dict[str, Any] = response.json()
        return view

    async def body_of(self, rule_id: str) -> dict[str, Any]:
        view = await self.rule(rule_id)
        return {
            k: copy.deepcopy(view[k])
            for k in ("name", "severity", "description", "guidance", "ack_minutes", "definition")
        }

    async def fired(self, nurse: str, body: dict[str, Any]) -> set[str]:
        """The rules whose alerts a new report of ``nurse`` is linked to."""
        report = await create_report(self.client, await self.as_(nurse), body)
        rows = await self.db.fetch(
            "SELECT a.rule_id FROM alerts a JOIN alert_reports ar ON ar.alert_id = a.id"
            " WHERE ar.report_id = $1::uuid",
            report["id"],
        )
        await self.db.execute(
            "UPDATE alerts SET status = 'resolved', resolved_at = now(), ack_deadline = NULL"
            " WHERE status <> 'resolved'"
        )
        return {r["rule_id"] for r in rows}

    async def chains_of(self, action: str, rule_id: str) -> list[str]:
        rows = await self.db.fetch(
            "SELECT chain FROM audit_entries WHERE action = $1 AND object_id = $2 ORDER BY chain",
            action,
            rule_id,
        )
        return [r["chain"] for r in rows]


@pytest.fixture
async def s(world: World) -> Scoped:
    await world.clinic("DEMO")
    await world.clinic("OTHER")
    return Scoped(world, USERS)


def crisis_reading(clinic: str, patient: str = "PT-1") -> dict[str, Any]:
    """A hypertensive emergency: 230/130 with a target-organ symptom."""
    return bp_report(
        clinic, patient_ref=patient, systolic=230, diastolic=130, symptoms=["chest_pain"]
    )


def clinic_rule(rule_id: str, clinics: list[str] | None, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": rule_id,
        "name": ATTACKER_TEXT,
        "severity": "critical",
        "description": ATTACKER_TEXT,
        "guidance": ATTACKER_TEXT,
        "definition": {
            "kinds": ["blood_pressure"],
            "when": {"field": "systolic", "op": ">", "value": 0},
        },
    }
    if clinics is not None:
        body["clinics"] = clinics
    body.update(changes)
    return body


def problems(response: httpx.Response) -> list[tuple[str, str]]:
    assert response.status_code == 422, response.text
    return [(e["field"], e["rule"]) for e in response.json()["errors"]]


# --- the review's reproductions --------------------------------------------------------


async def test_another_clinics_officer_cannot_silence_the_crisis_alert(s: Scoped) -> None:
    """Review: DEMO's officer disabled bp-hypertensive-crisis, silencing OTHER's 230/130
    (with chest pain, a hypertensive emergency)."""
    assert (await s.disable("dora", CRISIS)).status_code == 403
    body = await s.body_of(CRISIS)
    body["definition"]["when"] = {"field": "systolic", "op": ">", "value": 999}
    assert (await s.update("dora", CRISIS, body)).status_code == 403
    # An override for her own clinic that would silence it there is refused too.
    override = {**clinic_rule("demo-no-crisis", ["DEMO"]), "overrides": CRISIS}
    override.update(await s.body_of(CRISIS), enabled=False)
    assert ("enabled", "protected") in problems(await s.create("dora", override))
    assert (await s.rule(CRISIS))["version"] == CRISIS_VERSION
    assert CRISIS in await s.fired("no", crisis_reading("OTHER"))
    assert CRISIS in await s.fired("nd", crisis_reading("DEMO", "PT-2"))


async def test_a_clinic_rule_never_reaches_another_clinics_queue(s: Scoped) -> None:
    """Review: a new rule put a critical alert with the attacker's text into OTHER's queue."""
    # A rule for every clinic needs a user granted every clinic.
    assert (await s.create("dora", clinic_rule("everywhere", None))).status_code == 403
    # Naming a clinic she does not belong to is like naming one that does not exist.
    assert problems(await s.create("dora", clinic_rule("there", ["OTHER"]))) == [
        ("clinics[0]", "unknown")
    ]
    assert problems(await s.create("dora", clinic_rule("both", ["DEMO", "OTHER"]))) == [
        ("clinics[1]", "unknown")
    ]
    created = await s.create("dora", clinic_rule("demo-only", ["DEMO"]))
    assert created.status_code == 201, created.text
    assert created.json()["clinics"] == ["DEMO"]
    assert "demo-only" not in await s.fired("no", crisis_reading("OTHER"))
    assert "demo-only" in await s.fired("nd", crisis_reading("DEMO", "PT-2"))
    alerts = await s.client.get("/api/v1/alerts", headers=await s.as_("oona"))
    assert ATTACKER_TEXT not in alerts.text


async def test_rules_with_huge_lists_are_refused(s: Scoped) -> None:
    """Review: 40 rules with 20,000-value lists slowed every clinic's submissions."""
    huge = {"field": "patient_ref", "op": "in", "value": [f"PT-{i}" for i in range(20_000)]}
    body = clinic_rule("huge", ["DEMO"], definition={"when": huge})
    assert problems(await s.create("dora", body)) == [("$", "limit")]
    within_size = {
        "field": "systolic",
        "op": "in",
        "value": list(range(limits.MAX_LIST_VALUES + 1)),
    }
    body = clinic_rule("long", ["DEMO"], definition={"when": within_size})
    assert problems(await s.create("dora", body)) == [("definition.when.value", "limit")]
    count = await s.db.fetchval("SELECT count(*) FROM alert_rules WHERE id IN ('huge', 'long')")
    assert count == 0


async def test_other_clinics_auditor_sees_network_rule_changes(s: Scoped) -> None:
    """Review: OTHER's auditor saw none of the changes. A network rule's change is in every
    clinic's chain and the global one; a clinic rule's only in its clinics' chains."""
    assert (await s.create("adam", clinic_rule("net", None))).status_code == 201
    assert (await s.disable("adam", "net")).status_code == 200
    assert (await s.create("dora", clinic_rule("mine", ["DEMO"]))).status_code == 201
    for action in ("rule.created", "rule.updated"):
        assert await s.chains_of(action, "net") == ["clinic:DEMO", "clinic:OTHER", "global"]
    assert await s.chains_of("rule.created", "mine") == ["clinic:DEMO"]
    # OTHER's auditor reads them through the API, in her clinic's chain.
    response = await s.client.get(
        "/api/v1/audit/entries", params={"clinic": "OTHER"}, headers=await s.as_("otto")
    )
    assert response.status_code == 200, response.text
    seen = {(e["action"], e["object_id"]) for e in response.json()["items"]}
    assert {("rule.created", "net"), ("rule.updated", "net")} <= seen
    assert ("rule.created", "mine") not in seen


# --- isolation -------------------------------------------------------------------------


async def test_another_clinics_rules_are_404_and_not_listed(s: Scoped) -> None:
    assert (await s.create("oona", clinic_rule("other-secret", ["OTHER"]))).status_code == 201
    override = {**clinic_rule("other-marked", ["OTHER"]), "overrides": MARKED}
    override.update(await s.body_of(MARKED))
    assert (await s.create("oona", override)).status_code == 201
    for rule_id in ("other-secret", "other-marked"):
        assert (await s.read("dora", rule_id)).status_code == 404
        body = await s.body_of(rule_id)
        assert (await s.update("dora", rule_id, body)).status_code == 404
        assert (await s.disable("dora", rule_id)).status_code == 404
        assert (await s.read("oona", rule_id)).status_code == 200
        assert (await s.read("adam", rule_id)).status_code == 200
    assert not {"other-secret", "other-marked"} & await s.listed("dora")
    assert {"other-secret", "other-marked"} <= await s.listed("oona")
    assert (await s.rule("other-secret"))["version"] == 1


async def test_a_rule_of_several_clinics_needs_all_of_them(s: Scoped) -> None:
    body = clinic_rule("shared", ["DEMO", "OTHER"])
    assert (await s.create("adam", body)).status_code == 201
    # Dora sees it (it applies to her clinic), only with her clinic, and may not change it.
    response = await s.read("dora", "shared")
    assert response.status_code == 200, response.text
    assert response.json()["clinics"] == ["DEMO"]
    assert (await s.disable("dora", "shared")).status_code == 403
    assert (await s.disable("adam", "shared")).status_code == 200


# --- overrides -------------------------------------------------------------------------


async def test_an_override_replaces_the_network_rule_at_its_clinics_only(s: Scoped) -> None:
    body = await s.body_of(MARKED)
    body["definition"]["when"] = {"field": "systolic", "op": ">=", "value": 175}
    override = {"id": "demo-marked", "clinics": ["DEMO"], "overrides": MARKED, **body}
    response = await s.create("dora", override)
    assert response.status_code == 201, response.text
    assert response.json()["overrides"] == MARKED
    # At DEMO the override fires, never beside the network rule; OTHER keeps the rule.
    reading = {"systolic": 178, "diastolic": 112}
    demo = await s.fired("nd", bp_report("DEMO", patient_ref="PT-1", **reading))
    assert "demo-marked" in demo
    assert MARKED not in demo
    other = await s.fired("no", bp_report("OTHER", patient_ref="PT-2", **reading))
    assert MARKED in other
    assert "demo-marked" not in other
    # A second override of the same rule at the same clinic is refused.
    again = {**override, "id": "demo-marked-2"}
    assert problems(await s.create("dave", again)) == [("overrides", "unique")]
    # A disabled override turns the (unprotected) network rule off at DEMO only.
    assert (await s.disable("dave", "demo-marked")).status_code == 200
    demo = await s.fired("nd", bp_report("DEMO", patient_ref="PT-3", **reading))
    assert not {MARKED, "demo-marked"} & demo
    assert MARKED in await s.fired("no", bp_report("OTHER", patient_ref="PT-4", **reading))


def protected_override(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    override = {"id": "demo-crisis", "clinics": ["DEMO"], "overrides": CRISIS, **body}
    override.update(changes)
    return override


async def test_an_override_of_a_protected_rule_may_not_loosen_it(s: Scoped) -> None:
    body = await s.body_of(CRISIS)
    network_when = body["definition"]["when"]
    narrower = copy.deepcopy(body["definition"])
    narrower["when"] = {"all": [network_when, {"field": "systolic", "op": ">", "value": 250}]}
    # The rule looks at every kind: an override looking at one kind looks at fewer.
    fewer_kinds = {**body["definition"], "kinds": ["blood_pressure"]}
    cases = {
        "disabled": (protected_override(body, enabled=False), "enabled"),
        "lower severity": (protected_override(body, severity="urgent"), "severity"),
        "narrower": (protected_override(body, definition=narrower), "definition.when"),
        "another condition": (
            protected_override(
                body,
                definition={
                    **body["definition"],
                    "when": {"any": [{"field": "systolic", "op": ">", "value": 181}]},
                },
            ),
            "definition.when",
        ),
        "fewer kinds": (protected_override(body, definition=fewer_kinds), "definition.kinds"),
    }
    before = await s.db.fetchval("SELECT count(*) FROM alert_rules")
    for name, (override, field) in cases.items():
        assert (field, "protected") in problems(await s.create("dora", override)), name
    assert await s.db.fetchval("SELECT count(*) FROM alert_rules") == before


async def test_a_protected_override_waits_for_a_second_officer(s: Scoped) -> None:
    body = await s.body_of(CRISIS)
    wider = copy.deepcopy(body["definition"])
    wider["when"] = {"any": [wider["when"], {"field": "systolic", "op": ">=", "value": 170}]}
    response = await s.create("dora", protected_override(body, definition=wider))
    assert response.status_code == 202, response.text
    change = response.json()
    assert (change["status"], change["action"], change["proposed_by"]) == (
        "pending",
        "create",
        "dora",
    )
    assert (await s.read("dora", "demo-crisis")).status_code == 404
    # Not in force yet: a 175 reading at DEMO raises no crisis alert.
    reading = bp_report("DEMO", patient_ref="PT-1", systolic=175, diastolic=90)
    assert not {CRISIS, "demo-crisis"} & await s.fired("nd", reading)
    # The proposer cannot approve it; another clinic's officer cannot see it.
    assert (await s.decide("dora", change["id"], "approve")).status_code == 403
    assert (await s.decide("oona", change["id"], "approve")).status_code == 404
    listed = await s.client.get(f"{RULES}/changes", headers=await s.as_("oona"))
    assert listed.json()["items"] == []
    approved = await s.decide("dave", change["id"], "approve")
    assert approved.status_code == 200, approved.text
    assert approved.json()["protected"] is True
    assert (await s.decide("dave", change["id"], "approve")).status_code == 409
    reading = bp_report("DEMO", patient_ref="PT-2", systolic=175, diastolic=90)
    fired = await s.fired("nd", reading)
    assert "demo-crisis" in fired
    assert CRISIS not in fired
    [version] = await s.db.fetch("SELECT * FROM alert_rule_versions WHERE rule_id = 'demo-crisis'")
    assert (version["changed_by"], version["approved_by"]) == ("dora", "dave")
    # Disabling the override of a protected rule is refused outright.
    assert ("enabled", "protected") in problems(await s.disable("dave", "demo-crisis"))
    # Changing it is held to the same rule, and waits for a second officer too.
    mine = await s.body_of("demo-crisis")
    lower = {**mine, "severity": "urgent"}
    assert ("severity", "protected") in problems(await s.update("dave", "demo-crisis", lower))
    renamed = {**mine, "name": "Crisis at DEMO"}
    proposed = await s.update("dave", "demo-crisis", renamed)
    assert proposed.status_code == 202, proposed.text
    assert (await s.rule("demo-crisis"))["version"] == 1
    applied = await s.decide("dora", proposed.json()["id"], "approve")
    assert applied.status_code == 200, applied.text
    assert (applied.json()["name"], applied.json()["version"]) == ("Crisis at DEMO", 2)


async def test_a_loosened_override_in_the_database_does_not_silence_a_protected_rule(
    s: Scoped,
) -> None:
    """Defence in depth: evaluation drops an override of a protected rule that would fire
    less than the rule (written around the API, or left behind by a change to the rule),
    and the protected rule stays in force at that clinic."""
    demo = await s.db.fetchval("SELECT id FROM clinics WHERE code = 'DEMO'")
    await s.db.execute(
        "INSERT INTO alert_rules (id, version, name, severity, description, guidance, enabled,"
        " definition, clinic_ids, overrides_rule_id)"
        " SELECT 'demo-quiet', 1, name, severity, description, guidance, true,"
        ' jsonb_set(definition, \'{when}\', \'{"field": "systolic", "op": ">", "value": 999}\'),'
        " ARRAY[$1::bigint], id FROM alert_rules WHERE id = $2",
        demo,
        CRISIS,
    )
    assert CRISIS in await s.fired("nd", crisis_reading("DEMO"))


async def test_a_network_protected_rule_changes_only_with_a_second_admin(s: Scoped) -> None:
    response = await s.disable("adam", CRISIS)
    assert response.status_code == 202, response.text
    change = response.json()
    assert (await s.rule(CRISIS))["enabled"] is True
    assert CRISIS in await s.fired("no", crisis_reading("OTHER"))
    assert (await s.decide("adam", change["id"], "approve")).status_code == 403
    # Safety officers are not granted every clinic: not the same rights.
    assert (await s.decide("dora", change["id"], "approve")).status_code == 403
    approved = await s.decide("ada", change["id"], "approve")
    assert approved.status_code == 200, approved.text
    assert (approved.json()["version"], approved.json()["enabled"]) == (CRISIS_VERSION + 1, False)
    version = await s.db.fetchrow(
        "SELECT * FROM alert_rule_versions WHERE rule_id = $1 AND version = $2",
        CRISIS,
        CRISIS_VERSION + 1,
    )
    assert version is not None
    assert (version["changed_by"], version["approved_by"], version["change_id"]) == (
        "adam",
        "ada",
        change["id"],
    )
    entries = await s.db.fetch(
        "SELECT action, actor, chain, details FROM audit_entries WHERE object_id = $1"
        " ORDER BY chain, seq",
        CRISIS,
    )
    assert [(e["action"], e["actor"], e["chain"]) for e in entries] == [
        (action, actor, chain)
        for chain in ("clinic:DEMO", "clinic:OTHER", "global")
        for action, actor in (("rule.change_proposed", "adam"), ("rule.updated", "ada"))
    ]
    assert entries[1]["details"]["proposed_by"] == "adam"
    assert entries[1]["details"]["approved_by"] == "ada"


async def test_a_proposal_on_an_outdated_version_cannot_be_approved(s: Scoped) -> None:
    first = (await s.disable("adam", RESP)).json()
    body = await s.body_of(RESP)
    second = (await s.update("ada", RESP, {**body, "severity": "critical"})).json()
    assert (await s.decide("ada", first["id"], "approve")).status_code == 200
    assert (await s.decide("adam", second["id"], "approve")).status_code == 409
    rejected = await s.decide("adam", second["id"], "reject")
    assert rejected.status_code == 200, rejected.text
    assert (rejected.json()["status"], rejected.json()["decided_by"]) == ("rejected", "adam")


# --- limits ----------------------------------------------------------------------------


async def test_each_limit_is_a_422_naming_it(s: Scoped) -> None:
    deep: dict[str, Any] = {"field": "systolic", "op": ">", "value": 1}
    wide = {"any": [deep] * limits.MAX_CONDITION_NODES}
    cases = [
        ({"when": wide}, ("definition.when.any[99]", "limit")),
        (
            {
                "when": deep,
                "pattern": {"min_count": 2, "window_days": limits.MAX_PATTERN_WINDOW_DAYS + 1},
            },
            ("definition.pattern.window_days", "range"),
        ),
        (
            {"when": {"field": "phase", "op": "==", "value": "x" * (limits.MAX_TEXT_CHARS + 1)}},
            ("definition.when.value", "limit"),
        ),
    ]
    for definition, expected in cases:
        body = clinic_rule("limited", ["DEMO"], definition=definition)
        assert problems(await s.create("dora", body)) == [expected]


async def test_enabled_rules_per_clinic_are_limited(s: Scoped) -> None:
    # The enabled default rules (network rules) are in force at DEMO already.
    defaults = await s.db.fetchval("SELECT count(*) FROM alert_rules WHERE enabled")
    assert defaults == 41
    room = limits.MAX_ENABLED_RULES_PER_CLINIC - defaults
    demo = await s.db.fetchval("SELECT id FROM clinics WHERE code = 'DEMO'")
    await s.db.execute(
        "INSERT INTO alert_rules (id, version, name, severity, description, guidance, enabled,"
        " definition, clinic_ids) SELECT 'filler-' || i, 1, 'f', 'info', 'f', 'f', true,"
        ' \'{"when": {"field": "systolic", "op": ">", "value": 999}}\', ARRAY[$1::bigint]'
        " FROM generate_series(1, $2) AS i",
        demo,
        room,
    )
    assert problems(await s.create("dora", clinic_rule("one-too-many", ["DEMO"]))) == [
        ("enabled", "limit")
    ]
    # Disabled rules do not count, and OTHER is not affected by DEMO's rules.
    body = clinic_rule("off", ["DEMO"], enabled=False)
    assert (await s.create("dora", body)).status_code == 201
    assert (await s.create("oona", clinic_rule("fine", ["OTHER"]))).status_code == 201
    # A network rule counts at every clinic: DEMO is full.
    assert problems(await s.create("adam", clinic_rule("net", None))) == [("enabled", "limit")]


# --- rule changes that arrive by migration ---------------------------------------------


@pytest.mark.end_to_end
async def test_the_migrate_command_records_rule_versions_from_migrations_once(
    s: Scoped, database_url: str, tmp_path: Any
) -> None:
    """The default rules (migration 0003), their protection (0005), the clinical model
    (0007), the theft rule grouped by report (0008), their guidance (0009), the
    discharge override of treatment sessions (0013), the session checks (0014) and the
    esketamine frequency rule (0015) and the safety-signal rule (0021) arrived without an
    audit entry; the migrate command
    records each version once, in every clinic's chain and the global one (they are
    network rules), and marks it recorded."""
    result = await run_cli("migrate", env=cli_env(database_url, tmp_path / "data"))
    assert result.code == 0, result.stderr
    rows = await s.db.fetch(
        "SELECT chain, object_id, details FROM audit_entries WHERE action = 'rule.migrated'"
    )
    versions = await s.db.fetchval("SELECT count(*) FROM alert_rule_versions")
    assert versions == 97
    assert len(rows) == versions * 3
    assert {r["chain"] for r in rows} == {"clinic:DEMO", "clinic:OTHER", "global"}
    crisis = sorted(
        (r["details"]["version"], r["details"]["protected"])
        for r in rows
        if r["object_id"] == CRISIS and r["chain"] == "global"
    )
    assert crisis == [(1, False), (2, True), (3, True), (4, True)]
    assert (
        await s.db.fetchval("SELECT count(*) FROM alert_rule_versions WHERE audited_at IS NULL")
        == 0
    )
    # Again: nothing new to record.
    result = await run_cli("migrate", env=cli_env(database_url, tmp_path / "data"))
    assert result.code == 0, result.stderr
    assert await audit_migrated_rule_versions(s.db) == 0
    again = await s.db.fetchval("SELECT count(*) FROM audit_entries WHERE action = 'rule.migrated'")
    assert again == versions * 3


async def test_versions_written_by_the_service_are_not_recorded_twice(s: Scoped) -> None:
    assert (await s.create("dora", clinic_rule("mine", ["DEMO"]))).status_code == 201
    await audit_migrated_rule_versions(s.db)
    migrated = await s.db.fetchval(
        "SELECT count(*) FROM audit_entries WHERE action = 'rule.migrated' AND object_id = 'mine'"
    )
    assert migrated == 0


# --- evaluation at the report's clinic -------------------------------------------------


async def test_dissociation_rules_still_fire_everywhere(s: Scoped) -> None:
    """The default network rules are in force at every clinic."""
    body = dissociation_report("OTHER", spo2=85)
    assert RESP in await s.fired("no", body)


@pytest.mark.parametrize("change_id", ["0", "-1", str(2**63), "9" * 30])
async def test_a_change_id_out_of_range_is_404(s: Scoped, change_id: str) -> None:
    headers = await s.as_("adam")
    assert (await s.client.get(f"{RULES}/changes/{change_id}", headers=headers)).status_code == 404
    response = await s.client.post(f"{RULES}/changes/{change_id}/approve", headers=headers)
    assert response.status_code == 404, response.text
