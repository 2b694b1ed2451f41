"""Authentication: login, tokens, sessions, roles, passwords, throttling and its audit."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from safetyreport.app import create_app
from safetyreport.audit.chain import SYSTEM_CLI
from safetyreport.auth import passwords, throttle
from safetyreport.auth.users import add_user
from safetyreport.errors import ValidationFailed
from safetyreport.settings import Settings
from tests.helpers.reports import bp_report
from tests.helpers.world import PASSWORD, World

T = TypeVar("T")

LOGIN = "/api/v1/auth/login"
LOGOUT = "/api/v1/auth/logout"
ME = "/api/v1/me"
WRONG = "wrong-password-123"
# The peer address Litestar's test client reports (scope["client"]).
PEER = "testclient"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(
    client: AsyncTestClient[Any],
    username: str,
    password: str = PASSWORD,
    forwarded_for: str | None = None,
) -> Any:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return await client.post(
        LOGIN, json={"username": username, "password": password}, headers=headers
    )


async def token_of(client: AsyncTestClient[Any], username: str) -> str:
    response = await login(client, username)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def fail_logins(
    client: AsyncTestClient[Any], username: str, times: int, forwarded_for: str | None = None
) -> None:
    for _ in range(times):
        response = await login(client, username, WRONG, forwarded_for)
        assert response.status_code == 401, response.text


async def throttle_row(db: asyncpg.Connection[Any], scope: str, key: str) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT failures, locked_until FROM login_throttle WHERE scope = $1 AND key = $2",
        scope,
        key,
    )


def sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@pytest.fixture
async def nurse(world: World) -> str:
    await world.clinic("C1")
    return await world.user("nina", "nurse", ["C1"])


@pytest.fixture
async def proxied_client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    """A client whose peer is a trusted proxy, so X-Forwarded-For names the client."""
    trusting = replace(settings, trusted_proxies=frozenset({PEER, "127.0.0.1"}))
    async with AsyncTestClient(app=create_app(trusting)) as client:
        yield client


# --- login -----------------------------------------------------------------------------


async def test_login_returns_token_expiry_and_user(
    world: World, nurse: str, db: asyncpg.Connection[Any], settings: Settings
) -> None:
    response = await login(world.client, nurse)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"token", "expires_at", "user", "device_token"}
    assert re.search(r"(Z|[+-]\d{2}:\d{2})$", body["expires_at"]), body["expires_at"]
    expires_at = datetime.fromisoformat(body["expires_at"])
    session = await db.fetchrow(
        "SELECT created_at, expires_at FROM sessions WHERE token_hash = $1", sha256(body["token"])
    )
    assert session is not None
    assert expires_at == session["expires_at"]
    assert session["expires_at"] - session["created_at"] == settings.auth.session_absolute
    user = body["user"]
    assert user["username"] == "nina"
    assert user["role"] == "nurse"
    assert user["all_clinics"] is False
    assert user["clinics"] == [{"code": "C1", "name": "Clinic C1"}]


async def test_wrong_password_and_unknown_user_are_indistinguishable(
    world: World, nurse: str
) -> None:
    wrong_password = await login(world.client, nurse, WRONG)
    unknown_user = await login(world.client, "nobody", WRONG)
    assert wrong_password.status_code == unknown_user.status_code == 401
    assert wrong_password.json() == unknown_user.json()
    assert "token" not in wrong_password.json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "nina"}, "password"),
        ({"username": 123, "password": PASSWORD}, "username"),
        ({"username": "nina", "password": PASSWORD, "role": "admin"}, "role"),
    ],
    ids=["missing-field", "wrong-type", "unknown-field"],
)
async def test_bad_login_body_is_422_naming_the_field(
    client: AsyncTestClient[Any], body: dict[str, Any], field: str
) -> None:
    response = await client.post(LOGIN, json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert isinstance(errors, list)
    assert field in [e["field"] for e in errors], errors


# --- tokens ----------------------------------------------------------------------------


async def test_token_is_random_and_stored_only_as_its_sha256(
    world: World, nurse: str, db: asyncpg.Connection[Any]
) -> None:
    first = await token_of(world.client, nurse)
    second = await token_of(world.client, nurse)
    assert first != second
    for token in (first, second):
        assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", token), token
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        assert len(raw) >= 16  # at least 128 bits
    hashes = {r["token_hash"] for r in await db.fetch("SELECT token_hash FROM sessions")}
    assert hashes == {sha256(first), sha256(second)}
    rows = [r["row"] for r in await db.fetch("SELECT s::text AS row FROM sessions s")]
    assert len(rows) == 2
    for token in (first, second):
        for row in rows:
            assert token not in row
            assert token.encode().hex() not in row


async def test_me_returns_user_role_and_clinics(world: World, nurse: str) -> None:
    response = await world.client.get(ME, headers=await world.login(nurse))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["username"] == "nina"
    assert body["role"] == "nurse"
    assert body["clinics"] == [{"code": "C1", "name": "Clinic C1"}]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer not-a-real-token-at-all-xxxxxxxxxxxxxxxxxxxx"},
        {"Authorization": "Basic bmluYTpjb3JyZWN0LWhvcnNlLWJhdHRlcnk="},
    ],
    ids=["no-header", "empty-bearer", "garbage-token", "basic-scheme"],
)
async def test_me_without_a_valid_token_is_401(
    client: AsyncTestClient[Any], headers: dict[str, str]
) -> None:
    response = await client.get(ME, headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "username" not in response.json()


async def test_logout_revokes_only_that_token_at_once(world: World, nurse: str) -> None:
    gone = await world.login(nurse)
    kept = await world.login(nurse)
    response = await world.client.post(LOGOUT, headers=gone)
    assert response.status_code == 204, response.text
    assert (await world.client.get(ME, headers=gone)).status_code == 401
    assert (await world.client.post(LOGOUT, headers=gone)).status_code == 401
    assert (await world.client.get(ME, headers=kept)).status_code == 200


async def test_idle_session_expires(
    world: World, nurse: str, db: asyncpg.Connection[Any], settings: Settings
) -> None:
    token = await token_of(world.client, nurse)
    idle = settings.auth.session_idle
    set_last_seen = "UPDATE sessions SET last_seen_at = now() - $2::interval WHERE token_hash = $1"
    # Just inside the idle timeout the session still works (and is touched) ...
    await db.execute(set_last_seen, sha256(token), idle - timedelta(minutes=1))
    assert (await world.client.get(ME, headers=bearer(token))).status_code == 200
    # ... just past it, it does not.
    await db.execute(set_last_seen, sha256(token), idle + timedelta(minutes=1))
    assert (await world.client.get(ME, headers=bearer(token))).status_code == 401


async def test_use_refreshes_the_idle_timer(
    world: World, nurse: str, db: asyncpg.Connection[Any], settings: Settings
) -> None:
    token = await token_of(world.client, nurse)
    await db.execute(
        "UPDATE sessions SET last_seen_at = now() - $2::interval WHERE token_hash = $1",
        sha256(token),
        settings.auth.session_idle - timedelta(minutes=1),
    )
    assert (await world.client.get(ME, headers=bearer(token))).status_code == 200
    fresh = await db.fetchval(
        "SELECT last_seen_at > now() - interval '1 minute' FROM sessions WHERE token_hash = $1",
        sha256(token),
    )
    assert fresh is True


async def test_a_session_touched_within_the_last_minute_is_not_written_again(
    world: World, nurse: str, db: asyncpg.Connection[Any]
) -> None:
    token = await token_of(world.client, nurse)
    seen = await db.fetchval(
        "UPDATE sessions SET last_seen_at = now() - interval '20 seconds' "
        "WHERE token_hash = $1 RETURNING last_seen_at",
        sha256(token),
    )
    assert (await world.client.get(ME, headers=bearer(token))).status_code == 200
    after = await db.fetchval(
        "SELECT last_seen_at FROM sessions WHERE token_hash = $1", sha256(token)
    )
    assert after == seen  # most requests only read the session; see TOUCH_INTERVAL


async def test_absolute_timeout_applies_even_to_a_busy_session(
    world: World, nurse: str, db: asyncpg.Connection[Any]
) -> None:
    token = await token_of(world.client, nurse)
    assert (await world.client.get(ME, headers=bearer(token))).status_code == 200
    await db.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second', last_seen_at = now() "
        "WHERE token_hash = $1",
        sha256(token),
    )
    assert (await world.client.get(ME, headers=bearer(token))).status_code == 401


async def test_disabled_user_cannot_log_in_and_loses_sessions(
    world: World, nurse: str, db: asyncpg.Connection[Any]
) -> None:
    headers = await world.login(nurse)
    await db.execute("UPDATE users SET disabled_at = now() WHERE username = $1", nurse)
    assert (await world.client.get(ME, headers=headers)).status_code == 401
    response = await login(world.client, nurse)
    assert response.status_code == 401, response.text
    unknown = await login(world.client, "nobody")
    assert response.json() == unknown.json()


# --- roles and clinics -----------------------------------------------------------------


async def test_audit_verify_is_for_auditors_not_nurses(world: World, nurse: str) -> None:
    await world.user("ada", "auditor", all_clinics=True)
    as_nurse = await world.client.get("/api/v1/audit/verify", headers=await world.login(nurse))
    assert as_nurse.status_code == 403, as_nurse.text
    as_auditor = await world.client.get("/api/v1/audit/verify", headers=await world.login("ada"))
    assert as_auditor.status_code == 200, as_auditor.text


async def test_auditor_cannot_submit_reports(world: World, db: asyncpg.Connection[Any]) -> None:
    await world.clinic("C1")
    await world.user("ada", "auditor", ["C1"])
    headers = {**await world.login("ada"), "Idempotency-Key": "k-auditor"}
    response = await world.client.post("/api/v1/reports", json=bp_report(), headers=headers)
    assert response.status_code == 403, response.text
    assert await db.fetchval("SELECT count(*) FROM reports") == 0


async def test_user_sees_all_and_only_their_clinics(world: World) -> None:
    for code in ("C1", "C2", "C3"):
        await world.clinic(code)
    await world.user("sam", "safety_officer", ["C2", "C1"])
    body = (await world.client.get(ME, headers=await world.login("sam"))).json()
    assert [c["code"] for c in body["clinics"]] == ["C1", "C2"]
    assert body["all_clinics"] is False


async def test_all_clinics_auditor_sees_clinics_created_later(world: World) -> None:
    await world.clinic("C1")
    await world.user("ada", "auditor", all_clinics=True)
    await world.clinic("C2")
    headers = await world.login("ada")
    await world.clinic("C3")
    body = (await world.client.get(ME, headers=headers)).json()
    assert body["all_clinics"] is True
    assert body["role"] == "auditor"
    assert [c["code"] for c in body["clinics"]] == ["C1", "C2", "C3"]


# --- passwords -------------------------------------------------------------------------


async def test_password_hash_is_argon2id_at_owasp_minimum_or_above(
    world: World, nurse: str, db: asyncpg.Connection[Any]
) -> None:
    stored: str = await db.fetchval("SELECT password_hash FROM users WHERE username = $1", nurse)
    match = re.match(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$", stored)
    assert match, stored
    memory, time_cost, parallelism = (int(g) for g in match.groups())
    assert memory >= 19456
    assert time_cost >= 2
    assert parallelism >= 1
    assert PASSWORD not in stored


async def test_add_user_refuses_short_password(world: World, db: asyncpg.Connection[Any]) -> None:
    await world.clinic("C1")
    with pytest.raises(ValidationFailed) as caught:
        await add_user(
            db,
            username="shorty",
            password="x" * 11,
            role="nurse",
            clinics=["C1"],
            all_clinics=False,
            actor=SYSTEM_CLI,
        )
    assert [e.field for e in caught.value.errors] == ["password"]
    assert await db.fetchval("SELECT count(*) FROM users") == 0
    await world.user("twelve", "nurse", ["C1"], password="Lq7-vz9!mPw2")


async def test_hashing_and_verifying_run_in_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Callable[..., Any]] = []
    real_to_thread = asyncio.to_thread

    async def recording_to_thread(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        calls.append(func)
        return await real_to_thread(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", recording_to_thread)
    stored = await passwords.hash_password(PASSWORD)
    assert len(calls) == 1
    assert await passwords.verify_password(stored, PASSWORD) is True
    assert await passwords.verify_password(stored, WRONG) is False
    assert await passwords.verify_password(None, PASSWORD) is False
    assert len(calls) == 4


# --- throttling ------------------------------------------------------------------------


def test_limits_lock_exponentially_and_are_capped() -> None:
    limits = {limit.scope: limit for limit in throttle.LIMITS}
    assert limits["account_address"].threshold == 5
    assert limits["account"].threshold == 20
    assert limits["address"].threshold == 50
    assert limits["account"].max_lock <= timedelta(minutes=5)
    for limit in throttle.LIMITS:
        assert limit.lock_for(limit.threshold - 1) is None
        assert limit.lock_for(limit.threshold) == limit.base_lock
        assert limit.lock_for(limit.threshold + 1) == 2 * limit.base_lock
        assert limit.lock_for(10_000) == limit.max_lock
        assert limit.max_lock <= timedelta(minutes=15)


async def test_five_failures_lock_even_the_right_password(
    world: World, nurse: str, db: asyncpg.Connection[Any]
) -> None:
    await fail_logins(world.client, nurse, 5)
    response = await login(world.client, nurse)
    assert response.status_code == 429, response.text
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 30  # the first lock is the 30 s base
    assert "token" not in response.json()
    # The failure that started the lock is audited with it; the refused attempt is not.
    details = await db.fetchval(
        "SELECT details FROM audit_entries WHERE action = 'auth.login_failed' "
        "ORDER BY recorded_at DESC, seq DESC LIMIT 1"
    )
    assert details["reason"] == "bad_credentials"
    assert [lock["scope"] for lock in details["locked"]] == ["account_address"]
    assert await db.fetchval("SELECT count(*) FROM audit_entries WHERE action LIKE 'auth.%'") == 5


async def test_forwarded_for_is_ignored_from_an_untrusted_peer(world: World, nurse: str) -> None:
    """A guesser cannot dodge the per-address limit by inventing X-Forwarded-For values."""
    for i in range(5):
        response = await login(world.client, nurse, WRONG, forwarded_for=f"10.0.0.{i}")
        assert response.status_code == 401, response.text
    response = await login(world.client, nurse, forwarded_for="10.0.0.99")
    assert response.status_code == 429, response.text


async def test_lock_is_per_address_so_the_user_can_log_in_elsewhere(
    proxied_client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    world = World(db, proxied_client)
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    await fail_logins(proxied_client, "nina", 5, forwarded_for="10.0.0.1")
    locked = await login(proxied_client, "nina", forwarded_for="10.0.0.1")
    assert locked.status_code == 429, locked.text
    elsewhere = await login(proxied_client, "nina", forwarded_for="10.0.0.2")
    assert elsewhere.status_code == 200, elsewhere.text
    addresses = {
        r["client_addr"]
        for r in await db.fetch("SELECT client_addr FROM audit_entries WHERE action LIKE 'auth.%'")
    }
    assert addresses == {"10.0.0.1", "10.0.0.2"}


async def test_expired_lock_lets_the_user_back_in(
    world: World, nurse: str, db: asyncpg.Connection[Any]
) -> None:
    await fail_logins(world.client, nurse, 5)
    assert (await login(world.client, nurse)).status_code == 429
    await db.execute(
        "UPDATE login_throttle SET locked_until = now() - interval '1 second' "
        "WHERE locked_until IS NOT NULL"
    )
    response = await login(world.client, nurse)
    assert response.status_code == 200, response.text


async def test_attempts_during_a_lock_do_not_extend_it(
    world: World, nurse: str, db: asyncpg.Connection[Any]
) -> None:
    await fail_logins(world.client, nurse, 5)
    key = f"{nurse}|{PEER}"
    before = await throttle_row(db, "account_address", key)
    assert before is not None
    assert before["failures"] == 5
    assert before["locked_until"] is not None
    for password in (WRONG, PASSWORD):
        assert (await login(world.client, nurse, password)).status_code == 429
    after = await throttle_row(db, "account_address", key)
    assert after is not None
    assert after["locked_until"] == before["locked_until"]
    assert after["failures"] == before["failures"]


async def test_successful_login_clears_the_account_counters(
    world: World, nurse: str, db: asyncpg.Connection[Any]
) -> None:
    await fail_logins(world.client, nurse, 4)
    pair = await throttle_row(db, "account_address", f"{nurse}|{PEER}")
    account = await throttle_row(db, "account", nurse)
    assert pair is not None
    assert account is not None
    assert pair["failures"] == account["failures"] == 4
    await token_of(world.client, nurse)
    assert await throttle_row(db, "account_address", f"{nurse}|{PEER}") is None
    assert await throttle_row(db, "account", nurse) is None
    # Counting starts again from zero: one more failure does not lock. (The client is
    # a known device now, so its failures count on the device.)
    world.client.cookies.clear()
    await fail_logins(world.client, nurse, 1)
    pair = await throttle_row(db, "account_address", f"{nurse}|{PEER}")
    assert pair is not None
    assert pair["failures"] == 1
    assert pair["locked_until"] is None


async def test_distributed_guessing_locks_the_account_for_at_most_five_minutes(
    world: World, nurse: str, db: asyncpg.Connection[Any]
) -> None:
    for i in range(40):
        await throttle.record_failure(db, nurse, f"10.1.0.{i}")
    remaining = await db.fetchval(
        "SELECT locked_until - now() FROM login_throttle WHERE scope = 'account' AND key = $1",
        nurse,
    )
    assert timedelta(0) < remaining <= timedelta(minutes=5)
    response = await login(world.client, nurse)
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) <= 300


async def test_password_spraying_locks_the_address(
    world: World, nurse: str, db: asyncpg.Connection[Any]
) -> None:
    for i in range(50):
        await throttle.record_failure(db, f"victim{i}", PEER)
    assert await throttle.refuse_if_locked(db, "someone-else", PEER) is not None
    assert await throttle.refuse_if_locked(db, "someone-else", "10.2.0.1") is None
    response = await login(world.client, nurse)
    assert response.status_code == 429, response.text


# --- audit -----------------------------------------------------------------------------


async def test_auth_actions_are_audited_with_actor_and_address(
    world: World, nurse: str, db: asyncpg.Connection[Any]
) -> None:
    user_id = await db.fetchval("SELECT id FROM users WHERE username = $1", nurse)
    await fail_logins(world.client, nurse, 1)
    await fail_logins(world.client, "nobody", 1)
    headers = await world.login(nurse)
    assert (await world.client.post(LOGOUT, headers=headers)).status_code == 204
    rows = await db.fetch(
        "SELECT action, actor, actor_id, actor_role, object_id, client_addr, details "
        "FROM audit_entries WHERE action LIKE 'auth.%' ORDER BY recorded_at, seq"
    )
    assert [r["action"] for r in rows] == [
        "auth.login_failed",
        "auth.login_failed",
        "auth.login",
        "auth.logout",
    ]
    for row in rows:
        assert row["actor"]
        assert row["client_addr"] == PEER
    failed_user, failed_unknown, logged_in, logged_out = rows
    assert failed_user["object_id"] == nurse
    assert failed_user["details"] == {"reason": "bad_credentials"}
    assert failed_unknown["object_id"] == "nobody"
    assert failed_unknown["details"] == {"reason": "bad_credentials"}
    for row in (logged_in, logged_out):
        assert row["actor"] == nurse
        assert row["actor_id"] == user_id
        assert row["actor_role"] == "nurse"


async def test_rejected_token_is_logged_as_401(client: AsyncTestClient[Any]) -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    request_log = logging.getLogger("safetyreport.request")
    request_log.addHandler(handler)
    try:
        response = await client.get(ME)
    finally:
        request_log.removeHandler(handler)
    assert response.status_code == 401
    assert [getattr(r, "status", None) for r in records] == [401]
