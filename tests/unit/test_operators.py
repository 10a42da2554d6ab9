"""The pure operator core: roles, password hashes, API keys, Authorization parsing and the
verification of a credential against a stored operator (no store, no HTTP)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from pydantic import SecretStr

from services.common import operators
from services.common.operators import (
    SCRYPT,
    ApiKeyCredential,
    Identity,
    InvalidOperatorError,
    OperatorRecord,
    PasswordCredential,
    Permission,
    Role,
    ScryptParams,
    allows,
    authenticate,
    check_name,
    check_password,
    dummy_password_hash,
    generate_api_key,
    hash_password,
    new_operator,
    parse_authorization,
    parse_role,
    verify_password,
)

#: Cheap parameters where the cost is not what is tested.
FAST = ScryptParams(n=2**10, r=8, p=1)
PASSWORD = "correct horse battery staple"


def _basic(user_pass: str | bytes) -> str:
    raw = user_pass.encode() if isinstance(user_pass, str) else user_pass
    return "Basic " + base64.b64encode(raw).decode()


# -- roles --------------------------------------------------------------------------------------


def test_roles_grow_from_viewer_to_admin() -> None:
    assert allows(Role.VIEWER, Permission.ALERTS_READ)
    assert allows(Role.VIEWER, Permission.DEVICES_READ)
    assert not allows(Role.VIEWER, Permission.ALERTS_ACT)
    assert allows(Role.CARER, Permission.ALERTS_ACT)
    assert not allows(Role.CARER, Permission.OPERATORS_MANAGE)
    assert not allows(Role.CARER, Permission.DEVICES_MANAGE)
    assert all(allows(Role.ADMIN, p) for p in Permission)
    assert Identity("ana", Role.CARER, "api_key").can(Permission.ALERTS_ACT)
    assert not Identity("bo", Role.VIEWER, "password").can(Permission.ALERTS_ACT)


def test_role_names() -> None:
    assert parse_role("carer") is Role.CARER
    with pytest.raises(InvalidOperatorError, match="viewer, carer, admin"):
        parse_role("nurse")


@pytest.mark.parametrize("name", ["ana", "Ana.Lima", "nurse-7", "ana@ward3", "a" * 64, "9_b"])
def test_names_accepted(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "a:b", "ana lima", "-ana", "a" * 65, "ana\n", "jos\u00e9", "auto", "System"]
)
def test_names_refused(name: str) -> None:
    with pytest.raises(InvalidOperatorError):
        check_name(name)


@pytest.mark.parametrize("password", ["short", "a" * 1025, "twelve chars\x00x"])
def test_passwords_refused(password: str) -> None:
    with pytest.raises(InvalidOperatorError):
        check_password(password)


# -- password hashes ----------------------------------------------------------------------------


def test_password_hash_is_salted_scrypt_with_its_parameters() -> None:
    first = hash_password(PASSWORD, FAST)
    second = hash_password(PASSWORD, FAST)
    assert first.startswith("scrypt$n=1024,r=8,p=1$")
    assert first != second  # per-hash random salt
    assert PASSWORD not in first
    assert verify_password(PASSWORD, first)
    assert verify_password(PASSWORD, second)
    assert not verify_password(PASSWORD + "!", first)
    assert not verify_password("", first)


def test_default_cost_is_stored_with_the_hash() -> None:
    encoded = hash_password(PASSWORD)
    assert encoded.startswith(f"scrypt$n={SCRYPT.n},r={SCRYPT.r},p={SCRYPT.p}$")
    assert verify_password(PASSWORD, encoded)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain",
        "bcrypt$n=1024,r=8,p=1$c2FsdA$ZGlnZXN0",
        "scrypt$n=1000,r=8,p=1$c2FsdA$ZGlnZXN0",  # n not a power of two
        "scrypt$n=1024,r=8$c2FsdA$ZGlnZXN0",
        "scrypt$n=1024,r=8,p=1$c2FsdA$",
        "scrypt$n=1024,r=8,p=1$!!!$ZGlnZXN0",
        # A tampered row asking for 16 GiB per check must not take the service down.
        "scrypt$n=16777216,r=8,p=1$c2FsdA$ZGlnZXN0",
        "scrypt$n=0,r=8,p=1$c2FsdA$ZGlnZXN0",
    ],
)
def test_a_malformed_hash_matches_nothing(encoded: str) -> None:
    assert not verify_password(PASSWORD, encoded)


# -- API keys and Authorization headers ---------------------------------------------------------


def test_api_keys_are_random_and_parse_back() -> None:
    one, two = generate_api_key(), generate_api_key()
    assert one.key.get_secret_value() != two.key.get_secret_value()
    key = one.key.get_secret_value()
    assert key.startswith(f"hso_{one.key_id}_")
    assert len(key) == 4 + 12 + 1 + 43
    credential = parse_authorization(f"Bearer {key}")
    assert isinstance(credential, ApiKeyCredential)
    assert credential.key_id == one.key_id
    assert credential.secret.get_secret_value() == key[17:]
    assert parse_authorization(f"bearer   {key}  ") == credential


def test_basic_credentials_parse() -> None:
    credential = parse_authorization(_basic("ana:pass:with:colons"))
    assert isinstance(credential, PasswordCredential)
    assert credential.name == "ana"
    assert credential.password.get_secret_value() == "pass:with:colons"
    utf8 = parse_authorization(_basic("ana:p\u00e4ssword"))
    assert isinstance(utf8, PasswordCredential)
    assert utf8.password.get_secret_value() == "p\u00e4ssword"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer hso_short",
        "Bearer hso_" + "0" * 12 + "_" + "a" * 42,  # secret one character short
        "Bearer hso_" + "G" * 12 + "_" + "a" * 43,  # key id not hex
        "Bearer " + "a" * 60,  # a device token, not an API key
        "Token hso_" + "0" * 12 + "_" + "a" * 43,
        "Basic",
        "Basic not-base64!",
        "Basic " + base64.b64encode(b"no colon").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:password").decode(),  # not UTF-8
        "Basic " + base64.b64encode(b"a:b:c").decode() + "===",
        _basic("bad name:password"),
        _basic(":password"),
        _basic("ana:" + "p" * 1025),
        "Basic " + "A" * 5000,
        "Bearer hso_\udcff",  # aiohttp's surrogate escape of non-UTF-8 header bytes
        "Basic \udcff\udcfe",
    ],
)
def test_headers_that_are_no_credential(header: str | None) -> None:
    assert parse_authorization(header) is None


# -- authentication -----------------------------------------------------------------------------


def _record(role: Role = Role.CARER, password: str | None = PASSWORD) -> tuple[OperatorRecord, str]:
    record, key = new_operator("ana", role, 1000.0, None)
    if password is not None:
        record = OperatorRecord(
            **{**record.__dict__, "password_hash": hash_password(password, FAST)}
        )
    return record, key.get_secret_value()


def test_api_key_authenticates_its_operator_only() -> None:
    record, key = _record()
    credential = parse_authorization(f"Bearer {key}")
    assert isinstance(credential, ApiKeyCredential)
    assert authenticate(credential, record) == Identity("ana", Role.CARER, "api_key")
    assert authenticate(credential, None) is None
    other, _ = new_operator("bo", Role.ADMIN, 1000.0)
    assert authenticate(credential, other) is None
    wrong = ApiKeyCredential(record.key_id or "", SecretStr("x" * 43))
    assert authenticate(wrong, record) is None
    revoked = OperatorRecord(**{**record.__dict__, "revoked_at": 2000.0})
    assert authenticate(credential, revoked) is None


def test_password_authenticates_and_fails_the_same_way() -> None:
    record, _ = _record(Role.VIEWER)
    good = parse_authorization(_basic(f"ana:{PASSWORD}"))
    bad = parse_authorization(_basic("ana:not the password"))
    assert good is not None and bad is not None
    assert authenticate(good, record) == Identity("ana", Role.VIEWER, "password")
    assert authenticate(bad, record) is None
    assert authenticate(good, None) is None
    no_password, _ = _record(password=None)
    assert authenticate(good, no_password) is None


def test_an_unknown_name_costs_a_scrypt_like_a_wrong_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Timing must not tell whether a name exists: a miss verifies against a dummy hash of
    the default cost (without it an unknown name answers in microseconds). Counted, not
    timed: the same scrypt work (calls and their n, r, p) for a miss as for a wrong
    password, whatever the machine's load."""
    record, _ = new_operator("ana", Role.CARER, 1000.0, PASSWORD)  # default cost
    wrong = parse_authorization(_basic("ana:not the password"))
    unknown = parse_authorization(_basic("nobody:not the password"))
    assert wrong is not None and unknown is not None
    dummy_password_hash()  # computed once per process, before any request

    calls: list[tuple[int, int, int]] = []
    real_scrypt = hashlib.scrypt

    def counting_scrypt(
        password: bytes, *, salt: bytes, n: int, r: int, p: int, **kw: int
    ) -> bytes:
        calls.append((n, r, p))
        return real_scrypt(password, salt=salt, n=n, r=r, p=p, **kw)

    monkeypatch.setattr(operators.hashlib, "scrypt", counting_scrypt)
    assert authenticate(wrong, record) is None
    for_wrong_password = list(calls)
    calls.clear()
    assert authenticate(unknown, None) is None
    assert len(for_wrong_password) == 1
    assert calls == for_wrong_password


def test_new_operator_checks_and_hashes() -> None:
    record, key = new_operator("ana", Role.ADMIN, 5.0, PASSWORD)
    assert record.role is Role.ADMIN and record.created_at == 5.0
    assert record.password_hash is not None and verify_password(PASSWORD, record.password_hash)
    assert record.key_id is not None and record.key_id in key.get_secret_value()
    with pytest.raises(InvalidOperatorError):
        new_operator("ana", Role.ADMIN, 5.0, "short")
    with pytest.raises(InvalidOperatorError):
        new_operator("a:b", Role.ADMIN, 5.0)


def test_secrets_stay_out_of_repr() -> None:
    record, key = new_operator("ana", Role.CARER, 5.0, PASSWORD)
    new_key = generate_api_key()
    basic = parse_authorization(_basic(f"ana:{PASSWORD}"))
    bearer = parse_authorization(f"Bearer {key.get_secret_value()}")
    secret_part = key.get_secret_value()[17:]
    texts = [
        repr(record),
        str(record),
        repr(key),
        str(key),
        repr(new_key),
        repr(basic),
        repr(bearer),
    ]
    for text in texts:
        assert PASSWORD not in text
        assert secret_part not in text
        assert new_key.key.get_secret_value() not in text
        assert record.password_hash is not None and record.password_hash not in text
        assert record.key_hash is not None and record.key_hash not in text
    assert "ana" in repr(record)  # the name and key id are public
    assert record.key_id is not None and record.key_id in repr(record)
    assert "has_password" in record.public() and "key_hash" not in record.public()
