"""Key files the service makes on first start in its data folder."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def create_key_file(path: Path, content: bytes) -> None:
    """Write a new key file readable by its owner only; keep the first if several race.

    Written to a temporary file first and linked into place: link() fails when the file
    exists, so a worker that lost the race reads the winner's key, never half of one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)
