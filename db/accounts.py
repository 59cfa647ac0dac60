"""Accounts of the review app: names, roles and password hashes (scrypt, from the standard library).

A hash is one self-describing string, ``scrypt$16384$8$1$<salt b64>$<hash b64>``: the cost settings
travel with it, so they can be raised later without breaking stored passwords. Verification
recomputes the hash with the stored settings and compares in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from db.models import USER_ROLES
from db.records import StoreError

SCHEME = "scrypt"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES, HASH_BYTES = 16, 32
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
_MAX_MEMORY = 64 * 1024 * 1024  # scrypt needs 128 * n * r bytes (16 MiB here); allow raised settings
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass(frozen=True)
class UserView:
    """An account as the store shows it (never with its password hash)."""

    name: str
    role: str
    created_at: datetime
    disabled: bool


def check_name(name: object) -> str:
    """A valid account name: 1–64 letters, digits, ".", "_", "@" or "-", starting with a letter or digit.

    Raises:
        StoreError: anything else.
    """
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise StoreError(f"user name {name!r}: expected 1-64 letters, digits, '.', '_', '@' or '-', "
                         "starting with a letter or digit")
    return name


def check_role(role: object) -> str:
    """One of `USER_ROLES`.

    Raises:
        StoreError: any other value.
    """
    if role not in USER_ROLES:
        raise StoreError(f"role {role!r}: expected one of {', '.join(USER_ROLES)}")
    return str(role)


def check_password(password: object) -> str:
    """A password of `MIN_PASSWORD` to `MAX_PASSWORD` characters.

    Raises:
        StoreError: not a string, too short or too long.
    """
    if not isinstance(password, str):
        raise StoreError(f"password: got {type(password).__name__}, expected a string")
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise StoreError(f"password: got {len(password)} characters, expected {MIN_PASSWORD} to {MAX_PASSWORD}")
    return password


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAX_MEMORY, dklen=length)


def hash_password(password: str) -> str:
    """The encoded scrypt hash of `password` with a fresh random 16-byte salt.

    Raises:
        StoreError: the password is too short or too long.
    """
    check_password(password)
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES)
    return f"{SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches `encoded` (from `hash_password`); False for a malformed hash."""
    try:
        scheme, n, r, p, salt_b64, digest_b64 = encoded.split("$")
        salt, digest = base64.b64decode(salt_b64, validate=True), base64.b64decode(digest_b64, validate=True)
        if scheme != SCHEME or not digest:
            return False
        candidate = _scrypt(str(password), salt, int(n), int(r), int(p), len(digest))
    except (ValueError, binascii.Error, AttributeError):
        return False
    return hmac.compare_digest(candidate, digest)


@lru_cache(maxsize=1)
def dummy_hash() -> str:
    """A hash of a random password: verified against when a name is unknown, so that a login costs
    one KDF either way and its timing does not reveal which names exist."""
    return hash_password(secrets.token_urlsafe(16))
