"""The DEA clocks of a theft or loss, in the clinic's time zone (21 CFR 1301.76(b)).

The written notice is due by the end of the next business day after the discovery,
where the clinic is (weekends and US federal holidays skipped); Form 106 by the end of
the 45th day. Every theft or loss has an alert and clocks of its own. Resolving one
records when the DEA was notified and the Form 106 number, or why it was not reportable.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from safetyreport.alerts.rules import RuleInput, compile_rule, loosening, parse_rule_input
from safetyreport.audit.chain import SYSTEM_CLI
from safetyreport.auth.users import set_clinic_timezone
from safetyreport.db.migrations import migrate, migrations_dir
from safetyreport.db.pool import connect
from safetyreport.errors import ValidationFailed
from tests.helpers.processes import cli_env, run_cli
from tests.helpers.reports import amend, audit_rows, create_report, errors_of, stock_report
from tests.helpers.world import World

ALERTS = "/api/v1/alerts"
THEFT = "controlled-substance-theft-or-loss"
LA = "America/Los_Angeles"
LOS_ANGELES = ZoneInfo(LA)


def la(text: str) -> datetime:
    """A wall-clock time in Los Angeles (``2026-11-19 20:00``)."""
    return datetime.fromisoformat(text).replace(tzinfo=LOS_ANGELES)


class Clinics:
    """C1 in Los Angeles, C2 with no time zone; a nurse and an officer of both."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.nurse: dict[str, str] = {}
        self.officer: dict[str, str] = {}

    @property
    def client(self) -> AsyncTestClient[Any]:
        return self.world.client

    @property
    def db(self) -> asyncpg.Connection[Any]:
        return self.world.db

    async def theft(self, discovered_at: datetime, clinic: str = "C1", **fields: Any) -> str:
        """Report a theft; the id of the theft alert it opened."""
        body = stock_report(clinic, discovered_at=discovered_at.isoformat(), **fields)
        report = await create_report(self.client, self.nurse, body)
        alert_id = await self.db.fetchval(
            "SELECT a.id::text FROM alerts a JOIN alert_reports ar ON ar.alert_id = a.id"
            " WHERE ar.report_id = $1::uuid AND a.rule_id = $2",
            report["id"],
            THEFT,
        )
        assert alert_id is not None
        return str(alert_id)

    async def view(self, alert_id: str) -> dict[str, Any]:
        response = await self.client.get(f"{ALERTS}/{alert_id}", headers=self.officer)
        assert response.status_code == 200, response.text
        view: dict[str, Any] = response.json()
        return view

    async def resolve(self, alert_id: str, **body: Any) -> Any:
        return await self.client.post(
            f"{ALERTS}/{alert_id}/resolve",
            json={"reason": "reported to the DEA", **body},
            headers=self.officer,
        )


@pytest.fixture
async def c(world: World) -> Clinics:
    await world.clinic("C1", timezone=LA)
    await world.clinic("C2")
    await world.user("nina", "nurse", ["C1", "C2"])
    await world.user("olga", "safety_officer", ["C1", "C2"])
    clinics = Clinics(world)
    clinics.nurse = await world.login("nina")
    clinics.officer = await world.login("olga")
    return clinics


def due(view: dict[str, Any], name: str) -> datetime:
    """A due time of the view, as a wall-clock time in Los Angeles."""
    value = datetime.fromisoformat(view[name])
    assert value.utcoffset() == timedelta(0), value  # shown in UTC, with its offset
    return value.astimezone(LOS_ANGELES)


# --- the clocks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("discovered", "notice_due", "form106_due"),
    [
        # Thursday 20:00 in Los Angeles is already Friday in UTC: due the end of Friday
        # there, not Monday.
        ("2026-11-19 20:00", "2026-11-20 23:59:59", "2027-01-03 23:59:59"),
        # The day before Thanksgiving (Thursday 26 November 2026): due the Friday after.
        ("2026-11-25 10:00", "2026-11-27 23:59:59", "2027-01-09 23:59:59"),
        # A Friday evening: due the end of Monday.
        ("2026-11-20 18:30", "2026-11-23 23:59:59", "2027-01-04 23:59:59"),
        # Thursday 2 July 2026: Independence Day falls on a Saturday and is observed on
        # Friday 3 July, so the notice is due on Monday 6 July.
        ("2026-07-02 09:00", "2026-07-06 23:59:59", "2026-08-16 23:59:59"),
    ],
)
async def test_the_notice_is_due_at_the_end_of_the_next_business_day_where_the_clinic_is(
    c: Clinics, discovered: str, notice_due: str, form106_due: str
) -> None:
    view = await c.view(await c.theft(la(discovered)))
    assert due(view, "dea_notice_due") == la(notice_due)
    assert due(view, "dea_form106_due") == la(form106_due)
    assert (view["dea_clock_zone"], view["dea_clock_warning"]) == (LA, None)
    assert (view["group_by"], view["group_key"]) == ("report", view["reports"][0]["id"])


async def test_two_thefts_make_two_alerts_with_their_own_clocks(c: Clinics) -> None:
    first = await c.theft(la("2026-11-19 20:00"))
    second = await c.theft(la("2026-11-25 10:00"), incident_type="loss")
    assert first != second
    views = [await c.view(first), await c.view(second)]
    assert [v["status"] for v in views] == ["open", "open"]
    assert [v["report_count"] for v in views] == [1, 1]
    assert [due(v, "dea_notice_due") for v in views] == [
        la("2026-11-20 23:59:59"),
        la("2026-11-27 23:59:59"),
    ]
    assert {len(v["reports"]) for v in views} == {1}
    assert views[0]["reports"][0]["id"] != views[1]["reports"][0]["id"]
    # Resolving one leaves the other open with its clocks.
    response = await c.resolve(first, dea_notified_on="2026-11-20", dea_form106_number="F-1")
    assert response.status_code == 200, response.text
    assert (await c.view(second))["status"] == "open"


async def test_an_amended_discovery_time_moves_the_clocks(c: Clinics) -> None:
    body = stock_report(discovered_at=la("2026-11-19 20:00").isoformat())
    report = await create_report(c.client, c.nurse, body)
    [alert_id] = await c.db.fetch(
        "SELECT alert_id::text FROM alert_reports WHERE report_id = $1::uuid", report["id"]
    )
    corrected = {"reason": "found on Friday evening", "discovered_at": "2026-11-20T18:30:00-08:00"}
    response = await amend(c.client, c.nurse, report["id"], corrected)
    assert response.status_code == 201, response.text
    view = await c.view(alert_id[0])
    assert [(r["id"], r["version"]) for r in view["reports"]] == [
        (report["id"], 1),
        (report["id"], 2),
    ]
    assert due(view, "dea_notice_due") == la("2026-11-23 23:59:59")
    assert due(view, "dea_form106_due") == la("2027-01-04 23:59:59")
    assert await c.db.fetchval("SELECT count(*) FROM alerts WHERE rule_id = $1", THEFT) == 1


async def test_a_clinic_without_a_time_zone_counts_in_utc_and_warns(c: Clinics) -> None:
    # Thursday 20:00 in Los Angeles is Friday 04:00 UTC: in UTC, due the end of Monday.
    view = await c.view(await c.theft(la("2026-11-19 20:00"), clinic="C2"))
    assert datetime.fromisoformat(view["dea_notice_due"]) == datetime(
        2026, 11, 23, 23, 59, 59, tzinfo=UTC
    )
    assert view["dea_clock_zone"] is None
    assert "no time zone" in view["dea_clock_warning"]
    assert "set-timezone" in view["dea_clock_warning"]
    # Once the zone is set, new thefts count there (the clocks already set stay).
    await set_clinic_timezone(c.db, "C2", LA, SYSTEM_CLI)
    later = await c.view(await c.theft(la("2026-11-19 20:00"), clinic="C2"))
    assert (later["dea_clock_zone"], later["dea_clock_warning"]) == (LA, None)
    assert due(later, "dea_notice_due") == la("2026-11-20 23:59:59")
    assert (await c.view(view["id"]))["dea_clock_warning"] == view["dea_clock_warning"]


async def test_other_alerts_have_no_dea_clocks(c: Clinics) -> None:
    # An inventory discrepancy is no theft or loss.
    body = stock_report(incident_type="inventory_discrepancy")
    report = await create_report(c.client, c.nurse, body)
    row = await c.db.fetchrow(
        "SELECT a.* FROM alerts a JOIN alert_reports ar ON ar.alert_id = a.id"
        " WHERE ar.report_id = $1::uuid",
        report["id"],
    )
    assert row is not None
    assert row["rule_id"] != THEFT
    view = await c.view(str(row["id"]))
    for name in ("dea_notice_due", "dea_form106_due", "dea_clock_zone", "dea_clock_warning"):
        assert view[name] is None, name


# --- resolving -----------------------------------------------------------------------


async def test_resolving_a_theft_needs_the_notice_date_and_form_106_number(c: Clinics) -> None:
    alert_id = await c.theft(la("2026-11-19 20:00"))
    both = [("dea_notified_on", "required"), ("dea_form106_number", "required")]
    assert errors_of(await c.resolve(alert_id)) == both
    assert errors_of(await c.resolve(alert_id, dea_notified_on="2026-11-20")) == [
        ("dea_form106_number", "required")
    ]
    assert errors_of(await c.resolve(alert_id, dea_form106_number="F-1")) == [
        ("dea_notified_on", "required")
    ]
    tomorrow = (datetime.now(LOS_ANGELES).date() + timedelta(days=1)).isoformat()
    future = await c.resolve(alert_id, dea_notified_on=tomorrow, dea_form106_number="F-1")
    assert errors_of(future) == [("dea_notified_on", "future")]
    not_both = await c.resolve(
        alert_id,
        dea_notified_on="2026-11-20",
        dea_form106_number="F-1",
        dea_not_reportable_reason="found it",
    )
    assert errors_of(not_both) == [("dea_not_reportable_reason", "either")]
    assert (await c.view(alert_id))["status"] == "open"
    assert await audit_rows(c.db, "alert.resolved", alert_id) == []

    response = await c.resolve(
        alert_id, dea_notified_on="2026-11-20", dea_form106_number="DEA-106-2026-0042"
    )
    assert response.status_code == 200, response.text
    view = await c.view(alert_id)
    assert view["status"] == "resolved"
    assert (view["dea_notified_on"], view["dea_form106_number"]) == (
        "2026-11-20",
        "DEA-106-2026-0042",
    )
    assert view["dea_not_reportable_reason"] is None
    expected = {
        "reason": "reported to the DEA",
        "dea_notified_on": "2026-11-20",
        "dea_form106_number": "DEA-106-2026-0042",
    }
    assert view["history"][-1]["details"] == expected
    [entry] = await audit_rows(c.db, "alert.resolved", alert_id)
    assert (entry["actor"], entry["chain"]) == ("olga", "clinic:C1")
    assert {k: entry["details"][k] for k in expected} == expected
    row = await c.db.fetchrow("SELECT * FROM alerts WHERE id = $1::uuid", alert_id)
    assert row is not None
    assert (row["dea_notified_on"], row["dea_form106_number"]) == (
        date(2026, 11, 20),
        "DEA-106-2026-0042",
    )


async def test_a_theft_that_was_not_reportable_resolves_with_the_reason(c: Clinics) -> None:
    alert_id = await c.theft(la("2026-11-19 20:00"))
    empty = await c.resolve(alert_id, dea_not_reportable_reason="")
    assert [field for field, _ in errors_of(empty)] == ["dea_not_reportable_reason"]
    reason = "The vials were found in the other cabinet the same evening."
    response = await c.resolve(alert_id, dea_not_reportable_reason=reason)
    assert response.status_code == 200, response.text
    view = response.json()
    assert (view["status"], view["dea_not_reportable_reason"]) == ("resolved", reason)
    assert (view["dea_notified_on"], view["dea_form106_number"]) == (None, None)
    [entry] = await audit_rows(c.db, "alert.resolved", alert_id)
    assert entry["details"]["dea_not_reportable_reason"] == reason


async def test_dea_fields_are_refused_on_other_alerts(c: Clinics) -> None:
    report = await create_report(
        c.client, c.nurse, stock_report(incident_type="inventory_discrepancy")
    )
    alert_id = await c.db.fetchval(
        "SELECT alert_id::text FROM alert_reports WHERE report_id = $1::uuid", report["id"]
    )
    response = await c.resolve(alert_id, dea_form106_number="F-1")
    assert errors_of(response) == [("dea_form106_number", "not_dea")]
    assert (await c.resolve(alert_id)).status_code == 200


# --- rules: grouping by report -----------------------------------------------------


def _rule(group_by: str) -> Any:
    return compile_rule(
        {
            "id": THEFT,
            "version": 1,
            "severity": "critical",
            "protected": True,
            "definition": {
                "kinds": ["stock_incident"],
                "when": {"field": "incident_type", "op": "in", "value": ["theft", "loss"]},
                "pattern": None,
                "group_by": group_by,
                "dea_deadlines": True,
            },
        }
    )


def _override(base: Any, group_by: str) -> RuleInput:
    definition = {
        "kinds": list(base.definition.kinds),
        "when": base.definition.when,
        "pattern": None,
        "group_by": group_by,
        "dea_deadlines": True,
    }
    return parse_rule_input(
        {
            "name": "mine",
            "severity": "critical",
            "description": "-",
            "guidance": "Report it to the DEA.",
            "definition": definition,
        },
        with_id=False,
    )


def test_an_override_may_group_by_report_but_not_more_coarsely() -> None:
    """One alert per report never fires less than a grouped rule; grouping the reports of
    a rule that gives each its own alert would hide every theft after the first."""
    by_report, by_clinic = _rule("report"), _rule("clinic")
    assert loosening(by_clinic, _override(by_clinic, "report")) == []
    assert loosening(by_report, _override(by_report, "report")) == []
    coarser = loosening(by_report, _override(by_report, "clinic"))
    assert [(e.field, e.rule) for e in coarser] == [("definition.pattern", "protected")]


def test_a_pattern_cannot_group_by_report() -> None:
    raw = {
        "name": "n",
        "severity": "high",
        "description": "d",
        "guidance": "g",
        "definition": {
            "when": {"field": "incident_type", "op": "==", "value": "theft"},
            "pattern": {"min_count": 2, "window_days": 7},
            "group_by": "report",
        },
    }
    with pytest.raises(ValidationFailed) as caught:
        parse_rule_input(raw, with_id=False)
    assert [(e.field, e.rule) for e in caught.value.errors] == [("definition.group_by", "pattern")]


async def test_migration_0008_groups_the_theft_rule_and_its_overrides_by_report(
    empty_url: str, tmp_path: Path
) -> None:
    before = tmp_path / "migrations"
    before.mkdir()
    for entry in migrations_dir().iterdir():
        if entry.name < "0008":
            (before / entry.name).write_bytes(entry.read_bytes())
    await migrate(empty_url, folder=before)
    conn = await connect(empty_url)
    try:
        clinic = await conn.fetchval(
            "INSERT INTO clinics (code, name) VALUES ('C1', 'One') RETURNING id"
        )
        await conn.execute(
            "INSERT INTO alert_rules (id, version, name, severity, description, enabled,"
            " definition, clinic_ids, overrides_rule_id)"
            " SELECT 'c1-theft', 1, name, severity, description, true, definition,"
            " ARRAY[$1::bigint], id FROM alert_rules WHERE id = $2",
            clinic,
            THEFT,
        )
        theft_version = await conn.fetchval("SELECT version FROM alert_rules WHERE id = $1", THEFT)
        await migrate(empty_url)
        rows = await conn.fetch(
            "SELECT id, definition FROM alert_rules WHERE id IN ($1, 'c1-theft') ORDER BY id",
            THEFT,
        )
        assert [(r["id"], r["definition"]["group_by"]) for r in rows] == [
            ("c1-theft", "report"),
            (THEFT, "report"),
        ]
        # Each a new version by the migration, the first that groups by report.
        versions = await conn.fetch(
            "SELECT DISTINCT ON (rule_id) rule_id, version, changed_by FROM alert_rule_versions"
            " WHERE rule_id IN ($1, 'c1-theft') AND definition ->> 'group_by' = 'report'"
            " ORDER BY rule_id, version",
            THEFT,
        )
        assert {(v["rule_id"], v["version"], v["changed_by"]) for v in versions} == {
            ("c1-theft", 2, "system:migration"),
            (THEFT, theft_version + 1, "system:migration"),
        }
        assert await conn.fetchval("SELECT timezone FROM clinics WHERE id = $1", clinic) is None
    finally:
        await conn.close()


# --- the command line ----------------------------------------------------------------


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return cli_env(database_url, tmp_path / "data")


@pytest.mark.end_to_end
async def test_clinic_time_zones_on_the_command_line(
    db: asyncpg.Connection[Any], env: dict[str, str]
) -> None:
    added = await run_cli("clinic", "add", "LA1", "--name", "Venice", "--timezone", LA, env=env)
    assert added.code == 0, added.stderr
    assert "warning" not in added.stderr
    bare = await run_cli("clinic", "add", "NZ1", "--name", "No zone", env=env)
    assert bare.code == 0, bare.stderr
    assert "NZ1 has no time zone" in bare.stderr

    listed = await run_cli("clinic", "list", env=env)
    assert listed.code == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert lines["LA1"].split()[1] == LA
    assert "(not set)" in lines["NZ1"]
    assert "NZ1 has no time zone" in listed.stderr
    assert "LA1" not in listed.stderr

    changed = await run_cli("clinic", "set-timezone", "NZ1", "America/New_York", env=env)
    assert changed.code == 0, changed.stderr
    assert await db.fetchval("SELECT timezone FROM clinics WHERE code = 'NZ1'") == (
        "America/New_York"
    )
    entries = await db.fetch(
        "SELECT action, actor, details FROM audit_entries WHERE chain = 'clinic:NZ1' ORDER BY seq"
    )
    assert [(e["action"], e["actor"]) for e in entries] == [
        ("clinic.created", "system:cli"),
        ("clinic.timezone_set", "system:cli"),
    ]
    assert entries[1]["details"] == {"timezone": "America/New_York", "previous": None}
    relisted = await run_cli("clinic", "list", env=env)
    assert "warning" not in relisted.stderr


@pytest.mark.end_to_end
async def test_an_invalid_time_zone_is_a_clear_error(
    db: asyncpg.Connection[Any], env: dict[str, str]
) -> None:
    for zone in ("America/Los Angeles", "Mars/Olympus_Mons", "localtime", "../etc/passwd"):
        result = await run_cli("clinic", "add", "X1", "--name", "X", "--timezone", zone, env=env)
        assert result.code == 2, (zone, result.stdout)
        assert "is not an IANA time zone" in result.stderr, zone
    assert await db.fetchval("SELECT count(*) FROM clinics WHERE code = 'X1'") == 0
    await run_cli("clinic", "add", "X1", "--name", "X", env=env)
    wrong = await run_cli("clinic", "set-timezone", "X1", "PST", env=env)
    assert (wrong.code, "is not an IANA time zone" in wrong.stderr) == (2, True)
    missing = await run_cli("clinic", "set-timezone", "NOPE", LA, env=env)
    assert missing.code == 2
    assert "no clinic NOPE" in missing.stderr
    assert await db.fetchval("SELECT timezone FROM clinics WHERE code = 'X1'") is None
