"""The package's import graph: no cycles, and pools are acquired in one place.

Static checks on the source (parsed with ``ast``, nothing is imported), so they are fast
and need no database. Every import of a ``safetyreport`` module counts, wherever it is
in the file: at the top, under ``if TYPE_CHECKING:``, or inside a function. A cycle that
only works thanks to a local import is still a cycle: the modules cannot be understood
(or moved) one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "safetyreport"
SOURCE = Path(__file__).resolve().parent.parent / "src" / PACKAGE


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()  # a package's __init__ is the package module
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules ``module`` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node.module, node.level)
            for alias in node.names:
                # ``from safetyreport.x import y``: the submodule x.y if there is one.
                submodule = f"{base}.{alias.name}"
                imported.add(submodule if submodule in known else base)
    return {name for name in imported if name in known and name != module}


def _absolute(module: str, is_package: bool, name: str | None, level: int) -> str:
    if level == 0:
        return name or ""
    # Relative: level 1 is this module's package (the module itself for an __init__).
    parts = module.split(".")
    if not is_package:
        parts.pop()
    parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, name] if name else parts)


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imported(name, path, known) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan), shortest found by BFS."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_shortest_cycle(graph, group) for group in groups]


def _shortest_cycle(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & group):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a strongly connected group has one


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "safetyreport.alerts" in graph  # a package is its __init__
    assert "safetyreport.db.pool" in graph["safetyreport.app"]


def test_cycle_detection_finds_and_prints_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_relative_imports_resolve_like_absolute_ones() -> None:
    assert _absolute("safetyreport.alerts.rules", False, "view", 1) == "safetyreport.alerts.view"
    assert _absolute("safetyreport.alerts", True, "view", 1) == "safetyreport.alerts.view"
    assert _absolute("safetyreport.alerts.rules", False, None, 2) == "safetyreport"


def test_the_package_has_no_import_cycle() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


# Where pooled connections may be taken: the db layer, and the background runner.
ACQUIRING_ALLOWED = ("db/", "background.py")


def test_only_the_db_layer_and_the_background_runner_acquire_connections() -> None:
    offenders = [
        f"{path.relative_to(SOURCE)}:{number}"
        for path in sorted(SOURCE.rglob("*.py"))
        if not path.relative_to(SOURCE).as_posix().startswith(ACQUIRING_ALLOWED)
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if ".acquire(" in line
    ]
    assert not offenders, "pool.acquire() outside the db layer: " + ", ".join(offenders)


# Routes parse, authorize and call a service: they get the user, the address and the
# transaction from the request context, and leave SQL and audit entries to services.
ROUTE_MODULES = sorted(
    path for path in SOURCE.rglob("*.py") if path.stem == "routes" or path.stem.endswith("_routes")
)
NOT_IN_ROUTES = {
    "app_state(": "take app_state: StateDep from the request context",
    "principal_of(": "take caller: CallerDep from the request context",
    "client_address(": "take caller: CallerDep (or address: AddressDep)",
    "AuditEvent(": "let the service audit through Caller.audit",
    ".transaction(": "take db: DbDep (already in a transaction)",
    ".fetch(": "SQL belongs in a service",
    ".fetchrow(": "SQL belongs in a service",
    ".fetchval(": "SQL belongs in a service",
    ".execute(": "SQL belongs in a service",
}


def test_there_are_route_modules_to_check() -> None:
    names = {path.relative_to(SOURCE).as_posix() for path in ROUTE_MODULES}
    assert {"reports/routes.py", "alerts/routes.py", "audit/routes.py", "web/routes.py"} <= names


@pytest.mark.parametrize("path", ROUTE_MODULES, ids=lambda p: p.relative_to(SOURCE).as_posix())
def test_routes_do_no_plumbing_sql_or_auditing_of_their_own(path: Path) -> None:
    offenders = [
        f"{path.relative_to(SOURCE)}:{number}: {needle} ({advice})"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        for needle, advice in NOT_IN_ROUTES.items()
        if needle in line and not line.lstrip().startswith("#")
    ]
    assert not offenders, "\n".join(offenders)
