"""Password hashing with argon2id, off the event loop.

argon2-cffi's default profile (RFC 9106 low-memory: t=3, m=64 MiB, p=4) is above
OWASP's minimum for argon2id (m=19 MiB, t=2, p=1); a test pins that.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

HASHER = PasswordHasher()
MIN_PASSWORD_LENGTH = 12
# Verified when the username is unknown, so both cases take the same time.
_DUMMY_HASH = HASHER.hash("not-a-real-password-only-for-timing")


def check_policy(password: str) -> str | None:
    """Why ``password`` is unacceptable, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"a password needs at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > 1024:
        return "a password has at most 1024 characters"
    return None


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(HASHER.hash, password)


def _verify(stored: str | None, password: str) -> bool:
    try:
        return HASHER.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


async def verify_password(stored: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored``; always takes one argon2 verification."""
    return await asyncio.to_thread(_verify, stored, password)
