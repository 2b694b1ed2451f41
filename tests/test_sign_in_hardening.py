"""Sign-in hardening (issue 10 items 3, 4, 5 for logins, 13, and the second factor).

Each attack of the security review is replayed over HTTP against the app: targeted
lock-out from rotating addresses and from a clinic's shared address, flooding the
audit trail with throttled logins, logins invisible to a clinic's own auditor, weak
passwords, and sign-in with a second factor.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pyotp
import pytest
from litestar.testing import AsyncTestClient

from safetyreport.app import create_app
from safetyreport.audit.chain import SYSTEM_CLI
from safetyreport.auth import devices, passwords, totp
from safetyreport.auth.ratelimit import TokenBuckets
from safetyreport.auth.users import add_user
from safetyreport.errors import ValidationFailed
from safetyreport.settings import Settings
from tests.helpers.processes import cli_env, run_cli
from tests.helpers.world import PASSWORD, World

LOGIN = "/api/v1/auth/login"
LOCKOUTS = "/api/v1/auth/lockouts"
WRONG = "wrong-password-123"
NAT = "192.0.2.10"
WRITTEN_ROWS = """
SELECT (SELECT count(*) FROM audit_entries) + (SELECT sum(failures) FROM login_throttle)
"""


def forwarded(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def login(
    client: AsyncTestClient[Any],
    username: str,
    password: str = PASSWORD,
    address: str = "198.51.100.1",
    headers: dict[str, str] | None = None,
    **extra: str,
) -> Any:
    return await client.post(
        LOGIN,
        json={"username": username, "password": password, **extra},
        headers={**forwarded(address), **(headers or {})},
    )


def bearer(response: Any) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


async def auth_entries(db: asyncpg.Connection[Any]) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM audit_entries WHERE action LIKE 'auth.%'")
    return count


@pytest.fixture
def env(database_url: str, settings: Settings) -> dict[str, str]:
    """The command line's environment: this test's database and data folder."""
    return cli_env(database_url, settings.data_dir)


@pytest.fixture
def roomy(settings: Settings) -> Settings:
    """Behind a trusted proxy (X-Forwarded-For names the client), with a roomy bucket."""
    auth = replace(settings.auth, anonymous_burst=100_000, anonymous_per_minute=100_000)
    return replace(settings, trusted_proxies=frozenset({"testclient"}), auth=auth)


@pytest.fixture
async def http(roomy: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=create_app(roomy)) as client:
        yield client


@pytest.fixture
async def people(db: asyncpg.Connection[Any], http: AsyncTestClient[Any]) -> World:
    world = World(db, http)
    for code in ("C1", "C2"):
        await world.clinic(code)
    await world.user("nina", "nurse", ["C1"])
    await world.user("olga", "nurse", ["C1"])
    await world.user("adam", "admin", ["C1"])
    await world.user("root", "admin", all_clinics=True)
    await world.user("audra", "auditor", ["C1"])
    return world


# --- item 3: targeted lock-out ---------------------------------------------------------


async def test_rotating_addresses_do_not_lock_a_user_out_of_a_known_device(
    http: AsyncTestClient[Any], people: World
) -> None:
    first = await login(http, "nina", address="198.51.100.7")
    device_token = first.json()["device_token"]
    assert http.cookies.get(devices.DEVICE_COOKIE) == device_token
    http.cookies.clear()  # the attacker has no cookie
    # The review's attack: a stream of failures for one nurse, each from a new address.
    for i in range(40):
        response = await login(http, "nina", WRONG, address=f"203.0.113.{i}")
        assert response.status_code in (401, 429), response.text
    # A new device is locked out (the account lock, capped at five minutes) ...
    fresh = await login(http, "nina", address="198.51.100.8")
    assert fresh.status_code == 429, fresh.text
    # ... her own device is not: by its header (API clients) or its cookie (browsers).
    by_header = await login(
        http, "nina", address="198.51.100.9", headers={devices.DEVICE_HEADER: device_token}
    )
    assert by_header.status_code == 200, by_header.text
    http.cookies.set(devices.DEVICE_COOKIE, device_token)
    by_cookie = await login(http, "nina", address="198.51.100.10")
    assert by_cookie.status_code == 200, by_cookie.text
    # A device token is bound to its user: it does not help anyone else.
    http.cookies.clear()
    await login(http, "olga", WRONG, address="203.0.113.99")
    other = await login(
        http, "olga", WRONG, address="203.0.113.99", headers={devices.DEVICE_HEADER: device_token}
    )
    assert other.status_code == 401, other.text


async def test_a_shared_address_guessing_does_not_lock_out_known_devices_there(
    http: AsyncTestClient[Any], people: World
) -> None:
    nina_device = (await login(http, "nina", address=NAT)).json()["device_token"]
    http.cookies.clear()
    # 50 failures behind the clinic's NAT lock the address for every newcomer ...
    for i in range(50):
        response = await login(http, f"victim{i}", WRONG, address=NAT)
        assert response.status_code == 401, response.text
    assert (await login(http, "olga", address=NAT)).status_code == 429
    # ... but valid credentials from a known device there still sign in.
    known = await login(http, "nina", address=NAT, headers={devices.DEVICE_HEADER: nina_device})
    assert known.status_code == 200, known.text


async def test_a_known_device_is_still_throttled_by_its_own_failures(
    http: AsyncTestClient[Any], people: World
) -> None:
    token = (await login(http, "nina")).json()["device_token"]
    headers = {devices.DEVICE_HEADER: token}
    for _ in range(5):
        response = await login(http, "nina", WRONG, headers=headers)
        assert response.status_code == 401, response.text
    assert (await login(http, "nina", headers=headers)).status_code == 429


async def test_lock_out_patterns_raise_alerts_for_the_admins_of_the_clinic(
    http: AsyncTestClient[Any], people: World, db: asyncpg.Connection[Any]
) -> None:
    for i in range(20):
        await login(http, "nina", WRONG, address=f"203.0.113.{i}")
    for i in range(50):
        await login(http, f"victim{i}", WRONG, address=NAT)
    clinic_admin = bearer(await login(http, "adam", address="198.51.100.20"))
    network_admin = bearer(await login(http, "root", address="198.51.100.21"))
    seen = (await http.get(LOCKOUTS, headers=clinic_admin)).json()
    assert [(a["scope"], a["key"], a["clinics"]) for a in seen] == [("account", "nina", ["C1"])]
    everything = (await http.get(LOCKOUTS, headers=network_admin)).json()
    assert {(a["scope"], a["key"]) for a in everything} == {("account", "nina"), ("address", NAT)}
    # The failure that started the lock is audited with it in nina's clinic's chain.
    locked = await db.fetchval(
        "SELECT details->'locked' FROM audit_entries WHERE chain = 'clinic:C1' "
        "AND action = 'auth.login_failed' AND details ? 'locked'"
    )
    assert [lock["scope"] for lock in locked] == ["account"]
    nurse = bearer(await login(http, "olga", address="198.51.100.22"))
    assert (await http.get(LOCKOUTS, headers=nurse)).status_code == 403


async def test_lockouts_since_filters_validates_and_the_read_is_audited(
    http: AsyncTestClient[Any], people: World, db: asyncpg.Connection[Any]
) -> None:
    for i in range(20):
        await login(http, "nina", WRONG, address=f"203.0.113.{i}")
    clinic_admin = bearer(await login(http, "adam", address="198.51.100.20"))
    raised = await db.fetchval("SELECT max(raised_at) FROM lockout_alerts")
    before = {"since": (raised - timedelta(microseconds=1)).isoformat()}
    after = {"since": raised.isoformat()}  # strictly after: the page polls with its newest
    seen = await http.get(LOCKOUTS, params=before, headers=clinic_admin)
    assert [a["key"] for a in seen.json()] == ["nina"], seen.text
    assert (await http.get(LOCKOUTS, params=after, headers=clinic_admin)).json() == []
    for bad in ("yesterday", "2026-01-01T00:00:00"):  # not a time; no time zone
        response = await http.get(LOCKOUTS, params={"since": bad}, headers=clinic_admin)
        assert response.status_code == 422, response.text
    listed = await db.fetch(
        "SELECT chain, details FROM audit_entries WHERE action = 'auth.lockouts_listed'"
    )
    # What was shown, in the chain of the clinic it belongs to; an empty list shows
    # nothing and is not recorded (the page polls for new alerts every 30 s).
    assert sorted((r["chain"], r["details"]["count"]) for r in listed) == [("clinic:C1", 1)]


# --- item 4: flooding the audit trail --------------------------------------------------


async def test_throttled_attempts_are_counted_not_audited_one_by_one(
    http: AsyncTestClient[Any], people: World, db: asyncpg.Connection[Any]
) -> None:
    for _ in range(5):
        assert (await login(http, "nina", WRONG)).status_code == 401
    before = await auth_entries(db)
    # The lock lasts as long as the run needs: how fast 1,500 requests go is not the test.
    await db.execute(
        "UPDATE login_throttle SET locked_until = now() + interval '1 hour'"
        " WHERE locked_until > now()"
    )
    for _ in range(1500):
        assert (await login(http, "nina", WRONG)).status_code == 429
    assert await auth_entries(db) == before  # was 1,500 more entries
    # When the lock is over, the next entry for the key carries the count.
    await db.execute("UPDATE login_throttle SET locked_until = now() - interval '1 second'")
    assert (await login(http, "nina")).status_code == 200
    details = await db.fetchval(
        "SELECT details FROM audit_entries WHERE action = 'auth.login' ORDER BY recorded_at DESC"
    )
    assert details["refused_while_locked"] == {"account_address": 1500}
    assert await auth_entries(db) == before + 1


async def test_unauthenticated_bursts_get_429_before_any_row_is_written(
    settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    tight = replace(
        settings, auth=replace(settings.auth, anonymous_burst=5, anonymous_per_minute=1)
    )
    async with AsyncTestClient(app=create_app(tight)) as client:
        world = World(db, client)
        await world.clinic("C1")
        for _ in range(5):
            response = await client.post(LOGIN, json={"username": "x", "password": WRONG})
            assert response.status_code == 401, response.text
        rows = await db.fetchval(WRITTEN_ROWS)
        for _ in range(50):
            response = await client.post(LOGIN, json={"username": "x", "password": WRONG})
            assert response.status_code == 429, response.text
            assert int(response.headers["Retry-After"]) >= 1
        # The web form and a body that does not even parse are refused the same way.
        assert (await client.post("/login", data={"username": "x"})).status_code == 429
        assert (await client.post(LOGIN, content=b"{")).status_code == 429
        after = await db.fetchval(WRITTEN_ROWS)
        assert after == rows
        # Signed-in requests and pages are not counted.
        assert (await client.get("/login")).status_code == 200


def test_token_bucket_refills_at_its_rate() -> None:
    now = [100.0]
    buckets = TokenBuckets(capacity=2, per_second=0.5, clock=lambda: now[0])
    assert buckets.take("a") == 0
    assert buckets.take("a") == 0
    assert buckets.take("a") == pytest.approx(2.0)
    assert buckets.take("b") == 0  # per address
    now[0] += 2.0
    assert buckets.take("a") == 0
    assert buckets.take("a") > 0


# --- item 5: logins in the clinics' chains ---------------------------------------------


async def test_a_clinic_auditor_sees_a_nurses_sign_ins_in_her_clinics_chain(
    http: AsyncTestClient[Any], people: World, db: asyncpg.Connection[Any]
) -> None:
    await login(http, "nina", WRONG)
    nurse = bearer(await login(http, "nina"))
    assert (await http.post("/api/v1/auth/logout", headers=nurse)).status_code == 204
    auditor = bearer(await login(http, "audra"))
    page = await http.get(
        "/api/v1/audit/entries", params={"clinic": "C1", "actor": "nina"}, headers=auditor
    )
    assert page.status_code == 200, page.text
    actions = [e["action"] for e in page.json()["items"] if e["object_id"] == "nina"]
    assert sorted(actions) == ["auth.login", "auth.logout"]
    failed = await db.fetchval(
        "SELECT count(*) FROM audit_entries WHERE chain = 'clinic:C1' "
        "AND action = 'auth.login_failed' AND object_id = 'nina'"
    )
    assert failed == 1
    global_logins = await db.fetchval(
        "SELECT count(*) FROM audit_entries WHERE chain = 'global' AND object_id = 'nina'"
    )
    assert global_logins == 0


async def test_a_user_of_every_clinic_signs_in_on_every_chain(
    http: AsyncTestClient[Any], people: World, db: asyncpg.Connection[Any]
) -> None:
    bearer(await login(http, "root"))
    chains = await db.fetch(
        "SELECT chain FROM audit_entries WHERE action = 'auth.login' ORDER BY chain"
    )
    assert [r["chain"] for r in chains] == ["clinic:C1", "clinic:C2", "global"]


# --- item 13: passwords and user administration ----------------------------------------


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("nina", "aaaaaaaaaaaa"),
        ("nina", "password1234"),
        ("nina", "qwertyuiop123"),
        ("nina", "nina-winter-garden-42"),
    ],
    ids=["repeats", "breached", "keyboard", "username-inside"],
)
async def test_weak_passwords_are_refused(
    world: World, db: asyncpg.Connection[Any], username: str, password: str
) -> None:
    assert passwords.check_policy(password, username) is not None
    await world.clinic("C1")
    with pytest.raises(ValidationFailed) as caught:
        await add_user(
            db,
            username=username,
            password=password,
            role="nurse",
            clinics=["C1"],
            all_clinics=False,
            actor=SYSTEM_CLI,
        )
    assert [(e.field, e.rule) for e in caught.value.errors] == [("password", "policy")]


@pytest.mark.end_to_end
async def test_disable_ends_the_sessions_at_once_and_is_audited(
    world: World, env: dict[str, str], db: asyncpg.Connection[Any]
) -> None:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    headers = await world.login("nina")
    result = await run_cli("user", "disable", "nina", env=env)
    assert result.code == 0, result.stderr
    assert (await world.client.get("/api/v1/me", headers=headers)).status_code == 401
    live = await db.fetchval("SELECT count(*) FROM sessions WHERE revoked_at IS NULL")
    assert live == 0
    response = await world.client.post(LOGIN, json={"username": "nina", "password": PASSWORD})
    assert response.status_code == 401
    audited = await db.fetchrow(
        "SELECT chain, actor, details FROM audit_entries WHERE action = 'user.disabled'"
    )
    assert audited is not None
    assert (audited["chain"], audited["actor"]) == ("clinic:C1", "system:cli")
    assert audited["details"] == {"sessions": 1}
    unknown = await run_cli("user", "disable", "nobody", env=env)
    assert unknown.code == 2
    assert "no user nobody" in unknown.stderr


@pytest.mark.end_to_end
async def test_set_password_from_stdin_checks_the_policy_and_ends_sessions(
    world: World, env: dict[str, str], db: asyncpg.Connection[Any]
) -> None:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    headers = await world.login("nina")
    new = "amber-falcon-river-31"
    weak = await run_cli(
        "user", "set-password", "nina", "--password-stdin", env=env, stdin="a" * 12
    )
    assert weak.code == 2
    assert "password" in weak.stderr
    done = await run_cli("user", "set-password", "nina", "--password-stdin", env=env, stdin=new)
    assert done.code == 0, done.stderr
    assert new not in done.stdout + done.stderr
    assert (await world.client.get("/api/v1/me", headers=headers)).status_code == 401
    old = await world.client.post(LOGIN, json={"username": "nina", "password": PASSWORD})
    assert old.status_code == 401
    await world.login("nina", new)
    assert (
        await db.fetchval("SELECT count(*) FROM audit_entries WHERE action = 'user.password_set'")
        == 1
    )
    refused = await run_cli("user", "set-password", "nina", env=env, stdin=new)
    assert refused.code == 2


@pytest.mark.end_to_end
async def test_revoke_sessions_ends_every_session_of_the_user_only(
    world: World, env: dict[str, str], db: asyncpg.Connection[Any]
) -> None:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    await world.user("olga", "nurse", ["C1"])
    ninas = [await world.login("nina"), await world.login("nina")]
    olgas = await world.login("olga")
    result = await run_cli("user", "revoke-sessions", "nina", env=env)
    assert result.code == 0, result.stderr
    assert "2 session(s)" in result.stdout
    for headers in ninas:
        assert (await world.client.get("/api/v1/me", headers=headers)).status_code == 401
    assert (await world.client.get("/api/v1/me", headers=olgas)).status_code == 200
    audited = await db.fetchval(
        "SELECT details FROM audit_entries WHERE action = 'user.sessions_revoked'"
    )
    assert audited == {"sessions": 2}


# --- the second factor -----------------------------------------------------------------


def _enrolment(stdout: str) -> tuple[str, list[str]]:
    secret = next(line.split()[-1] for line in stdout.splitlines() if "secret:" in line)
    codes = [line.strip() for line in stdout.splitlines() if line.startswith("    ")]
    return secret, codes


@pytest.fixture
async def officer(people: World, env: dict[str, str]) -> tuple[str, list[str]]:
    """Sam, a safety officer enrolled on the command line: his secret and recovery codes."""
    await people.user("sam", "safety_officer", ["C1"])
    result = await run_cli("user", "totp-enrol", "sam", env=env)
    assert result.code == 0, result.stderr
    assert "otpauth://totp/safetyreport:sam?secret=" in result.stdout
    secret, codes = _enrolment(result.stdout)
    assert len(codes) == totp.RECOVERY_CODES
    return secret, codes


@pytest.mark.end_to_end
async def test_enrolment_keeps_the_secret_out_of_the_database(
    officer: tuple[str, list[str]], db: asyncpg.Connection[Any], env: dict[str, str]
) -> None:
    secret, codes = officer
    dump = await db.fetchval(
        "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM user_totp) t"
    ) + await db.fetchval("SELECT string_agg(t::text, ' ') FROM totp_recovery_codes t")
    assert secret not in dump
    assert secret.encode().hex() not in dump
    for code in codes:
        assert code not in dump
    again = await run_cli("user", "totp-enrol", "sam", env=env)
    assert again.code == 2
    assert "already enrolled" in again.stderr
    assert (
        await db.fetchval("SELECT count(*) FROM audit_entries WHERE action = 'user.totp_enrolled'")
        == 1
    )


@pytest.mark.end_to_end
async def test_sign_in_needs_the_code_and_a_code_works_once(
    http: AsyncTestClient[Any], officer: tuple[str, list[str]], db: asyncpg.Connection[Any]
) -> None:
    secret, _ = officer
    without = await login(http, "sam")
    assert without.status_code == 401
    assert "one-time code" in without.json()["detail"]
    code = pyotp.TOTP(secret).now()
    bearer(await login(http, "sam", otp=code))
    replayed = await login(http, "sam", otp=code)
    assert replayed.status_code == 401, replayed.text
    reasons = await db.fetch(
        "SELECT details->>'reason' AS reason FROM audit_entries "
        "WHERE action = 'auth.login_failed' ORDER BY recorded_at"
    )
    assert [r["reason"] for r in reasons] == ["second_factor_missing", "bad_otp"]


@pytest.mark.end_to_end
async def test_wrong_codes_count_as_failures_in_the_throttle(
    http: AsyncTestClient[Any], officer: tuple[str, list[str]]
) -> None:
    secret, _ = officer
    right = pyotp.TOTP(secret).now()
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for _ in range(5):
        assert (await login(http, "sam", otp=wrong)).status_code == 401
    assert (await login(http, "sam", otp=right)).status_code == 429


@pytest.mark.end_to_end
async def test_a_recovery_code_works_once(
    http: AsyncTestClient[Any], officer: tuple[str, list[str]]
) -> None:
    _, codes = officer
    bearer(await login(http, "sam", recovery_code=codes[0]))
    assert (await login(http, "sam", recovery_code=codes[0])).status_code == 401
    bearer(await login(http, "sam", recovery_code=codes[1].upper()))


@pytest.mark.end_to_end
async def test_the_web_form_takes_the_code(
    http: AsyncTestClient[Any], officer: tuple[str, list[str]]
) -> None:
    secret, _ = officer
    page = await http.get("/login")
    assert 'name="otp"' in page.text
    csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
    form = {"username": "sam", "password": PASSWORD, "csrf": csrf, "next": ""}
    missing = await http.post("/login", data=form, headers=forwarded("198.51.100.30"))
    assert missing.status_code == 401
    assert "authenticator app" in missing.text
    done = await http.post(
        "/login",
        data={**form, "otp": pyotp.TOTP(secret).now()},
        headers=forwarded("198.51.100.30"),
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    assert http.cookies.get(devices.DEVICE_COOKIE)


@pytest.mark.end_to_end
async def test_reset_removes_the_second_factor(
    http: AsyncTestClient[Any], officer: tuple[str, list[str]], env: dict[str, str]
) -> None:
    result = await run_cli("user", "totp-reset", "sam", env=env)
    assert result.code == 0, result.stderr
    bearer(await login(http, "sam"))


async def test_a_required_role_cannot_sign_in_without_enrolment(
    roomy: Settings, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    required = replace(
        roomy,
        auth=replace(roomy.auth, totp_required_roles=frozenset({"safety_officer", "admin"})),
    )
    async with AsyncTestClient(app=create_app(required)) as client:
        world = World(db, client)
        await world.clinic("C1")
        await world.user("nina", "nurse", ["C1"])
        await world.user("sam", "safety_officer", ["C1"])
        bearer(await login(client, "nina"))
        refused = await login(client, "sam")
        assert refused.status_code == 401
        assert "second factor" in refused.json()["detail"]
        enrolment = await totp.enrol(db, "sam", totp.load_key(required), SYSTEM_CLI)
        code = pyotp.TOTP(enrolment.secret).at(time.time())
        bearer(await login(client, "sam", otp=code))


async def test_a_wrong_secrets_key_is_a_clear_503_not_a_500(
    roomy: Settings, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    other_key = tmp_path / "other-totp.key"
    other_key.write_bytes(bytes(range(32)))
    moved = replace(roomy, auth=replace(roomy.auth, totp_key_file=other_key))
    async with AsyncTestClient(app=create_app(moved)) as client:
        world = World(db, client)
        await world.clinic("C1")
        await world.user("sam", "safety_officer", ["C1"])
        enrolment = await totp.enrol(db, "sam", totp.load_key(roomy), SYSTEM_CLI)
        response = await login(client, "sam", otp=pyotp.TOTP(enrolment.secret).now())
        assert response.status_code == 503, response.text
        assert "SAFETYREPORT_TOTP_KEY" in response.json()["detail"]
