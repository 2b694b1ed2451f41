"""The condition language of alert rules: parsing (with paths in errors) and evaluation."""

from __future__ import annotations

from typing import Any

import pytest

from safetyreport.alerts.conditions import MAX_DEPTH, All, AnyOf, Compare, Not, parse_condition
from safetyreport.errors import ValidationFailed

FACTS: dict[str, Any] = {
    "systolic": 180,
    "diastolic": 100,
    "dose_mg": 56.0,
    "phase": "pre_dose",
    "resolved": False,
    "respiratory_depression": True,
    "symptoms": ["chest_pain", "confusion"],
    "seriousness": [],
    "age_band": None,
    "moaa_s": 0,
}


def holds(raw: dict[str, Any], facts: dict[str, Any] | None = None) -> bool:
    return parse_condition(raw).holds(FACTS if facts is None else facts)


def cmp(field: str, op: str, value: Any = None) -> dict[str, Any]:
    raw: dict[str, Any] = {"field": field, "op": op}
    if op not in ("empty", "not_empty"):
        raw["value"] = value
    return raw


def failure(raw: Any) -> list[tuple[str, str]]:
    with pytest.raises(ValidationFailed) as caught:
        parse_condition(raw)
    return [(e.field, e.rule) for e in caught.value.errors]


# --- parsing ----------------------------------------------------------------------


def test_parse_builds_the_tree() -> None:
    raw = {
        "all": [
            {"field": "phase", "op": "==", "value": "pre_dose"},
            {"any": [{"not": {"field": "spo2", "op": "in", "value": [88, 89]}}]},
        ]
    }
    assert parse_condition(raw) == All(
        (
            Compare("phase", "==", "pre_dose"),
            AnyOf((Not(Compare("spo2", "in", (88, 89))),)),
        )
    )


def test_unary_ops_parse_without_a_value() -> None:
    assert parse_condition(cmp("symptoms", "not_empty")) == Compare("symptoms", "not_empty")
    assert parse_condition(cmp("symptoms", "empty")) == Compare("symptoms", "empty")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param([], [("when", "type")], id="not-an-object"),
        pytest.param("systolic > 1", [("when", "type")], id="a-string"),
        pytest.param(None, [("when", "type")], id="null"),
        pytest.param({}, [("when", "shape")], id="empty-object"),
        pytest.param({"bogus": 1}, [("when", "shape")], id="unknown-key"),
        pytest.param(
            {"all": [cmp("a", "==", 1)], "any": [cmp("a", "==", 1)]},
            [("when", "shape")],
            id="two-keys",
        ),
        pytest.param({"all": []}, [("when.all", "type")], id="empty-all"),
        pytest.param({"any": cmp("a", "==", 1)}, [("when.any", "type")], id="any-not-a-list"),
        pytest.param({"not": [cmp("a", "==", 1)]}, [("when.not", "type")], id="not-of-a-list"),
        pytest.param(
            {"any": [cmp("a", "==", 1), {"field": "a", "op": "~", "value": 1}]},
            [("when.any[1].op", "enum")],
            id="bad-op-in-any",
        ),
        pytest.param(
            {"all": [cmp("a", "==", 1), {"not": {"all": [{"oops": True}]}}]},
            [("when.all[1].not.all[0]", "shape")],
            id="deep-path",
        ),
        pytest.param({"op": "==", "value": 1}, [("when.field", "required")], id="no-field"),
        pytest.param(cmp("", "==", 1), [("when.field", "required")], id="empty-field"),
        pytest.param(
            {"field": 3, "op": "==", "value": 1}, [("when.field", "required")], id="field-not-text"
        ),
        pytest.param({"field": "a", "value": 1}, [("when.op", "enum")], id="no-op"),
        pytest.param({"field": "a", "op": "=", "value": 1}, [("when.op", "enum")], id="bad-op"),
        pytest.param({"field": "a", "op": "=="}, [("when.value", "type")], id="no-value"),
        pytest.param(cmp("a", "==", None), [("when.value", "type")], id="null-value"),
        pytest.param(cmp("a", ">", [1]), [("when.value", "type")], id="list-for-compare"),
        pytest.param(cmp("a", "==", {"x": 1}), [("when.value", "type")], id="object-value"),
        pytest.param(cmp("a", "in", 1), [("when.value", "type")], id="in-scalar"),
        pytest.param(cmp("a", "not_in", []), [("when.value", "type")], id="not-in-empty"),
        pytest.param(cmp("a", "any_of", [[1]]), [("when.value", "type")], id="any-of-nested"),
        pytest.param(cmp("a", "in", [1, None]), [("when.value", "type")], id="in-with-null"),
        pytest.param(
            {"field": "a", "op": "empty", "value": 1},
            [("when.value", "not_applicable")],
            id="empty-with-value",
        ),
        pytest.param(
            {"field": "a", "op": "not_empty", "value": None},
            [("when.value", "not_applicable")],
            id="not-empty-with-null-value",
        ),
        pytest.param(
            {"field": "a", "op": "==", "value": 1, "extra": 2},
            [("when", "unknown_field")],
            id="unknown-compare-key",
        ),
        pytest.param(
            {"field": "a", "op": "==", "value": 1, "all": []},
            [("when", "unknown_field")],
            id="compare-mixed-with-all",
        ),
        pytest.param(
            {"field": "", "op": "nope", "extra": 1},
            [("when", "unknown_field"), ("when.field", "required"), ("when.op", "enum")],
            id="every-error-named",
        ),
    ],
)
def test_invalid_conditions_name_the_path(raw: Any, expected: list[tuple[str, str]]) -> None:
    assert failure(raw) == expected


@pytest.mark.parametrize(
    "op",
    [
        pytest.param(["=="], id="list"),
        pytest.param({"eq": 1}, id="object"),
    ],
)
def test_unhashable_op_is_a_validation_error(op: Any) -> None:
    assert failure({"field": "a", "op": op, "value": 1}) == [("when.op", "enum")]


def test_custom_root_path_is_used() -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_condition({"not": {"field": "a", "op": "?", "value": 1}}, "definition.when")
    assert [e.field for e in caught.value.errors] == ["definition.when.not.op"]


def nested_nots(levels: int) -> dict[str, Any]:
    raw: dict[str, Any] = cmp("systolic", ">", 1)
    for _ in range(levels):
        raw = {"not": raw}
    return raw


def nested_alls(levels: int) -> dict[str, Any]:
    raw: dict[str, Any] = cmp("systolic", ">", 1)
    for _ in range(levels):
        raw = {"all": [raw]}
    return raw


def test_depth_limit_allows_max_depth() -> None:
    assert parse_condition(nested_nots(MAX_DEPTH)).holds(FACTS) is True  # 8 nots: even
    assert parse_condition(nested_alls(MAX_DEPTH)).holds(FACTS) is True


def test_depth_limit_refuses_one_more() -> None:
    path = "when" + ".not" * (MAX_DEPTH + 1)
    assert failure(nested_nots(MAX_DEPTH + 1)) == [(path, "depth")]
    path = "when" + ".all[0]" * (MAX_DEPTH + 1)
    assert failure(nested_alls(MAX_DEPTH + 1)) == [(path, "depth")]


def test_depth_limit_holds_against_very_deep_input() -> None:
    assert failure(nested_nots(5000))[0][1] == "depth"


# --- evaluation: each op ----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [
        ("systolic", "==", 180, True),
        ("systolic", "==", 181, False),
        ("dose_mg", "==", 56, True),
        ("phase", "==", "pre_dose", True),
        ("phase", "==", "post_dose", False),
        ("resolved", "==", False, True),
        ("resolved", "==", True, False),
        ("systolic", "!=", 181, True),
        ("systolic", "!=", 180, False),
        ("phase", "!=", "post_dose", True),
        ("respiratory_depression", "!=", True, False),
        ("systolic", ">", 179, True),
        ("systolic", ">", 180, False),
        ("dose_mg", ">", 55.5, True),
        ("systolic", ">=", 180, True),
        ("systolic", ">=", 181, False),
        ("systolic", "<", 181, True),
        ("systolic", "<", 180, False),
        ("systolic", "<=", 180, True),
        ("systolic", "<=", 179, False),
        ("phase", ">", "discharge", True),
        ("phase", "<", "discharge", False),
        ("systolic", "in", [170, 180], True),
        ("systolic", "in", [170, 181], False),
        ("phase", "in", ["pre_dose", "post_dose"], True),
        ("resolved", "in", [False], True),
        ("systolic", "not_in", [170, 181], True),
        ("systolic", "not_in", [170, 180], False),
        ("phase", "not_in", ["discharge"], True),
        ("symptoms", "any_of", ["seizure", "confusion"], True),
        ("symptoms", "any_of", ["seizure"], False),
        ("phase", "any_of", ["pre_dose"], False),
        ("seriousness", "any_of", ["death"], False),
    ],
)
def test_each_op(field: str, op: str, value: Any, expected: bool) -> None:
    assert holds(cmp(field, op, value)) is expected


@pytest.mark.parametrize(
    ("field", "op", "expected"),
    [
        ("symptoms", "not_empty", True),
        ("symptoms", "empty", False),
        ("seriousness", "not_empty", False),
        ("seriousness", "empty", True),
        ("missing", "not_empty", False),
        ("missing", "empty", True),
        ("age_band", "not_empty", False),
        ("age_band", "empty", True),
    ],
)
def test_unary_ops(field: str, op: str, expected: bool) -> None:
    assert holds(cmp(field, op)) is expected


@pytest.mark.parametrize(("field", "value"), [("moaa_s", 0), ("resolved", False)])
def test_a_present_zero_or_false_is_not_empty(field: str, value: Any) -> None:
    facts = {field: value}
    assert holds(cmp(field, "empty"), facts) is False
    assert holds(cmp(field, "not_empty"), facts) is True


@pytest.mark.parametrize(
    ("op", "value"),
    [
        ("==", 1),
        ("==", "x"),
        ("==", False),
        ("!=", 1),
        ("!=", "x"),
        ("!=", True),
        (">", 0),
        (">=", 0),
        ("<", 1000),
        ("<=", 1000),
        (">", "a"),
        ("in", [1, "x", True]),
        ("not_in", [1, "x", True]),
        ("any_of", [1, "x"]),
    ],
)
@pytest.mark.parametrize("field", ["missing", "age_band"])
def test_absent_or_null_field_is_false(field: str, op: str, value: Any) -> None:
    assert holds(cmp(field, op, value)) is False


@pytest.mark.parametrize(
    ("facts", "op", "value"),
    [
        # string vs number
        ({"x": "180"}, "==", 180),
        ({"x": "180"}, "!=", 181),
        ({"x": "180"}, ">", 1),
        ({"x": "180"}, ">=", 1),
        ({"x": "180"}, "<", 1000),
        ({"x": "180"}, "<=", 1000),
        ({"x": 180}, ">", "1"),
        ({"x": 180}, "<", "z"),
        ({"x": "180"}, "in", [180]),
        ({"x": "180"}, "not_in", [1]),
        ({"x": ["180"]}, "any_of", [180]),
        # bool vs number
        ({"x": True}, "==", 1),
        ({"x": False}, "==", 0),
        ({"x": 1}, "==", True),
        ({"x": 0}, "==", False),
        ({"x": True}, "!=", 5),
        ({"x": True}, ">", 0),
        ({"x": True}, ">=", 1),
        ({"x": False}, "<", 1),
        ({"x": False}, "<=", 0),
        ({"x": 1}, ">", False),
        ({"x": 2}, ">=", True),
        ({"x": True}, "in", [1, 2]),
        ({"x": 0}, "in", [False]),
        ({"x": True}, "not_in", [5]),
        ({"x": [True]}, "any_of", [1]),
        # bool vs string
        ({"x": True}, "==", "true"),
        ({"x": True}, ">", "a"),
    ],
)
def test_type_mismatch_is_false(facts: dict[str, Any], op: str, value: Any) -> None:
    assert holds(cmp("x", op, value), facts) is False


# --- evaluation: nesting ----------------------------------------------------------

TRUE = cmp("systolic", "==", 180)
FALSE = cmp("systolic", "==", 1)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"all": [TRUE]}, True),
        ({"all": [TRUE, TRUE]}, True),
        ({"all": [TRUE, FALSE]}, False),
        ({"all": [FALSE, TRUE]}, False),
        ({"any": [FALSE]}, False),
        ({"any": [FALSE, TRUE]}, True),
        ({"any": [FALSE, FALSE]}, False),
        ({"not": TRUE}, False),
        ({"not": FALSE}, True),
        ({"not": {"not": TRUE}}, True),
        ({"all": [TRUE, {"any": [FALSE, {"not": FALSE}]}]}, True),
        ({"all": [TRUE, {"any": [FALSE, {"not": TRUE}]}]}, False),
        ({"any": [{"all": [TRUE, FALSE]}, {"all": [TRUE, {"not": FALSE}]}]}, True),
        ({"not": {"any": [FALSE, {"all": [TRUE, TRUE]}]}}, False),
    ],
)
def test_all_any_not(raw: dict[str, Any], expected: bool) -> None:
    assert holds(raw) is expected


def test_not_of_an_absent_field_is_true() -> None:
    # The pre-dose hold rule relies on it: no age band means the under-65 threshold.
    assert holds({"not": cmp("age_band", "==", "65_and_over")}) is True
    assert holds({"not": cmp("missing", ">", 1)}) is True


def test_evaluation_does_not_change_the_facts() -> None:
    facts = dict(FACTS)
    parse_condition({"all": [TRUE, cmp("symptoms", "any_of", ["seizure"])]}).holds(facts)
    assert facts == FACTS


# --- bounded work (issue 10 item 2) ---------------------------------------------------


def test_list_lookups_do_not_grow_with_the_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """An `in` list is compiled to a set: evaluating it compares no value one by one (it
    compared every listed value before, 20,000 per rule in the review's attack)."""
    from safetyreport.alerts import conditions, limits

    compared = 0
    real_equal = conditions._equal

    def counting_equal(actual: Any, value: Any) -> bool:
        nonlocal compared
        compared += 1
        return real_equal(actual, value)

    monkeypatch.setattr(conditions, "_equal", counting_equal)
    values = [f"PT-{i}" for i in range(limits.MAX_LIST_VALUES)]
    for op in ("in", "not_in"):
        condition = parse_condition(cmp("patient_ref", op, values))
        assert condition.holds({"patient_ref": "PT-7"}) is (op == "in")
        assert condition.holds({"patient_ref": "PT-X"}) is (op == "not_in")
    any_of = parse_condition(cmp("symptoms", "any_of", values))
    assert any_of.holds({"symptoms": ["x", "PT-3"]}) is True
    assert compared == 0


@pytest.mark.parametrize(
    ("raw", "facts", "expected"),
    [
        (cmp("resolved", "in", [0, 1]), {"resolved": False}, False),  # false is not 0
        (cmp("systolic", "in", [True, 180.0]), {"systolic": 180}, True),  # 180 is 180.0
        (cmp("systolic", "not_in", ["180"]), {"systolic": 180}, False),  # no number listed
        (cmp("symptoms", "in", ["a"]), {"symptoms": ["a"]}, False),  # a list is no value
        (cmp("symptoms", "any_of", ["a"]), {"symptoms": [["a"], "b"]}, False),
    ],
)
def test_compiled_lists_keep_the_kinds_apart(
    raw: dict[str, Any], facts: dict[str, Any], expected: bool
) -> None:
    assert parse_condition(raw).holds(facts) is expected


def test_a_condition_has_at_most_max_nodes() -> None:
    from safetyreport.alerts.limits import MAX_CONDITION_NODES

    leaf = cmp("systolic", ">", 1)
    assert parse_condition({"any": [leaf] * (MAX_CONDITION_NODES - 1)})
    assert failure({"any": [leaf] * MAX_CONDITION_NODES}) == [
        (f"when.any[{MAX_CONDITION_NODES - 1}]", "limit")
    ]
