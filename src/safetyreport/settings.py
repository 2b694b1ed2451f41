"""Typed settings, read from the environment once.

Every variable the service reads is listed in ``ENVIRONMENT_VARIABLES`` so that
deployment files (compose.yaml) can be checked against it by a test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

ENVIRONMENT_VARIABLES = (
    "DATABASE_URL",
    "SAFETYREPORT_DATA_DIR",
    "SAFETYREPORT_APP_DB_PASSWORD",
    "SAFETYREPORT_SESSION_IDLE_MINUTES",
    "SAFETYREPORT_SESSION_ABSOLUTE_HOURS",
    "SAFETYREPORT_IDEMPOTENCY_TTL_HOURS",
    "SAFETYREPORT_CLOCK_SKEW_SECONDS",
    "SAFETYREPORT_POOL_MAX_SIZE",
    "SAFETYREPORT_LOG_LEVEL",
    "SAFETYREPORT_TRUSTED_PROXIES",
)


# The login role requests run as: it owns no table and is not a superuser.
# Fixed, because the migrations grant it its privileges by name.
APP_DB_ROLE = "safetyreport_app"


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


def _int(env: dict[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    # None means: run the embedded PostgreSQL in data_dir.
    url: str | None
    # Password of the login role requests run as (APP_DB_ROLE); unset with trust auth.
    app_password: str | None = None
    pool_max_size: int = 10


@dataclass(frozen=True, slots=True)
class AuthSettings:
    session_idle: timedelta = timedelta(minutes=30)
    session_absolute: timedelta = timedelta(hours=12)


@dataclass(frozen=True, slots=True)
class ReportSettings:
    idempotency_ttl: timedelta = timedelta(hours=24)
    clock_skew: timedelta = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Settings:
    database: DatabaseSettings
    data_dir: Path
    auth: AuthSettings = field(default_factory=AuthSettings)
    reports: ReportSettings = field(default_factory=ReportSettings)
    log_level: str = "INFO"
    # Client addresses come from X-Forwarded-For only when the peer is one of these.
    trusted_proxies: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        idempotency_hours = _int(env, "SAFETYREPORT_IDEMPOTENCY_TTL_HOURS", 24, minimum=24)
        proxies = env.get("SAFETYREPORT_TRUSTED_PROXIES", "")
        return cls(
            database=DatabaseSettings(
                url=env.get("DATABASE_URL") or None,
                app_password=env.get("SAFETYREPORT_APP_DB_PASSWORD") or None,
                pool_max_size=_int(env, "SAFETYREPORT_POOL_MAX_SIZE", 10),
            ),
            data_dir=Path(env.get("SAFETYREPORT_DATA_DIR") or ".safetyreport").resolve(),
            auth=AuthSettings(
                session_idle=timedelta(minutes=_int(env, "SAFETYREPORT_SESSION_IDLE_MINUTES", 30)),
                session_absolute=timedelta(
                    hours=_int(env, "SAFETYREPORT_SESSION_ABSOLUTE_HOURS", 12)
                ),
            ),
            reports=ReportSettings(
                idempotency_ttl=timedelta(hours=idempotency_hours),
                clock_skew=timedelta(
                    seconds=_int(env, "SAFETYREPORT_CLOCK_SKEW_SECONDS", 300, minimum=0)
                ),
            ),
            log_level=(env.get("SAFETYREPORT_LOG_LEVEL") or "INFO").upper(),
            trusted_proxies=frozenset(p.strip() for p in proxies.split(",") if p.strip()),
        )
