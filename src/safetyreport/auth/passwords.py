"""Password hashing with argon2id, off the event loop, and the policy for new passwords.

The parameters are OWASP's recommended configuration for argon2id (Password Storage
Cheat Sheet: 19 MiB of memory, 2 iterations, 1 lane); a test pins that they never drop
below it. Hashes made with other parameters still verify: argon2 stores them in the hash.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from zxcvbn import zxcvbn

OWASP_MEMORY_KIB = 19_456
OWASP_TIME_COST = 2
HASHER = PasswordHasher(time_cost=OWASP_TIME_COST, memory_cost=OWASP_MEMORY_KIB, parallelism=1)
MIN_PASSWORD_LENGTH = 12
# Verified when the username is unknown, so both cases take the same time.
_DUMMY_HASH = HASHER.hash("not-a-real-password-only-for-timing")


# zxcvbn scores 0-4; 3 is "safely unguessable: moderate protection from offline attacks".
MIN_STRENGTH = 3
# zxcvbn's matching grows with the length; the first characters decide the score anyway.
_STRENGTH_CHECKED_CHARS = 100


def check_policy(password: str, username: str = "") -> str | None:
    """Why ``password`` is unacceptable (for ``username``), or None.

    Common and breached passwords, words, names, keyboard patterns and repeats are
    found by zxcvbn, which ships its frequency lists (no network at run time).
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"a password needs at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > 1024:
        return "a password has at most 1024 characters"
    user = username.strip().lower()
    # (A one- or two-letter username would rule out half of all passwords.)
    if len(user) >= 3 and user in password.lower():
        return "a password must not contain the username"
    result = zxcvbn(password[:_STRENGTH_CHECKED_CHARS], user_inputs=[user] if user else [])
    if int(result["score"]) < MIN_STRENGTH:
        warning = str(result["feedback"].get("warning") or "").rstrip(".")
        reason = f" ({warning.lower()})" if warning else ""
        return f"the password is too easy to guess{reason}; choose a longer, less common one"
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
