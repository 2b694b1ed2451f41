"""docs/clinical-rules.md and the default alert rules state the same thresholds.

The page's table of default rules is read as data: one row per rule, its condition
written the way ``condition_text`` renders a stored condition. Every rule the
migrations install must be in the table with exactly its definition, and every row
must be a rule the migrations install. Each row cites sources defined on the page.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

DOC = Path(__file__).resolve().parents[1] / "docs" / "clinical-rules.md"
HEADER = (
    "rule",
    "kinds",
    "condition",
    "pattern",
    "group",
    "severity",
    "enabled",
    "protected",
    "DEA",
)
# A row cites sources by key; the page defines each key in its Sources section.
SOURCE_DEFINITION = re.compile(r"^- \*\*(?P<key>[A-Za-z0-9.-]+)\*\*: \S", re.MULTILINE)
NONE = "-"


@dataclass(frozen=True)
class RuleRow:
    """One rule as the table states it (and as ``row_of`` renders a stored rule)."""

    rule: str
    kinds: str
    condition: str
    pattern: str
    group: str
    severity: str
    enabled: str
    protected: str
    dea: str


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    return str(value)


def _operand_text(condition: dict[str, Any]) -> str:
    """A condition inside another: combinations of several parts get parentheses."""
    text = condition_text(condition)
    if ("all" in condition and len(condition["all"]) > 1) or (
        "any" in condition and len(condition["any"]) > 1
    ):
        return f"({text})"
    return text


def condition_text(condition: dict[str, Any]) -> str:
    """A stored condition as the table writes it: ``systolic >= 160 or diastolic >= 100``."""
    if "all" in condition:
        return " and ".join(_operand_text(part) for part in condition["all"])
    if "any" in condition:
        return " or ".join(_operand_text(part) for part in condition["any"])
    if "not" in condition:
        return "not " + _operand_text(condition["not"])
    words = [condition["field"], condition["op"].replace("_", " ")]
    if "value" in condition:
        words.append(_value_text(condition["value"]))
    return " ".join(words)


def pattern_text(pattern: dict[str, Any] | None) -> str:
    """``3 in 30 days`` (matching reports), ``3 patients in 7 days`` (distinct patients)."""
    if not pattern:
        return NONE
    counted = " patients" if pattern.get("count") == "patients" else ""
    return f"{pattern['min_count']}{counted} in {pattern['window_days']} days"


def row_of(rule: asyncpg.Record) -> RuleRow:
    definition = rule["definition"]
    if isinstance(definition, str):
        definition = json.loads(definition)
    return RuleRow(
        rule=rule["id"],
        kinds=", ".join(definition["kinds"]) or "any",
        condition=condition_text(definition["when"]),
        pattern=pattern_text(definition.get("pattern")),
        group=definition["group_by"],
        severity=rule["severity"],
        enabled="yes" if rule["enabled"] else "no",
        protected="yes" if rule["protected"] else "no",
        dea="yes" if definition["dea_deadlines"] else "no",
    )


def _cells(line: str) -> list[str]:
    return [cell.strip().strip("`").strip() for cell in line.strip().strip("|").split("|")]


def documented_rules(text: str) -> tuple[dict[str, RuleRow], dict[str, list[str]]]:
    """The default-rules table: each rule's row, and the source keys each row cites."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if tuple(_cells(line)[: len(HEADER)]) == HEADER)
    rows: dict[str, RuleRow] = {}
    sources: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = _cells(line)
        assert len(cells) == len(HEADER) + 1, f"expected {len(HEADER) + 1} cells: {line}"
        row = RuleRow(*cells[: len(HEADER)])
        assert row.rule not in rows, f"{row.rule} is in the table twice"
        rows[row.rule] = row
        sources[row.rule] = [key.strip() for key in cells[-1].split(",") if key.strip()]
    return rows, sources


CRITERIA_HEADER = ("drug", "field", "rule", "check", "parameters", "sources")


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{name} {value}" for name, value in sorted(params.items())) or NONE


async def test_every_fitness_to_leave_criterion_is_documented_with_its_numbers(
    db: asyncpg.Connection[Any],
) -> None:
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if tuple(_cells(line)) == CRITERIA_HEADER)
    documented = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        documented.append(tuple(_cells(line)))
    stored = [
        (
            row["drug"],
            row["field"],
            row["rule"],
            row["check_kind"],
            _params_text(json.loads(row["params"])),
            row["sources"],
        )
        for row in await db.fetch(
            "SELECT drug, field, rule, check_kind, params::text, sources"
            " FROM discharge_criteria ORDER BY drug, position"
        )
    ]
    assert stored
    assert documented == stored
    defined = set(SOURCE_DEFINITION.findall(DOC.read_text(encoding="utf-8")))
    for *_, sources in stored:
        assert {key.strip() for key in sources.split(",")} <= defined, sources


async def test_every_default_rule_is_documented_with_its_thresholds(
    db: asyncpg.Connection[Any],
) -> None:
    # A fresh database holds exactly what the migrations installed.
    stored = {
        rule["id"]: row_of(rule)
        for rule in await db.fetch(
            "SELECT id, severity, enabled, protected, definition FROM alert_rules ORDER BY id"
        )
    }
    documented, _ = documented_rules(DOC.read_text(encoding="utf-8"))

    assert sorted(set(stored) - set(documented)) == [], "default rules missing from the doc"
    assert sorted(set(documented) - set(stored)) == [], "documented rules no migration installs"
    # Every row at once, so a failure shows each row to correct as the table should read.
    assert {rule_id: documented[rule_id] for rule_id in stored} == stored


def test_every_documented_rule_cites_defined_sources() -> None:
    text = DOC.read_text(encoding="utf-8")
    defined = set(SOURCE_DEFINITION.findall(text))
    _, sources = documented_rules(text)

    assert sources
    for rule_id, keys in sources.items():
        assert keys, f"{rule_id} cites no source"
        assert set(keys) <= defined, f"{rule_id} cites undefined sources"


def test_condition_text_renders_every_form() -> None:
    condition = {
        "all": [
            {"field": "phase", "op": "==", "value": "pre_dose"},
            {
                "any": [
                    {"field": "symptoms", "op": "not_empty"},
                    {"field": "spo2", "op": "<", "value": 90},
                ]
            },
            {"not": {"field": "concern_type", "op": "in", "value": ["theft", "loss"]}},
            {"field": "resolved", "op": "==", "value": False},
        ]
    }
    assert condition_text(condition) == (
        "phase == pre_dose and (symptoms not empty or spo2 < 90)"
        " and not concern_type in [theft, loss] and resolved == false"
    )


def test_pattern_text_says_what_is_counted() -> None:
    assert pattern_text(None) == NONE
    assert pattern_text({"min_count": 3, "window_days": 30}) == "3 in 30 days"
    assert pattern_text({"min_count": 3, "window_days": 30, "count": "reports"}) == "3 in 30 days"
    assert (
        pattern_text({"min_count": 3, "window_days": 7, "count": "patients"})
        == "3 patients in 7 days"
    )
