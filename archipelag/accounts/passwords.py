"""Passwords: argon2id hashes (argon2-cffi, RFC 9106 defaults) and the rules a new password must meet.

Hashing is slow and memory-hard on purpose (tens of milliseconds); callers on an event loop run these
functions in a thread. Nothing here logs a password.
"""

from __future__ import annotations

import secrets
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from archipelag.errors import ValidationFailed

MIN_LENGTH = 10
MAX_BYTES = 1024  # argon2 takes any length; a bound keeps a request from buying minutes of hashing

_hasher = PasswordHasher()


def check_new(password: str, email: str) -> None:
    """ValidationFailed unless ``password`` is acceptable as a new password for ``email``."""
    problem = None
    if len(password) < MIN_LENGTH:
        problem = f"must be at least {MIN_LENGTH} characters"
    elif len(password.encode()) > MAX_BYTES:
        problem = f"must be at most {MAX_BYTES} bytes"
    elif len(set(password)) < 4 or password.lower() in email.lower():
        problem = "is too easy to guess"
    if problem:
        raise ValidationFailed(f"the password {problem}", errors={"password": problem})


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches. With no hash (no such account) a dummy hash is checked, so an unknown
    address takes as long to refuse as a wrong password."""
    if len(password.encode()) > MAX_BYTES:
        return False
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


@cache
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))
