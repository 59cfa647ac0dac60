"""Accounts of the review app: names, roles and password hashes (scrypt, from the standard library).

A hash is one self-describing string, ``scrypt$16384$8$1$<salt b64>$<hash b64>``: the cost settings
travel with it, so they can be raised later without breaking stored passwords. Verification
recomputes the hash with the stored settings and compares in constant time. `AccountMethods` are
the account methods of `db.store.CaseStore`, each one transaction.
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

from sqlalchemy import select

import db.write as write
from db.connect import Database
from db.models import USER_ROLES, User
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


def user_view(user: User) -> UserView:
    """The public view of an account row (without its password hash)."""
    return UserView(name=user.name, role=user.role, created_at=user.created_at, disabled=user.disabled)


class AccountMethods(Database):
    """The accounts of the review app, as methods of `db.store.CaseStore`; every change is audited."""

    def add_user(self, name: str, role: str, password: str, actor: str = "system") -> UserView:
        """Create an account (password hashed with scrypt); records a "user" event by `actor`.

        Raises:
            StoreError: an invalid name, role or password (under 8 characters), or a name in use.
        """
        check_name(name)
        check_role(role)
        write.check_text("add_user actor", actor)
        encoded = hash_password(password)  # outside the transaction: the KDF takes a while
        with self._session(write=True) as s:
            if s.scalar(select(User.id).where(User.name == name)) is not None:
                raise StoreError(f"user {name!r}: already exists; expected a new name (or use set_password)")
            user = User(name=name, role=role, password_hash=encoded, disabled=False)
            s.add(user)
            s.flush()
            write.log(s, "user", actor, None, {"action": "add", "name": name, "role": role})
            return user_view(user)

    def set_password(self, name: str, password: str, actor: str = "system") -> None:
        """Replace an account's password; records a "user" event (never the password).

        Raises:
            StoreError: unknown user, or an invalid password.
        """
        encoded = hash_password(password)
        self._change_user(name, actor, {"action": "password"}, password_hash=encoded)

    def set_role(self, name: str, role: str, actor: str = "system") -> None:
        """Change an account's role; records a "user" event.

        Raises:
            StoreError: unknown user or role.
        """
        self._change_user(name, actor, {"action": "role", "role": check_role(role)}, role=role)

    def set_disabled(self, name: str, disabled: bool = True, actor: str = "system") -> None:
        """Disable (or enable again) an account: a disabled one cannot log in; records a "user" event.

        Raises:
            StoreError: unknown user.
        """
        self._change_user(name, actor, {"action": "disable" if disabled else "enable"}, disabled=bool(disabled))

    def _change_user(self, name: str, actor: str, detail: dict, **values: object) -> None:
        write.check_text("user change actor", actor)
        with self._session(write=True) as s:
            user = s.scalar(select(User).where(User.name == name))
            if user is None:
                raise StoreError(f"user {name!r}: no such account; expected one of `medcm users list`")
            for key, value in values.items():
                setattr(user, key, value)
            write.log(s, "user", actor, None, {**detail, "name": name})

    def users(self) -> list[UserView]:
        """Every account, by name (disabled ones included)."""
        with self._session() as s:
            return [user_view(u) for u in s.scalars(select(User).order_by(User.name))]

    def user_role(self, name: str | None) -> str | None:
        """The role of an enabled account; None for no name, an unknown name or a disabled account."""
        if not name:
            return None
        with self._session() as s:
            row = s.execute(select(User.role, User.disabled).where(User.name == name)).first()
        return None if row is None or row.disabled else row.role

    def authenticate(self, name: str, password: str) -> str | None:
        """The role of the enabled account `name` if `password` is its password, else None.

        Costs one scrypt computation whether or not the name exists, so the time taken does not
        reveal which names are accounts; the hashes are compared in constant time.
        """
        with self._session() as s:
            row = s.execute(select(User.role, User.disabled, User.password_hash).where(User.name == name)).first()
        ok = verify_password(password, row.password_hash if row else dummy_hash())
        return row.role if ok and row is not None and not row.disabled else None
