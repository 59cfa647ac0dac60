"""Password hashing: the scrypt format, fresh salts, verification, and the length rule."""

from __future__ import annotations

import base64

import pytest

from db.accounts import (
    MIN_PASSWORD,
    check_name,
    check_role,
    dummy_hash,
    hash_password,
    verify_password,
)
from db.records import StoreError


def test_hash_format_names_the_kdf_its_settings_salt_and_hash():
    scheme, n, r, p, salt, digest = hash_password("correct horse").split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 32


def test_salts_differ_so_equal_passwords_hash_differently():
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second and first.split("$")[4] != second.split("$")[4]
    assert verify_password("correct horse", first) and verify_password("correct horse", second)


@pytest.mark.parametrize("attempt", ["correct hors", "Correct horse", "correct horse ", ""])
def test_a_wrong_password_is_rejected(attempt):
    assert not verify_password(attempt, hash_password("correct horse"))


@pytest.mark.parametrize("encoded", ["", "plain", "md5$1$2$3$abc$def", "scrypt$x$8$1$AAAA$AAAA", "scrypt$16384$8$1$!!$AA"])
def test_a_malformed_hash_never_verifies(encoded):
    assert verify_password("anything", encoded) is False


def test_a_short_password_is_refused():
    with pytest.raises(StoreError, match=f"got 7 characters, expected {MIN_PASSWORD}"):
        hash_password("x" * 7)
    assert verify_password("x" * 8, hash_password("x" * 8))


def test_the_dummy_hash_is_a_real_hash_computed_once():
    assert dummy_hash() is dummy_hash() and dummy_hash().startswith("scrypt$16384$8$1$")


@pytest.mark.parametrize("name", ["dr.a", "A", "jane_doe@ward-3", "x" * 64])
def test_valid_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", " dr", "dr a", ".hidden", "x" * 65, "dr\n", None])
def test_invalid_names(name):
    with pytest.raises(StoreError, match="user name"):
        check_name(name)


def test_roles():
    assert [check_role(r) for r in ("viewer", "clinician", "admin")] == ["viewer", "clinician", "admin"]
    with pytest.raises(StoreError, match="expected one of viewer, clinician, admin"):
        check_role("root")
