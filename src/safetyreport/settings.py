"""Typed settings, read from the environment once.

Every variable the service reads is listed in ``ENVIRONMENT_VARIABLES`` so that
deployment files (compose.yaml) can be checked against it by a test.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

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
    "SAFETYREPORT_SIGNAL_INTERVAL_SECONDS",
    "SAFETYREPORT_SIGNAL_MIN_SESSIONS",
    "SAFETYREPORT_WEBHOOK_URLS",
    "SAFETYREPORT_WEBHOOK_SECRET",
    "SAFETYREPORT_DELIVERY_MAX_ATTEMPTS",
    "SAFETYREPORT_DELIVERY_BACKOFF_CAP_SECONDS",
    "SAFETYREPORT_SIGNING_KEY",
    "SAFETYREPORT_CHECKPOINT_INTERVAL_SECONDS",
    "SAFETYREPORT_REQUEST_BODY_TIMEOUT_SECONDS",
    "SAFETYREPORT_HEADER_TIMEOUT_SECONDS",
    "SAFETYREPORT_MAX_CONNECTIONS",
    "SAFETYREPORT_TOTP_REQUIRED_ROLES",
    "SAFETYREPORT_TOTP_KEY",
    "SAFETYREPORT_KNOWN_DEVICE_DAYS",
    "SAFETYREPORT_ANONYMOUS_BURST",
    "SAFETYREPORT_ANONYMOUS_PER_MINUTE",
    "SAFETYREPORT_ALLOWED_HOSTS",
    "SAFETYREPORT_API_REFERENCE",
    "SAFETYREPORT_POOL_ACQUIRE_TIMEOUT_SECONDS",
    "SAFETYREPORT_EXPORTS_PER_USER",
    "SAFETYREPORT_EXPORTS_TOTAL",
    "SAFETYREPORT_EXPORT_SEND_TIMEOUT_SECONDS",
    "SAFETYREPORT_UPLOAD_VERIFICATIONS",
    "SAFETYREPORT_SMTP_HOST",
    "SAFETYREPORT_SMTP_PORT",
    "SAFETYREPORT_SMTP_SENDER",
    "SAFETYREPORT_SMTP_TLS",
    "SAFETYREPORT_SMTP_USERNAME",
    "SAFETYREPORT_SMTP_PASSWORD",
    "SAFETYREPORT_PUBLIC_URL",
    "SAFETYREPORT_METRICS_TOKEN",
)


# The login role requests run as: it owns no table and is not a superuser.
# Fixed, because the migrations grant it its privileges by name.
APP_DB_ROLE = "safetyreport_app"

# Host names the service answers to (front_door.py): local use, and the names test
# clients send (Litestar's testserver.local, httpx's ASGI tests' testserver). A deployment
# under a real name sets SAFETYREPORT_ALLOWED_HOSTS.
DEFAULT_ALLOWED_HOSTS = "localhost,127.0.0.1,[::1],testserver.local,testserver"


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
    # Roles that must sign in with a second factor (TOTP or a recovery code).
    totp_required_roles: frozenset[str] = frozenset()
    # The key that encrypts TOTP secrets: this file when given, else one in the data folder.
    totp_key_file: Path | None = None
    # A device that signed in successfully is known (not locked out by others) this long.
    known_device_lifetime: timedelta = timedelta(days=180)
    # Requests that need no sign-in, per client address: a token bucket.
    anonymous_burst: int = 60
    anonymous_per_minute: int = 60


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
    # Safety signals (analytics/signals.py): how often the check runs, and the sessions a
    # clinic's period needs before a point above its control limit raises an alert.
    signal_interval: timedelta = timedelta(hours=1)
    signal_min_sessions: int = 20
    webhook_urls: tuple[str, ...] = ()
    # Signs webhook bodies (HMAC-SHA256); required when webhook_urls is set.
    webhook_secret: str | None = None
    delivery_max_attempts: int = 10
    delivery_backoff_base: timedelta = timedelta(seconds=2)
    delivery_backoff_cap: timedelta = timedelta(minutes=10)


SmtpTls = Literal["none", "starttls", "tls"]
SMTP_TLS_MODES: tuple[SmtpTls, ...] = ("none", "starttls", "tls")


@dataclass(frozen=True, slots=True)
class PagingSettings:
    """Paging the clinic's on-call roster by email; off without an SMTP host."""

    smtp_host: str | None = None
    smtp_port: int = 587
    # The From address of every page; required with smtp_host.
    sender: str | None = None
    # "starttls" upgrades a plain connection (port 587), "tls" connects with TLS (465),
    # "none" sends in the clear (a relay on this machine or in a private network).
    tls: SmtpTls = "starttls"
    username: str | None = None
    password: str | None = None
    # Where people open the service (https://safety.clinic.example): page emails link to
    # {public_url}/alerts/{id}; without it they give the path alone.
    public_url: str | None = None

    @property
    def enabled(self) -> bool:
        return self.smtp_host is not None


@dataclass(frozen=True, slots=True)
class AuditSettings:
    # The Ed25519 key that signs exports and checkpoints: this file when given (it must
    # exist), else a key created on first start in the data folder. Never in the database.
    signing_key_file: Path | None = None
    checkpoint_interval: timedelta = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    # A connection whose request headers take longer than this is closed (408).
    header_timeout: timedelta = timedelta(seconds=15)
    # Open connections per server process; beyond it requests are answered 503.
    max_connections: int = 500


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
    server: ServerSettings = field(default_factory=ServerSettings)
    # Requests for any other Host are refused (400); "*" allows any.
    allowed_hosts: frozenset[str] = frozenset(DEFAULT_ALLOWED_HOSTS.split(","))
    # The API reference page at /schema (the OpenAPI document itself is always served).
    api_reference: bool = True
    capacity: CapacitySettings = field(default_factory=CapacitySettings)
    paging: PagingSettings = field(default_factory=PagingSettings)
    # The bearer token a Prometheus scraper sends for GET /metrics; None: /metrics is off.
    metrics_token: str | None = None

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
                **_sign_in_settings(env),
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
            server=ServerSettings(
                header_timeout=timedelta(
                    seconds=_int(env, "SAFETYREPORT_HEADER_TIMEOUT_SECONDS", 15)
                ),
                max_connections=_int(env, "SAFETYREPORT_MAX_CONNECTIONS", 500),
            ),
            allowed_hosts=_host_names(env),
            api_reference=_on_off(env, "SAFETYREPORT_API_REFERENCE", default=True),
            capacity=_capacity_settings(env),
            paging=_paging_settings(env),
            metrics_token=_metrics_token(env),
        )


def _host_names(env: dict[str, str]) -> frozenset[str]:
    raw = env.get("SAFETYREPORT_ALLOWED_HOSTS") or DEFAULT_ALLOWED_HOSTS
    names = frozenset(n.strip().lower().rstrip(".") for n in raw.split(",") if n.strip())
    if not names:
        raise SettingsError("SAFETYREPORT_ALLOWED_HOSTS names no host (use * to allow any)")
    return names


def _on_off(env: dict[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw not in ("on", "off"):
        raise SettingsError(f"{name} must be 'on' or 'off', got {raw!r}")
    return raw == "on"


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
        _check_webhook_url(url)
    secret = env.get("SAFETYREPORT_WEBHOOK_SECRET") or None
    if urls and secret is None:
        raise SettingsError(
            "SAFETYREPORT_WEBHOOK_SECRET is required with SAFETYREPORT_WEBHOOK_URLS"
        )
    if secret is not None and len(secret.encode()) < MIN_WEBHOOK_SECRET_BYTES:
        raise SettingsError(
            f"SAFETYREPORT_WEBHOOK_SECRET must be at least {MIN_WEBHOOK_SECRET_BYTES} bytes"
        )
    return AlertSettings(
        ack_deadlines=deadlines,
        escalation_interval=timedelta(
            seconds=_int(env, "SAFETYREPORT_ESCALATION_INTERVAL_SECONDS", 5)
        ),
        signal_interval=timedelta(seconds=_int(env, "SAFETYREPORT_SIGNAL_INTERVAL_SECONDS", 3600)),
        signal_min_sessions=_int(env, "SAFETYREPORT_SIGNAL_MIN_SESSIONS", 20),
        webhook_urls=urls,
        webhook_secret=secret,
        delivery_max_attempts=_int(env, "SAFETYREPORT_DELIVERY_MAX_ATTEMPTS", 10),
        delivery_backoff_cap=timedelta(
            seconds=_int(env, "SAFETYREPORT_DELIVERY_BACKOFF_CAP_SECONDS", 600)
        ),
    )


def _paging_settings(env: dict[str, str]) -> PagingSettings:
    host = (env.get("SAFETYREPORT_SMTP_HOST") or "").strip() or None
    sender = (env.get("SAFETYREPORT_SMTP_SENDER") or "").strip() or None
    tls = (env.get("SAFETYREPORT_SMTP_TLS") or "starttls").strip().lower()
    if tls not in SMTP_TLS_MODES:
        raise SettingsError(f"SAFETYREPORT_SMTP_TLS must be one of {', '.join(SMTP_TLS_MODES)}")
    username = env.get("SAFETYREPORT_SMTP_USERNAME") or None
    password = env.get("SAFETYREPORT_SMTP_PASSWORD") or None
    if host is not None and sender is None:
        raise SettingsError("SAFETYREPORT_SMTP_SENDER is required with SAFETYREPORT_SMTP_HOST")
    if (username is None) != (password is None):
        raise SettingsError("SAFETYREPORT_SMTP_USERNAME and SAFETYREPORT_SMTP_PASSWORD go together")
    port = _int(env, "SAFETYREPORT_SMTP_PORT", 465 if tls == "tls" else 587)
    if port > 65535:
        raise SettingsError("SAFETYREPORT_SMTP_PORT must be a port number")
    return PagingSettings(
        smtp_host=host,
        smtp_port=port,
        sender=sender,
        tls=tls,
        username=username,
        password=password,
        public_url=_public_url(env),
    )


def _public_url(env: dict[str, str]) -> str | None:
    """SAFETYREPORT_PUBLIC_URL without its trailing slash: http(s), a host, no query."""
    name = "SAFETYREPORT_PUBLIC_URL"
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    try:
        parts = urlsplit(raw)
        host = parts.hostname
    except ValueError:
        raise SettingsError(f"{name} is malformed") from None
    if parts.scheme not in ("http", "https") or not host:
        raise SettingsError(f"{name} must be http(s)://host[/path], got {raw!r}")
    if parts.query or parts.fragment or "?" in raw or "#" in raw:
        raise SettingsError(f"{name} takes no query or fragment")
    if parts.username is not None or parts.password is not None:
        raise SettingsError(f"{name} takes no credentials")
    return raw.rstrip("/")


# A bearer token shorter than this could be guessed (e.g. `openssl rand -hex 32` gives 64).
MIN_METRICS_TOKEN_CHARS = 32


def _metrics_token(env: dict[str, str]) -> str | None:
    token = (env.get("SAFETYREPORT_METRICS_TOKEN") or "").strip() or None
    if token is not None and len(token) < MIN_METRICS_TOKEN_CHARS:
        raise SettingsError(
            f"SAFETYREPORT_METRICS_TOKEN must be at least {MIN_METRICS_TOKEN_CHARS} characters"
        )
    return token


# An HMAC key shorter than this is guessable offline from one signed body.
MIN_WEBHOOK_SECRET_BYTES = 32
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_webhook_url(url: str) -> None:
    """Alerts carry patient references: https only, plain http just to this machine."""
    # The URL itself is not repeated: it may hold credentials.
    name = "SAFETYREPORT_WEBHOOK_URLS"
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise SettingsError(f"{name}: a URL is malformed") from None
    if parts.scheme not in ("http", "https") or not host:
        raise SettingsError(f"{name}: every URL must be https://host/...")
    if parts.scheme == "http" and not _is_loopback(host):
        raise SettingsError(f"{name}: {host} needs https (plain http only to loopback)")


def _sign_in_settings(env: dict[str, str]) -> dict[str, Any]:
    roles = frozenset(
        r.strip() for r in env.get("SAFETYREPORT_TOTP_REQUIRED_ROLES", "").split(",") if r.strip()
    )
    unknown = sorted(roles - {"nurse", "safety_officer", "auditor", "admin"})
    if unknown:
        raise SettingsError(f"SAFETYREPORT_TOTP_REQUIRED_ROLES: unknown roles {unknown}")
    key = env.get("SAFETYREPORT_TOTP_KEY")
    return {
        "totp_required_roles": roles,
        "totp_key_file": Path(key).resolve() if key else None,
        "known_device_lifetime": timedelta(days=_int(env, "SAFETYREPORT_KNOWN_DEVICE_DAYS", 180)),
        "anonymous_burst": _int(env, "SAFETYREPORT_ANONYMOUS_BURST", 60),
        "anonymous_per_minute": _int(env, "SAFETYREPORT_ANONYMOUS_PER_MINUTE", 60),
    }


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
