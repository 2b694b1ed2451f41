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
    "SAFETYREPORT_ACK_MINUTES_CRITICAL",
    "SAFETYREPORT_ACK_MINUTES_URGENT",
    "SAFETYREPORT_ACK_MINUTES_HIGH",
    "SAFETYREPORT_ESCALATION_INTERVAL_SECONDS",
    "SAFETYREPORT_WEBHOOK_URLS",
    "SAFETYREPORT_WEBHOOK_SECRET",
    "SAFETYREPORT_DELIVERY_MAX_ATTEMPTS",
    "SAFETYREPORT_DELIVERY_BACKOFF_CAP_SECONDS",
    "SAFETYREPORT_SIGNING_KEY",
    "SAFETYREPORT_CHECKPOINT_INTERVAL_SECONDS",
    "SAFETYREPORT_REQUEST_BODY_TIMEOUT_SECONDS",
    "SAFETYREPORT_POOL_ACQUIRE_TIMEOUT_SECONDS",
    "SAFETYREPORT_EXPORTS_PER_USER",
    "SAFETYREPORT_EXPORTS_TOTAL",
    "SAFETYREPORT_EXPORT_SEND_TIMEOUT_SECONDS",
    "SAFETYREPORT_UPLOAD_VERIFICATIONS",
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
class AlertSettings:
    # How long an alert may stay unacknowledged before it escalates, per severity
    # (info alerts never escalate).
    ack_deadlines: dict[str, timedelta] = field(
        default_factory=lambda: {
            "critical": timedelta(minutes=15),
            "urgent": timedelta(minutes=60),
            "high": timedelta(hours=24),
        }
    )
    escalation_interval: timedelta = timedelta(seconds=5)
    webhook_urls: tuple[str, ...] = ()
    # Signs webhook bodies (HMAC-SHA256); required when webhook_urls is set.
    webhook_secret: str | None = None
    delivery_max_attempts: int = 10
    delivery_backoff_base: timedelta = timedelta(seconds=2)
    delivery_backoff_cap: timedelta = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class AuditSettings:
    # The Ed25519 key that signs exports and checkpoints: this file when given (it must
    # exist), else a key created on first start in the data folder. Never in the database.
    signing_key_file: Path | None = None
    checkpoint_interval: timedelta = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class CapacitySettings:
    """What one service process takes on at once (each worker process has its own)."""

    # Waiting longer than this for a pooled database connection answers 503.
    acquire_timeout: timedelta = timedelta(seconds=5)
    exports_per_user: int = 2
    # Also the size of the exports' own connection pool.
    exports_total: int = 4
    # An export whose client takes no chunk for this long is ended (recorded incomplete).
    export_send_timeout: timedelta = timedelta(seconds=60)
    # Uploaded exports verified at once (POST /api/v1/audit/export/verify).
    upload_verifications: int = 2


@dataclass(frozen=True, slots=True)
class Settings:
    database: DatabaseSettings
    data_dir: Path
    auth: AuthSettings = field(default_factory=AuthSettings)
    reports: ReportSettings = field(default_factory=ReportSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    log_level: str = "INFO"
    # Client addresses come from X-Forwarded-For only when the peer is one of these.
    trusted_proxies: frozenset[str] = frozenset()
    # A request body must arrive within this time from the request's start (else 408).
    request_body_timeout: timedelta = timedelta(seconds=30)
    capacity: CapacitySettings = field(default_factory=CapacitySettings)

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
            alerts=_alert_settings(env),
            audit=AuditSettings(
                signing_key_file=(
                    Path(env["SAFETYREPORT_SIGNING_KEY"]).resolve()
                    if env.get("SAFETYREPORT_SIGNING_KEY")
                    else None
                ),
                checkpoint_interval=timedelta(
                    seconds=_int(env, "SAFETYREPORT_CHECKPOINT_INTERVAL_SECONDS", 300)
                ),
            ),
            log_level=(env.get("SAFETYREPORT_LOG_LEVEL") or "INFO").upper(),
            trusted_proxies=frozenset(p.strip() for p in proxies.split(",") if p.strip()),
            request_body_timeout=timedelta(
                seconds=_int(env, "SAFETYREPORT_REQUEST_BODY_TIMEOUT_SECONDS", 30)
            ),
            capacity=_capacity_settings(env),
        )


def _alert_settings(env: dict[str, str]) -> AlertSettings:
    defaults = AlertSettings()
    deadlines = {
        severity: timedelta(
            minutes=_int(
                env,
                f"SAFETYREPORT_ACK_MINUTES_{severity.upper()}",
                int(default.total_seconds() // 60),
            )
        )
        for severity, default in defaults.ack_deadlines.items()
    }
    urls = tuple(
        u.strip() for u in env.get("SAFETYREPORT_WEBHOOK_URLS", "").split(",") if u.strip()
    )
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise SettingsError(f"SAFETYREPORT_WEBHOOK_URLS: {url!r} is not an http(s) URL")
    secret = env.get("SAFETYREPORT_WEBHOOK_SECRET") or None
    if urls and secret is None:
        raise SettingsError(
            "SAFETYREPORT_WEBHOOK_SECRET is required with SAFETYREPORT_WEBHOOK_URLS"
        )
    return AlertSettings(
        ack_deadlines=deadlines,
        escalation_interval=timedelta(
            seconds=_int(env, "SAFETYREPORT_ESCALATION_INTERVAL_SECONDS", 5)
        ),
        webhook_urls=urls,
        webhook_secret=secret,
        delivery_max_attempts=_int(env, "SAFETYREPORT_DELIVERY_MAX_ATTEMPTS", 10),
        delivery_backoff_cap=timedelta(
            seconds=_int(env, "SAFETYREPORT_DELIVERY_BACKOFF_CAP_SECONDS", 600)
        ),
    )


def _capacity_settings(env: dict[str, str]) -> CapacitySettings:
    return CapacitySettings(
        acquire_timeout=timedelta(
            seconds=_int(env, "SAFETYREPORT_POOL_ACQUIRE_TIMEOUT_SECONDS", 5)
        ),
        exports_per_user=_int(env, "SAFETYREPORT_EXPORTS_PER_USER", 2),
        exports_total=_int(env, "SAFETYREPORT_EXPORTS_TOTAL", 4),
        export_send_timeout=timedelta(
            seconds=_int(env, "SAFETYREPORT_EXPORT_SEND_TIMEOUT_SECONDS", 60)
        ),
        upload_verifications=_int(env, "SAFETYREPORT_UPLOAD_VERIFICATIONS", 2),
    )
