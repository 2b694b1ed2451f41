"""Clinics, users and the authenticated principal."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from safetyreport import audit
from safetyreport.auth.passwords import check_policy, hash_password
from safetyreport.auth.permissions import ROLES, Role
from safetyreport.db.pool import Conn
from safetyreport.errors import NotFound, ValidationFailed
from safetyreport.times import check_timezone


class ClinicView(msgspec.Struct, frozen=True):
    code: str
    name: str


class UserView(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    username: str
    role: Role
    all_clinics: bool
    clinics: list[ClinicView]


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """The authenticated user of a request, with the clinics they may see."""

    id: int
    username: str
    role: Role
    all_clinics: bool
    # clinic code -> clinic id, for every clinic this user may see
    clinic_ids: dict[str, int]
    clinic_names: dict[str, str]

    def can_see(self, clinic_id: int) -> bool:
        return clinic_id in self.clinic_ids.values()

    def scope(self) -> list[int] | None:
        """Clinic ids to filter by; None when the user sees every clinic."""
        return None if self.all_clinics else sorted(self.clinic_ids.values())

    def visible_clinics(self, clinic: str | None = None) -> list[int] | None:
        """Clinic ids a query may return: the one asked for, or all the user's clinics.

        None means every clinic (users granted all clinics, no filter). A clinic the
        user does not belong to is NotFound, exactly like one that does not exist.
        """
        if clinic is not None:
            clinic_id = self.clinic_ids.get(clinic)
            if clinic_id is None:
                raise NotFound(f"no clinic {clinic}")
            return [clinic_id]
        return self.scope()

    def actor(self) -> audit.Actor:
        return audit.Actor(name=self.username, id=self.id, role=self.role)

    def view(self) -> UserView:
        return UserView(
            id=self.id,
            username=self.username,
            role=self.role,
            all_clinics=self.all_clinics,
            clinics=[ClinicView(code, self.clinic_names[code]) for code in sorted(self.clinic_ids)],
        )


# Columns that build a Principal; `u` is the users row.
PRINCIPAL_COLUMNS = """
    u.id, u.username, u.role, u.all_clinics,
    (SELECT coalesce(jsonb_agg(jsonb_build_array(c.id, c.code, c.name) ORDER BY c.code), '[]')
       FROM clinics c
      WHERE u.all_clinics
         OR c.id IN (SELECT uc.clinic_id FROM user_clinics uc WHERE uc.user_id = u.id)
    ) AS clinics
"""


def principal_from_row(row: asyncpg.Record) -> Principal:
    clinics: list[list[Any]] = row["clinics"]
    return Principal(
        id=row["id"],
        username=row["username"],
        role=row["role"],
        all_clinics=row["all_clinics"],
        clinic_ids={code: cid for cid, code, _ in clinics},
        clinic_names={code: name for _, code, name in clinics},
    )


_PRINCIPAL_BY_USERNAME = f"""
SELECT {PRINCIPAL_COLUMNS} FROM users u WHERE u.username = $1 AND u.disabled_at IS NULL
"""  # noqa: S608 (constant SQL fragments, no input)


async def principal_by_username(conn: Conn, username: str) -> Principal | None:
    row = await conn.fetchrow(_PRINCIPAL_BY_USERNAME, normalise_username(username))
    return None if row is None else principal_from_row(row)


def normalise_username(username: str) -> str:
    return username.strip().lower()


async def add_clinic(
    conn: Conn, code: str, name: str, actor: audit.Actor, *, timezone: str | None = None
) -> int:
    """Create a clinic (with its IANA time zone, if given) and its audit chain, audited
    on the new chain."""
    if timezone is not None:
        check_timezone(timezone)
    async with conn.transaction():
        try:
            clinic_id: int = await conn.fetchval(
                "INSERT INTO clinics (code, name, timezone) VALUES ($1, $2, $3) RETURNING id",
                code,
                name,
                timezone,
            )
        except asyncpg.UniqueViolationError:
            raise ValidationFailed.one("code", "unique", f"clinic {code} already exists") from None
        except asyncpg.CheckViolationError:
            raise ValidationFailed.one(
                "code", "pattern", "a clinic code is 1-32 letters, digits, '-' or '_'"
            ) from None
        await audit.append(
            conn,
            audit.AuditEvent(
                actor=actor,
                action="clinic.created",
                object_type="clinic",
                object_id=code,
                clinic=code,
                details={"code": code, "name": name, "timezone": timezone},
            ),
        )
    return clinic_id


async def set_clinic_timezone(conn: Conn, code: str, timezone: str, actor: audit.Actor) -> None:
    """Set a clinic's IANA time zone (where its DEA clocks count business days), audited
    on the clinic's chain with the zone it had."""
    check_timezone(timezone)
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT id, timezone FROM clinics WHERE code = $1 FOR UPDATE", code
        )
        if row is None:
            raise NotFound(f"no clinic {code}")
        await conn.execute("UPDATE clinics SET timezone = $2 WHERE id = $1", row["id"], timezone)
        await audit.append(
            conn,
            audit.AuditEvent(
                actor=actor,
                action="clinic.timezone_set",
                object_type="clinic",
                object_id=code,
                clinic=code,
                details={"timezone": timezone, "previous": row["timezone"]},
            ),
        )


async def list_clinics(conn: Conn) -> list[asyncpg.Record]:
    """Every clinic's code, name and time zone (None: never set), by code."""
    return await conn.fetch("SELECT code, name, timezone FROM clinics ORDER BY code")


async def add_user(
    conn: Conn,
    *,
    username: str,
    password: str,
    role: Role,
    clinics: list[str],
    all_clinics: bool,
    actor: audit.Actor,
) -> int:
    """Create a user with a hashed password, audited in the same transaction."""
    username = normalise_username(username)
    problem = check_policy(password, username)
    if problem:
        raise ValidationFailed.one("password", "policy", problem)
    if role not in ROLES:
        raise ValidationFailed.one("role", "enum", f"role must be one of {', '.join(ROLES)}")
    if all_clinics and role not in ("auditor", "admin"):
        raise ValidationFailed.one(
            "all_clinics", "role", "only auditors and admins may be granted all clinics"
        )
    if not all_clinics and not clinics:
        raise ValidationFailed.one("clinics", "required", "a user belongs to at least one clinic")
    password_hash = await hash_password(password)
    async with conn.transaction():
        rows = await conn.fetch("SELECT id, code FROM clinics WHERE code = ANY($1)", clinics)
        missing = sorted(set(clinics) - {r["code"] for r in rows})
        if missing:
            raise ValidationFailed.one("clinics", "exists", f"no such clinic: {', '.join(missing)}")
        try:
            user_id: int = await conn.fetchval(
                "INSERT INTO users (username, password_hash, role, all_clinics) "
                "VALUES ($1, $2, $3, $4) RETURNING id",
                username,
                password_hash,
                role,
                all_clinics,
            )
        except asyncpg.UniqueViolationError:
            raise ValidationFailed.one(
                "username", "unique", f"user {username} already exists"
            ) from None
        except asyncpg.CheckViolationError:
            raise ValidationFailed.one(
                "username", "pattern", "a username is 1-64 of a-z, 0-9, '.', '_' or '-'"
            ) from None
        await conn.executemany(
            "INSERT INTO user_clinics (user_id, clinic_id) VALUES ($1, $2)",
            [(user_id, r["id"]) for r in rows],
        )
        details = {
            "username": username,
            "role": role,
            "clinics": sorted(clinics),
            "all_clinics": all_clinics,
        }
        chains: list[str | None] = [*sorted(clinics)] or [None]
        for clinic in chains:
            await audit.append(
                conn,
                audit.AuditEvent(
                    actor=actor,
                    action="user.created",
                    object_type="user",
                    object_id=username,
                    clinic=clinic,
                    details=details,
                ),
            )
    return user_id


def audit_clinics(all_clinics: bool, clinic_codes: list[str]) -> list[str | None]:
    """The chains an action of or on a user is recorded in: each of the user's clinics,
    and for a user granted every clinic the global chain too."""
    chains: list[str | None] = list(clinic_codes)
    return [None, *chains] if all_clinics else chains


async def _user_for_change(conn: Conn, username: str) -> Principal:
    """The user (disabled or not), locked until the transaction ends."""
    username = normalise_username(username)
    row = await conn.fetchrow(
        f"SELECT {PRINCIPAL_COLUMNS} FROM users u WHERE u.username = $1 FOR UPDATE",  # noqa: S608
        username,
    )
    if row is None:
        raise NotFound(f"no user {username}")
    return principal_from_row(row)


async def _audit_user_change(
    conn: Conn, user: Principal, action: str, actor: audit.Actor, details: dict[str, Any]
) -> None:
    await audit.append_to_clinics(
        conn,
        audit.AuditEvent(
            actor=actor,
            action=action,
            object_type="user",
            object_id=user.username,
            details=details,
        ),
        audit_clinics(user.all_clinics, sorted(user.clinic_ids)),
    )


async def _revoke(conn: Conn, user_id: int) -> int:
    revoked: str = await conn.execute(
        "UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
        user_id,
    )
    return int(revoked.split()[-1])


async def revoke_sessions(conn: Conn, username: str, actor: audit.Actor) -> int:
    """End every session of the user at once; how many were live."""
    async with conn.transaction():
        user = await _user_for_change(conn, username)
        count = await _revoke(conn, user.id)
        await _audit_user_change(conn, user, "user.sessions_revoked", actor, {"sessions": count})
    return count


async def disable_user(conn: Conn, username: str, actor: audit.Actor) -> None:
    """Disable the user: no more sign-ins, and every session ends at once."""
    async with conn.transaction():
        user = await _user_for_change(conn, username)
        await conn.execute(
            "UPDATE users SET disabled_at = coalesce(disabled_at, now()) WHERE id = $1", user.id
        )
        count = await _revoke(conn, user.id)
        await _audit_user_change(conn, user, "user.disabled", actor, {"sessions": count})


async def set_password(conn: Conn, username: str, password: str, actor: audit.Actor) -> None:
    """Replace the user's password (policy checked); their sessions end."""
    username = normalise_username(username)
    problem = check_policy(password, username)
    if problem:
        raise ValidationFailed.one("password", "policy", problem)
    password_hash = await hash_password(password)
    async with conn.transaction():
        user = await _user_for_change(conn, username)
        await conn.execute(
            "UPDATE users SET password_hash = $2 WHERE id = $1", user.id, password_hash
        )
        count = await _revoke(conn, user.id)
        await _audit_user_change(conn, user, "user.password_set", actor, {"sessions": count})
