"""Deployment files agree with the code: compose.yaml, the Dockerfile and the settings."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from safetyreport.db.embedded import app_url
from safetyreport.settings import APP_DB_ROLE, ENVIRONMENT_VARIABLES, Settings, SettingsError

ROOT = Path(__file__).resolve().parents[1]
HOOK_SECRET = "hook-secret-of-at-least-32-bytes!"

# A valid value for every variable, each different from the default.
VALID_ENV = {
    "DATABASE_URL": "postgresql://owner:secret@db.example:5432/safetyreport",
    "SAFETYREPORT_DATA_DIR": "/srv/safetyreport-data",
    "SAFETYREPORT_APP_DB_PASSWORD": "app-secret",
    "SAFETYREPORT_SESSION_IDLE_MINUTES": "7",
    "SAFETYREPORT_SESSION_ABSOLUTE_HOURS": "3",
    "SAFETYREPORT_IDEMPOTENCY_TTL_HOURS": "48",
    "SAFETYREPORT_CLOCK_SKEW_SECONDS": "42",
    "SAFETYREPORT_POOL_MAX_SIZE": "23",
    "SAFETYREPORT_LOG_LEVEL": "debug",
    "SAFETYREPORT_TRUSTED_PROXIES": "10.0.0.1, 10.0.0.2",
    "SAFETYREPORT_ACK_MINUTES_CRITICAL": "5",
    "SAFETYREPORT_ACK_MINUTES_URGENT": "30",
    "SAFETYREPORT_ACK_MINUTES_HIGH": "120",
    "SAFETYREPORT_ESCALATION_INTERVAL_SECONDS": "9",
    "SAFETYREPORT_SIGNAL_INTERVAL_SECONDS": "600",
    "SAFETYREPORT_SIGNAL_MIN_SESSIONS": "30",
    "SAFETYREPORT_WEBHOOK_URLS": "https://hooks.example/one, https://hooks.example/two",
    "SAFETYREPORT_WEBHOOK_SECRET": HOOK_SECRET,
    "SAFETYREPORT_DELIVERY_MAX_ATTEMPTS": "4",
    "SAFETYREPORT_DELIVERY_BACKOFF_CAP_SECONDS": "60",
    "SAFETYREPORT_SIGNING_KEY": "/run/secrets/audit-signing-key.pem",
    "SAFETYREPORT_CHECKPOINT_INTERVAL_SECONDS": "120",
    "SAFETYREPORT_REQUEST_BODY_TIMEOUT_SECONDS": "12",
    "SAFETYREPORT_HEADER_TIMEOUT_SECONDS": "7",
    "SAFETYREPORT_MAX_CONNECTIONS": "64",
    "SAFETYREPORT_TOTP_REQUIRED_ROLES": "safety_officer, auditor,admin",
    "SAFETYREPORT_TOTP_KEY": "/run/secrets/totp-key",
    "SAFETYREPORT_KNOWN_DEVICE_DAYS": "30",
    "SAFETYREPORT_ANONYMOUS_BURST": "20",
    "SAFETYREPORT_ANONYMOUS_PER_MINUTE": "30",
    "SAFETYREPORT_ALLOWED_HOSTS": "safety.clinic.example, *.clinic.example",
    "SAFETYREPORT_API_REFERENCE": "off",
    "SAFETYREPORT_POOL_ACQUIRE_TIMEOUT_SECONDS": "3",
    "SAFETYREPORT_EXPORTS_PER_USER": "1",
    "SAFETYREPORT_EXPORTS_TOTAL": "6",
    "SAFETYREPORT_EXPORT_SEND_TIMEOUT_SECONDS": "20",
    "SAFETYREPORT_UPLOAD_VERIFICATIONS": "3",
    "SAFETYREPORT_SMTP_HOST": "smtp.clinic.example",
    "SAFETYREPORT_SMTP_PORT": "2525",
    "SAFETYREPORT_SMTP_SENDER": "safetyreport@clinic.example",
    "SAFETYREPORT_SMTP_TLS": "tls",
    "SAFETYREPORT_SMTP_USERNAME": "pager",
    "SAFETYREPORT_SMTP_PASSWORD": "smtp-password",
    "SAFETYREPORT_PUBLIC_URL": "https://safety.clinic.example",
    "SAFETYREPORT_METRICS_TOKEN": "a-scraper-token-of-at-least-32-characters",
}
# Variables that are only valid together with another one.
NEEDS = {
    "SAFETYREPORT_WEBHOOK_URLS": {"SAFETYREPORT_WEBHOOK_SECRET": HOOK_SECRET},
    "SAFETYREPORT_SMTP_HOST": {"SAFETYREPORT_SMTP_SENDER": "safetyreport@clinic.example"},
    "SAFETYREPORT_SMTP_USERNAME": {"SAFETYREPORT_SMTP_PASSWORD": "smtp-password"},
    "SAFETYREPORT_SMTP_PASSWORD": {"SAFETYREPORT_SMTP_USERNAME": "pager"},
}
INTEGER_VARIABLES = (
    "SAFETYREPORT_SESSION_IDLE_MINUTES",
    "SAFETYREPORT_SESSION_ABSOLUTE_HOURS",
    "SAFETYREPORT_IDEMPOTENCY_TTL_HOURS",
    "SAFETYREPORT_CLOCK_SKEW_SECONDS",
    "SAFETYREPORT_POOL_MAX_SIZE",
    "SAFETYREPORT_CHECKPOINT_INTERVAL_SECONDS",
    "SAFETYREPORT_REQUEST_BODY_TIMEOUT_SECONDS",
    "SAFETYREPORT_HEADER_TIMEOUT_SECONDS",
    "SAFETYREPORT_MAX_CONNECTIONS",
    "SAFETYREPORT_KNOWN_DEVICE_DAYS",
    "SAFETYREPORT_ANONYMOUS_BURST",
    "SAFETYREPORT_ANONYMOUS_PER_MINUTE",
    "SAFETYREPORT_POOL_ACQUIRE_TIMEOUT_SECONDS",
    "SAFETYREPORT_EXPORTS_PER_USER",
    "SAFETYREPORT_EXPORTS_TOTAL",
    "SAFETYREPORT_EXPORT_SEND_TIMEOUT_SECONDS",
    "SAFETYREPORT_UPLOAD_VERIFICATIONS",
)


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    return loaded


def _service_environment() -> dict[str, str]:
    env = _compose()["services"]["service"]["environment"]
    if isinstance(env, list):  # the "NAME=value" list form
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _environment(service: str) -> dict[str, str]:
    env = _compose()["services"][service]["environment"]
    if isinstance(env, list):  # the "NAME=value" list form
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


_DEFAULTED = re.compile(r"\$\{[A-Z_]+:-([^}]*)\}")


def _with_defaults(value: str) -> str:
    """``value`` as compose expands it without an .env file: ``${NAME:-default}``."""
    return _DEFAULTED.sub(lambda m: m[1], value)


def _database_user(service: str) -> str | None:
    return urlsplit(_with_defaults(_environment(service)["DATABASE_URL"])).username


def _postgres_service() -> tuple[str, dict[str, Any]]:
    for name, service in _compose()["services"].items():
        image = str(service.get("image", ""))
        if image.split(":")[0] in ("postgres", "docker.io/library/postgres", "library/postgres"):
            return name, service
    raise AssertionError("compose.yaml has no service using the official postgres image")


def test_compose_has_a_postgres_service_with_a_healthcheck() -> None:
    _, postgres = _postgres_service()
    healthcheck = postgres["healthcheck"]
    assert healthcheck["test"], "the postgres healthcheck runs no command"
    assert "pg_isready" in " ".join(healthcheck["test"])


def test_compose_service_waits_for_healthy_postgres() -> None:
    name, _ = _postgres_service()
    depends_on = _compose()["services"]["service"]["depends_on"]
    assert depends_on[name]["condition"] == "service_healthy"


def test_compose_service_sets_only_known_variables() -> None:
    env = _service_environment()
    assert "DATABASE_URL" in env
    unknown = sorted(set(env) - set(ENVIRONMENT_VARIABLES))
    assert unknown == [], f"compose.yaml sets variables the service never reads: {unknown}"


def test_compose_migrates_in_a_one_shot_job_with_the_owner_url() -> None:
    name, postgres = _postgres_service()
    migrate = _compose()["services"]["migrate"]
    assert migrate["command"] == ["safetyreport", "migrate"]
    assert str(migrate.get("restart", "no")) == "no"
    assert migrate["depends_on"][name]["condition"] == "service_healthy"
    owner = _with_defaults(postgres["environment"]["POSTGRES_USER"])
    assert _database_user("migrate") == owner
    # The migrations set the application role's password.
    assert "SAFETYREPORT_APP_DB_PASSWORD" in _environment("migrate")
    assert set(_environment("migrate")) <= set(ENVIRONMENT_VARIABLES)


def test_compose_service_connects_only_as_the_application_role() -> None:
    service = _compose()["services"]["service"]
    assert _database_user("service") == APP_DB_ROLE
    assert "--no-migrate" in service["command"]
    assert service["command"][:2] == ["safetyreport", "serve"]
    # Nothing else in its environment carries the owner's password.
    _, postgres = _postgres_service()
    owner_password = _with_defaults(postgres["environment"]["POSTGRES_PASSWORD"])
    assert not any(owner_password in _with_defaults(v) for v in _environment("service").values())
    # Its password is the one the migrate job gives the role.
    password = urlsplit(_with_defaults(_environment("service")["DATABASE_URL"])).password
    assert password == _with_defaults(_environment("migrate")["SAFETYREPORT_APP_DB_PASSWORD"])


def test_compose_service_starts_after_the_migrations_succeeded() -> None:
    depends_on = _compose()["services"]["service"]["depends_on"]
    assert depends_on["migrate"]["condition"] == "service_completed_successfully"


def test_compose_keeps_the_signing_key_on_a_volume_of_its_own() -> None:
    compose = _compose()
    env = _environment("service")
    key_dir = Path(env.get("SAFETYREPORT_SIGNING_KEY") or env["SAFETYREPORT_DATA_DIR"])
    if env.get("SAFETYREPORT_SIGNING_KEY"):
        key_dir = key_dir.parent
    mounts = {
        str(m).split(":")[1]: str(m).split(":")[0]
        for m in compose["services"]["service"]["volumes"]
    }
    volume = mounts[str(key_dir)]
    assert volume in compose["volumes"], "the key must live on a named volume"
    for name, other in compose["services"].items():
        if name != "service":
            assert not any(str(m).startswith(f"{volume}:") for m in other.get("volumes", [])), name


def test_dockerfile_runs_safetyreport_serve() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    cmd_lines = [line for line in dockerfile.splitlines() if line.startswith("CMD")]
    assert len(cmd_lines) == 1
    cmd = json.loads(cmd_lines[0].removeprefix("CMD").strip())
    assert cmd[:2] == ["safetyreport", "serve"]


def _dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), one list per stage."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = " ".join(line.split())
        if line.startswith("FROM "):
            stages.append([])
        if line and not line.startswith("#") and stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_installs_the_locked_runtime_dependencies_and_the_wheel_only() -> None:
    final = _dockerfile_stages()[-1]
    runs = " ".join(line for line in final if line.startswith("RUN "))
    assert "--require-hashes --requirement /tmp/runtime.txt" in runs
    assert "COPY requirements/runtime.txt /tmp/runtime.txt" in final
    assert "pip install --no-cache-dir --no-deps /tmp/wheels/*.whl" in runs
    # No development tools, no embedded PostgreSQL, no source tree: the migrations come
    # inside the wheel.
    assert "embedded" not in runs
    assert "dev.txt" not in " ".join(final)
    copied = [line.split()[-2] for line in final if line.startswith("COPY ")]
    assert copied == ["requirements/runtime.txt", "/wheels/"]


def test_dockerfile_builds_the_wheel_with_the_locked_build_backend() -> None:
    build = _dockerfile_stages()[0]
    assert build[0].endswith(" AS wheel")
    runs = [line for line in build if line.startswith("RUN ")]
    assert runs[0].endswith("--require-hashes --requirement requirements/build.txt")
    assert "--no-deps --no-build-isolation" in runs[-1]
    copied = {line.split()[1] for line in build if line.startswith("COPY ")}
    assert {"sql/", "src/", "pyproject.toml"} <= copied


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for stage in _dockerfile_stages():
        for line in stage:
            if line.startswith("COPY ") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), source
                    assert not {source.split("/")[0], source.rstrip("/")} & ignored, source


def test_every_environment_variable_is_covered_here() -> None:
    assert set(VALID_ENV) == set(ENVIRONMENT_VARIABLES)


def test_settings_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert settings.database.url is None
    assert settings.database.app_password is None
    assert settings.auth.session_idle == timedelta(minutes=30)


@pytest.mark.parametrize("variable", ENVIRONMENT_VARIABLES)
def test_settings_read_each_variable(variable: str) -> None:
    default = Settings.from_env({})
    env = {variable: VALID_ENV[variable], **NEEDS.get(variable, {})}
    changed = Settings.from_env(env)
    assert changed != default, f"{variable} does not change the settings"


def test_webhooks_need_a_signing_secret() -> None:
    with pytest.raises(SettingsError, match="SAFETYREPORT_WEBHOOK_SECRET"):
        Settings.from_env({"SAFETYREPORT_WEBHOOK_URLS": "https://hooks.example/one"})


def test_webhook_urls_must_be_http() -> None:
    with pytest.raises(SettingsError, match="SAFETYREPORT_WEBHOOK_URLS"):
        Settings.from_env(
            {"SAFETYREPORT_WEBHOOK_URLS": "ftp://x", "SAFETYREPORT_WEBHOOK_SECRET": "s"}
        )


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example/one",
        "http://10.0.0.5:8080/hook",
        "http://user:pass@hooks.example/hook",
        "https:///no-host",
        "https://[::1/broken",
    ],
)
def test_webhook_urls_need_https_except_to_loopback(url: str) -> None:
    env = {"SAFETYREPORT_WEBHOOK_URLS": url, "SAFETYREPORT_WEBHOOK_SECRET": HOOK_SECRET}
    with pytest.raises(SettingsError, match="SAFETYREPORT_WEBHOOK_URLS") as raised:
        Settings.from_env(env)
    assert "pass" not in str(raised.value), "the error repeats the URL's credentials"


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example/one",
        "http://127.0.0.1:9/hook",
        "http://127.8.0.1/hook",
        "http://[::1]:8080/hook",
        "http://localhost:8080/hook",
    ],
)
def test_webhook_urls_accepted(url: str) -> None:
    env = {"SAFETYREPORT_WEBHOOK_URLS": url, "SAFETYREPORT_WEBHOOK_SECRET": HOOK_SECRET}
    assert Settings.from_env(env).alerts.webhook_urls == (url,)


@pytest.mark.parametrize("secret", ["s", "hook-secret", "x" * 31, "é" * 15])
def test_webhook_secrets_need_32_bytes(secret: str) -> None:
    env = {
        "SAFETYREPORT_WEBHOOK_URLS": "https://hooks.example/",
        "SAFETYREPORT_WEBHOOK_SECRET": secret,
    }
    with pytest.raises(SettingsError, match="at least 32 bytes"):
        Settings.from_env(env)
    assert Settings.from_env({**env, "SAFETYREPORT_WEBHOOK_SECRET": "x" * 32}).alerts.webhook_secret


def test_settings_from_a_full_environment() -> None:
    settings = Settings.from_env(VALID_ENV)
    assert settings.database.url == VALID_ENV["DATABASE_URL"]
    assert settings.database.app_password == "app-secret"
    assert settings.database.pool_max_size == 23
    assert settings.data_dir == Path("/srv/safetyreport-data")
    assert settings.auth.session_idle == timedelta(minutes=7)
    assert settings.auth.session_absolute == timedelta(hours=3)
    assert settings.reports.idempotency_ttl == timedelta(hours=48)
    assert settings.reports.clock_skew == timedelta(seconds=42)
    assert settings.log_level == "DEBUG"
    assert settings.trusted_proxies == frozenset({"10.0.0.1", "10.0.0.2"})
    assert settings.audit.signing_key_file == Path("/run/secrets/audit-signing-key.pem")
    assert settings.audit.checkpoint_interval == timedelta(minutes=2)
    assert settings.request_body_timeout == timedelta(seconds=12)
    assert settings.server.header_timeout == timedelta(seconds=7)
    assert settings.server.max_connections == 64


@pytest.mark.parametrize("variable", INTEGER_VARIABLES)
@pytest.mark.parametrize("value", ["ten", "1.5", "-1000"])
def test_settings_reject_invalid_numbers(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})


MULTI_HOST = (
    "postgresql://owner@db1:5432,db2:5433,db3:5434/safetyreport?target_session_attrs=read-write"
)


def test_a_multi_host_url_keeps_every_host_and_the_primary_only_for_the_app_role() -> None:
    """A Patroni cluster's nodes in one URL (docs/operations.md#high-availability-patroni):
    the service's own connections name every host and still ask for the writable one."""
    settings = Settings.from_env({"DATABASE_URL": MULTI_HOST, "SAFETYREPORT_APP_DB_PASSWORD": "p"})
    assert settings.database.url == MULTI_HOST
    assert app_url(settings, MULTI_HOST) == (
        f"postgresql://{APP_DB_ROLE}:p@db1:5432,db2:5433,db3:5434/safetyreport"
        "?target_session_attrs=read-write"
    )
