"""The repository's documentation: self-contained, linked correctly, complete.

- No tracked file refers to the directory beside the repository that the project's
  reference notes came from; the one exception is a migration already applied, which
  is never edited (checksums guard it).
- Every relative link in a Markdown file resolves to a tracked file, and every
  ``#anchor`` to a heading of its target.
- Every environment variable the service reads is documented in docs/configuration.md.
- README.md stays a front door: short, with the details in docs/.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from safetyreport.settings import ENVIRONMENT_VARIABLES

ROOT = Path(__file__).resolve().parents[1]
# Spelled in two parts so that this file does not mention it itself.
OUTSIDE_REFERENCE = "../" + "shared"
README_MAX_CHARACTERS = 10_000

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`]*`")
FENCE = re.compile(r"^(```|~~~)")


def tracked_files() -> list[str]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no list of tracked files")
    return [name for name in listed.decode().split("\0") if name]


def _text(name: str) -> str | None:
    try:
        return (ROOT / name).read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
        return None  # binary, or deleted but not yet staged


@pytest.mark.end_to_end  # lists the tracked files with git
def test_no_file_refers_outside_the_repository() -> None:
    mentioning = [
        name
        for name in tracked_files()
        if (text := _text(name)) is not None and OUTSIDE_REFERENCE in text
    ]
    assert mentioning == []


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    anchors = set()
    for line in _outside_fences(markdown):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            title = match.group(1).lower().replace("`", "")
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def _outside_fences(markdown: str) -> list[str]:
    lines, fenced = [], False
    for line in markdown.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def links(markdown: str) -> list[str]:
    """Link targets outside code blocks and code spans."""
    return [
        target
        for line in _outside_fences(markdown)
        for target in LINK.findall(CODE_SPAN.sub("", line))
    ]


def broken_links(name: str, tracked: set[str]) -> list[str]:
    source = ROOT / name
    broken = []
    for target in links(source.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (source.parent / path).resolve() if path else source
        relative = resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else ""
        if relative not in tracked and not (path and resolved.is_dir()):
            broken.append(f"{target}: no such file in the repository")
        elif anchor and anchor not in heading_anchors(resolved.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading with that anchor")
    return broken


def markdown_files() -> list[str]:
    return [name for name in tracked_files() if name.endswith(".md")]


@pytest.mark.end_to_end  # lists the tracked files with git
def test_every_link_resolves() -> None:
    tracked = set(tracked_files())
    names = markdown_files()
    assert "README.md" in names
    assert "docs/architecture.md" in names
    broken = {name: found for name in names if (found := broken_links(name, tracked))}
    assert broken == {}


def test_every_environment_variable_is_documented() -> None:
    configuration = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    table = "\n".join(line for line in configuration.splitlines() if line.startswith("| `"))
    documented = set(re.findall(r"`((?:DATABASE_URL|SAFETYREPORT_[A-Z0-9_]+))`", table))
    # Rows may name a family as `SAFETYREPORT_ACK_MINUTES_CRITICAL`, `_URGENT`, `_HIGH`.
    for family, suffixes in re.findall(
        r"`(SAFETYREPORT_[A-Z0-9_]+?)_[A-Z]+`((?:, `_[A-Z]+`)+)", table
    ):
        documented |= {family + suffix for suffix in re.findall(r"`(_[A-Z]+)`", suffixes)}

    assert sorted(set(ENVIRONMENT_VARIABLES) - documented) == []
    assert sorted(documented - set(ENVIRONMENT_VARIABLES)) == []


def test_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")

    assert len(readme) < README_MAX_CHARACTERS
    for command in ("scripts/demo", "scripts/test"):
        assert command in readme
