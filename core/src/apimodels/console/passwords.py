"""Passwords: Argon2id through argon2-cffi (its RFC 9106 low-memory profile), never by hand.

Hashing takes tens of milliseconds of CPU on purpose: callers on the event loop run it in a
worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()

MIN_LENGTH = 10
MAX_LENGTH = 256  # Argon2 takes any length; a bound keeps one request's work bounded

#: Verified against when an email has no password, so an unknown address takes as long as
#: a wrong password (no account enumeration by timing).
_DUMMY = _hasher.hash("not a password of anyone")


def check_new_password(password: str) -> str | None:
    """Why ``password`` cannot be used, or None."""
    if len(password) < MIN_LENGTH:
        return f"Use at least {MIN_LENGTH} characters."
    if len(password) > MAX_LENGTH:
        return f"Use at most {MAX_LENGTH} characters."
    return None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """True when ``password`` matches the stored hash (always False, in the same time,
    when there is none)."""
    try:
        return _hasher.verify(stored or _DUMMY, password[:MAX_LENGTH]) and stored is not None
    except (VerificationError, InvalidHashError):
        return False
