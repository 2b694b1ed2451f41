"""The second factor: TOTP (RFC 6238, via pyotp) and one-time recovery codes.

Secrets are stored encrypted (AES-256-GCM, the user id as associated data) with a key
kept in a file outside the database, like the audit signing key: a copy of the
database alone does not give the secrets away. Each code is accepted once: the last
time step used is stored and a code must be of a later step. Recovery codes are long
random strings, so their SHA-256 is enough to store; each is marked used when used.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path

import msgspec
import pyotp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from safetyreport import audit
from safetyreport.auth.users import audit_clinics, principal_by_username
from safetyreport.db.pool import Conn
from safetyreport.errors import ServiceUnavailable, ValidationFailed
from safetyreport.keyfiles import create_key_file
from safetyreport.settings import Settings

DEFAULT_KEY_FILE = "totp-secrets.key"
ISSUER = "safetyreport"
RECOVERY_CODES = 10
# Codes of the step before and after the current one are accepted (clock drift).
DRIFT_STEPS = 1


class Enrolment(msgspec.Struct, frozen=True):
    secret: str
    uri: str
    recovery_codes: list[str]


_KEYS: dict[Path, bytes] = {}


def cached_key(settings: Settings) -> bytes:
    """``load_key``, read from the file once per process."""
    path = key_file(settings)
    if path not in _KEYS:
        _KEYS[path] = load_key(settings)
    return _KEYS[path]


def key_file(settings: Settings) -> Path:
    return settings.auth.totp_key_file or settings.data_dir / DEFAULT_KEY_FILE


def load_key(settings: Settings) -> bytes:
    """The 32-byte secrets key: the configured file, or the data folder's (made if new)."""
    path = key_file(settings)
    if settings.auth.totp_key_file is None and not path.exists():
        create_key_file(path, AESGCM.generate_key(bit_length=256))
    key = path.read_bytes()
    if len(key) != 32:
        raise ValueError(f"the TOTP secrets key {path} is not 32 bytes")
    return key


def _seal(key: bytes, user_id: int, secret: str) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(key).encrypt(nonce, secret.encode(), str(user_id).encode())


def _open(key: bytes, user_id: int, sealed: bytes) -> str:
    try:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], str(user_id).encode()).decode()
    except InvalidTag:
        # Not the key the secret was sealed with: the operator's to fix, not the user's.
        raise ServiceUnavailable(
            "the TOTP secrets key does not open this user's secret: "
            "check SAFETYREPORT_TOTP_KEY (or the data folder's totp-secrets.key)"
        ) from None


def hash_recovery_code(code: str) -> bytes:
    return hashlib.sha256(code.strip().lower().replace("-", "").encode()).digest()


def _new_recovery_code() -> str:
    raw = secrets.token_hex(10)  # 80 bits
    return "-".join(raw[i : i + 5] for i in range(0, 20, 5))


async def _user(conn: Conn, username: str) -> tuple[int, list[str | None]]:
    principal = await principal_by_username(conn, username)
    if principal is None:
        raise ValidationFailed.one("username", "exists", f"no active user {username}")
    return principal.id, audit_clinics(principal.all_clinics, sorted(principal.clinic_ids))


async def enrol(conn: Conn, username: str, key: bytes, actor: audit.Actor) -> Enrolment:
    """Give the user a new TOTP secret and recovery codes; refused when already enrolled."""
    secret = pyotp.random_base32()
    codes = [_new_recovery_code() for _ in range(RECOVERY_CODES)]
    async with conn.transaction():
        user_id, chains = await _user(conn, username)
        inserted = await conn.fetchval(
            "INSERT INTO user_totp (user_id, secret_encrypted) VALUES ($1, $2) "
            "ON CONFLICT (user_id) DO NOTHING RETURNING 1",
            user_id,
            _seal(key, user_id, secret),
        )
        if inserted is None:
            raise ValidationFailed.one(
                "username", "enrolled", f"{username} is already enrolled: reset first"
            )
        await conn.executemany(
            "INSERT INTO totp_recovery_codes (user_id, code_hash) VALUES ($1, $2)",
            [(user_id, hash_recovery_code(code)) for code in codes],
        )
        await _audit(conn, "user.totp_enrolled", username, actor, chains)
    uri = pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=ISSUER)
    return Enrolment(secret=secret, uri=uri, recovery_codes=codes)


async def reset(conn: Conn, username: str, actor: audit.Actor) -> bool:
    """Remove the user's TOTP secret and recovery codes; True when there were any."""
    async with conn.transaction():
        user_id, chains = await _user(conn, username)
        await conn.execute("DELETE FROM totp_recovery_codes WHERE user_id = $1", user_id)
        removed = await conn.fetchval(
            "DELETE FROM user_totp WHERE user_id = $1 RETURNING 1", user_id
        )
        await _audit(conn, "user.totp_reset", username, actor, chains)
    return removed is not None


async def _audit(
    conn: Conn, action: str, username: str, actor: audit.Actor, chains: list[str | None]
) -> None:
    event = audit.AuditEvent(actor=actor, action=action, object_type="user", object_id=username)
    await audit.append_to_clinics(conn, event, chains)


async def is_enrolled(conn: Conn, user_id: int) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM user_totp WHERE user_id = $1", user_id))


def _matching_step(secret: str, code: str, now: float) -> int | None:
    totp = pyotp.TOTP(secret)
    current = totp.timecode(int(now))
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


async def check_code(conn: Conn, user_id: int, code: str, key: bytes) -> bool:
    """True when ``code`` is the user's current TOTP code and was not used before.

    The step is claimed atomically, so two sign-ins racing with one code cannot both
    succeed. Caller's transaction.
    """
    row = await conn.fetchrow("SELECT secret_encrypted FROM user_totp WHERE user_id = $1", user_id)
    if row is None or not code.isdigit():
        return False
    step = _matching_step(_open(key, user_id, row["secret_encrypted"]), code, time.time())
    if step is None:
        return False
    claimed = await conn.fetchval(
        "UPDATE user_totp SET last_step = $2 WHERE user_id = $1 AND last_step < $2 RETURNING 1",
        user_id,
        step,
    )
    return claimed is not None


async def use_recovery_code(conn: Conn, user_id: int, code: str) -> bool:
    """True, once, for each of the user's recovery codes. Caller's transaction."""
    used = await conn.fetchval(
        "UPDATE totp_recovery_codes SET used_at = now() "
        "WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL RETURNING 1",
        user_id,
        hash_recovery_code(code),
    )
    return used is not None
