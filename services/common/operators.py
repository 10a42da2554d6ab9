"""Operators: who may read and act on alerts (and, later, manage devices and operators).

Pure: roles and what they allow, password hashing, API keys, ``Authorization`` header
parsing and the verification of a credential against a stored operator. No I/O: the stores
keep :class:`OperatorRecord` rows, the HTTP shells parse headers with
:func:`parse_authorization` and call :func:`authenticate`. The web console will log in with
the same identities (a password checked once, then a session carrying an :class:`Identity`).

Secrets:

* **Passwords** chosen by people are low-entropy, so they are stored as scrypt hashes
  (memory-hard: a GPU farm pays 32 MiB per guess), with a per-operator random salt and the
  scrypt parameters in the stored string, so the cost can be raised later without
  invalidating existing hashes.
* **API keys** are generated: ``hso_<key id>_<secret>``, 256 random bits in the secret. A slow
  KDF would add nothing to a 256-bit secret (it only slows the guessing of weak ones), so the
  secret is stored as SHA-256. The key id is public (listed, logged) and finds the row; the
  secret's hash is then compared in constant time.

Failing to authenticate must not tell an attacker which names or key ids exist: an unknown
name costs the same scrypt as a wrong password (against a dummy hash), an unknown key id the
same hash-and-compare as a wrong secret, and every failure is the same ``None``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from typing import NamedTuple

from pydantic import SecretStr

from shared.errors import HarstreamError

# -- roles ------------------------------------------------------------------------------------


class Role(StrEnum):
    #: Reads alerts and devices (a ward display, an auditor).
    VIEWER = "viewer"
    #: A viewer who also acknowledges and resolves alerts (nurses, carers).
    CARER = "carer"
    #: Everything, including operators and devices.
    ADMIN = "admin"


class Permission(StrEnum):
    ALERTS_READ = "alerts:read"
    ALERTS_ACT = "alerts:act"
    DEVICES_READ = "devices:read"
    DEVICES_MANAGE = "devices:manage"
    OPERATORS_MANAGE = "operators:manage"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.ALERTS_READ, Permission.DEVICES_READ}),
    Role.CARER: frozenset({Permission.ALERTS_READ, Permission.DEVICES_READ, Permission.ALERTS_ACT}),
    Role.ADMIN: frozenset(Permission),
}


def allows(role: Role, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[role]


# -- errors -----------------------------------------------------------------------------------


class OperatorError(HarstreamError):
    """An operator cannot be created or changed as asked."""


class InvalidOperatorError(OperatorError):
    """A name, role or password that is not acceptable."""


class OperatorExistsError(OperatorError):
    """The name is taken (also by a revoked operator: audit records name operators)."""


class UnknownOperatorError(OperatorError):
    """No operator has this name."""


class RevokedOperatorError(OperatorError):
    """The operator is revoked; revocation is final."""


# -- names and passwords ----------------------------------------------------------------------

#: Letters, digits and ``. _ @ -``: no ``:`` (HTTP Basic splits at the first one), no spaces
#: or control characters (names appear in logs and in the alert history).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MIN_PASSWORD_LENGTH = 12
#: scrypt reads all of it; a bound keeps a huge Basic header from costing more.
MAX_PASSWORD_LENGTH = 1024


#: Names the alert rules use for their own steps (``resolved_by: auto``).
RESERVED_NAMES = frozenset({"auto", "system"})


def check_name(name: str) -> str:
    """``name`` if it can name an operator, else :class:`InvalidOperatorError`."""
    if not _NAME.fullmatch(name):
        raise InvalidOperatorError(
            "an operator name is 1-64 letters, digits or . _ @ -, starting with a letter or digit"
        )
    if name.lower() in RESERVED_NAMES:
        raise InvalidOperatorError(f"{name!r} is reserved for the alert rules' own steps")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidOperatorError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidOperatorError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
    if not password.isprintable():
        raise InvalidOperatorError("a password has no control characters")
    return password


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise InvalidOperatorError(f"role must be one of {allowed}, not {value!r}") from None


# -- password hashing (scrypt) ----------------------------------------------------------------


class ScryptParams(NamedTuple):
    #: CPU/memory cost (a power of two); memory is 128 * n * r bytes.
    n: int
    #: Block size.
    r: int
    #: Parallelism.
    p: int


#: 32 MiB and ~70 ms per hash on the reference machine (2**14: 34 ms, 2**16: 144 ms,
#: 2**17, OWASP's figure: 338 ms). Passwords are for people: the console checks one per
#: login, Basic auth one per request; scripts use API keys, which cost a SHA-256.
SCRYPT = ScryptParams(n=2**15, r=8, p=1)
_SALT_BYTES = 16
_DKLEN = 32
#: Refuse stored parameters that would make one verification take absurd memory or time
#: (a tampered row must not take the service down).
_MAX_SCRYPT_MEMORY = 256 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, params: ScryptParams) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=params.n,
        r=params.r,
        p=params.p,
        maxmem=_MAX_SCRYPT_MEMORY + 1024 * 1024,
        dklen=_DKLEN,
    )


def hash_password(password: str, params: ScryptParams = SCRYPT) -> str:
    """``scrypt$n=32768,r=8,p=1$<salt>$<hash>`` (URL-safe base64 without padding)."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, salt, params)
    return f"scrypt$n={params.n},r={params.r},p={params.p}${_b64(salt)}${_b64(digest)}"


def _parse_password_hash(encoded: str) -> tuple[ScryptParams, bytes, bytes] | None:
    try:
        scheme, raw_params, salt, digest = encoded.split("$")
        values = dict(item.split("=", 1) for item in raw_params.split(","))
        params = ScryptParams(int(values["n"]), int(values["r"]), int(values["p"]))
        salt_bytes, digest_bytes = _unb64(salt), _unb64(digest)
    except (ValueError, KeyError, binascii.Error):
        return None
    if scheme != "scrypt" or min(params) < 1 or params.n & (params.n - 1):
        return None
    if 128 * params.n * params.r * params.p > _MAX_SCRYPT_MEMORY or not digest_bytes:
        return None
    return params, salt_bytes, digest_bytes


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (made by :func:`hash_password`); a malformed
    hash matches nothing."""
    parsed = _parse_password_hash(encoded)
    if parsed is None:
        return False
    params, salt, digest = parsed
    return hmac.compare_digest(_scrypt(password, salt, params), digest)


@cache
def dummy_password_hash() -> str:
    """A hash no password is known for, at the default cost, verified against when the name
    is unknown so that a miss takes as long as a wrong password."""
    return hash_password(secrets.token_urlsafe(32))


# -- API keys ---------------------------------------------------------------------------------

API_KEY_PREFIX = "hso_"
_KEY_ID_CHARS = 12
_KEY_SECRET_BYTES = 32
#: hso_ + 12 hex + _ + 43 base64url characters.
_API_KEY = re.compile(r"hso_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


class NewApiKey(NamedTuple):
    """A freshly generated key: ``key`` is shown once, the store keeps the other two."""

    key: SecretStr
    key_id: str
    key_hash: str


def _hash_key_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def generate_api_key() -> NewApiKey:
    key_id = secrets.token_hex(_KEY_ID_CHARS // 2)
    secret = secrets.token_urlsafe(_KEY_SECRET_BYTES)
    return NewApiKey(
        SecretStr(f"{API_KEY_PREFIX}{key_id}_{secret}"), key_id, _hash_key_secret(secret)
    )


# -- credentials ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiKeyCredential:
    """``Authorization: Bearer hso_<key id>_<secret>``."""

    key_id: str
    secret: SecretStr


@dataclass(frozen=True)
class PasswordCredential:
    """``Authorization: Basic base64(name:password)``."""

    name: str
    password: SecretStr


Credential = ApiKeyCredential | PasswordCredential

#: Longer headers are not ours (a Basic header of the longest name and password is ~1.5 KB).
_MAX_HEADER = 4096


def parse_authorization(header: str | None) -> Credential | None:
    """The credential of an ``Authorization`` header, or None if there is none or it is not
    one of ours (the caller answers 401 either way)."""
    if not header or len(header) > _MAX_HEADER:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    scheme = scheme.lower()
    if scheme == "bearer":
        match = _API_KEY.fullmatch(value)
        if match is None:
            return None
        return ApiKeyCredential(match[1], SecretStr(match[2]))
    if scheme == "basic":
        return _basic(value)
    return None


def _basic(value: str) -> PasswordCredential | None:
    try:
        # validate=True: no silently skipped characters; RFC 7617 says UTF-8 (charset="UTF-8").
        decoded = base64.b64decode(value.encode("ascii"), validate=True).decode("utf-8")
    except (UnicodeError, binascii.Error, ValueError):
        return None
    name, colon, password = decoded.partition(":")
    if not colon or not _NAME.fullmatch(name) or len(password) > MAX_PASSWORD_LENGTH:
        return None
    return PasswordCredential(name, SecretStr(password))


# -- stored operators and authentication ------------------------------------------------------


@dataclass(frozen=True)
class OperatorRecord:
    """One operator as stored. The hashes stay out of ``repr`` (and so out of logs)."""

    name: str
    role: Role
    created_at: float
    updated_at: float
    revoked_at: float | None = None
    #: Public id of the current API key (None when revoked).
    key_id: str | None = None
    key_hash: str | None = field(default=None, repr=False)
    #: scrypt hash, or None if the operator has no password (API key only).
    password_hash: str | None = field(default=None, repr=False)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def public(self) -> dict[str, object]:
        """What ``operators list --json`` and a future admin API show."""
        return {
            "name": self.name,
            "role": self.role.value,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "revoked_at": self.revoked_at,
            "key_id": self.key_id,
            "has_password": self.password_hash is not None,
        }


class Identity(NamedTuple):
    """An authenticated operator: what a request (or a console session) acts as."""

    name: str
    role: Role
    #: ``api_key`` or ``password`` (a console session would say ``session``).
    method: str

    def can(self, permission: Permission) -> bool:
        return allows(self.role, permission)


def new_operator(
    name: str, role: Role, now: float, password: str | None = None
) -> tuple[OperatorRecord, SecretStr]:
    """A new operator with a fresh API key (returned once) and, if given, a password."""
    check_name(name)
    key = generate_api_key()
    password_hash = hash_password(check_password(password)) if password is not None else None
    record = OperatorRecord(
        name=name,
        role=role,
        created_at=now,
        updated_at=now,
        key_id=key.key_id,
        key_hash=key.key_hash,
        password_hash=password_hash,
    )
    return record, key.key


def authenticate(credential: Credential, record: OperatorRecord | None) -> Identity | None:
    """The identity ``credential`` proves, given the stored operator it names (looked up by
    key id or name; None if there is none), or None.

    CPU-bound for passwords (one scrypt, even when ``record`` is None): call it off the event
    loop. Every failure costs the same work as a wrong secret and returns the same None."""
    if isinstance(credential, ApiKeyCredential):
        stored = (
            record.key_hash if record is not None and record.key_id == credential.key_id else None
        )
        # Hash and compare even on a miss: the same work whether or not the key id exists.
        ok = hmac.compare_digest(
            _hash_key_secret(credential.secret.get_secret_value()),
            stored if stored is not None else "0" * 64,
        )
        ok = ok and stored is not None
        method = "api_key"
    else:
        matches_name = record is not None and record.name == credential.name
        stored = record.password_hash if matches_name and record is not None else None
        ok = verify_password(
            credential.password.get_secret_value(),
            stored if stored is not None else dummy_password_hash(),
        )
        ok = ok and stored is not None
        method = "password"
    if not ok or record is None or record.revoked:
        return None
    return Identity(record.name, record.role, method)
