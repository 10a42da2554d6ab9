"""The server side of SCRAM-SHA-256/512 (RFC 5802, RFC 7677) as Kafka uses it: no channel
binding, usernames escaped with ``=2C``/``=3D``. Pure: no I/O.

Used by the development broker's security gateway (:mod:`services.common.kafka_gateway`),
because the embedded Tansu build can neither store SCRAM credentials nor serve TLS; the
clients under test run their own, independent SCRAM implementations against it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

#: Kafka's minimum (and clients refuse fewer).
ITERATIONS = 4096
HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


class ScramError(Exception):
    """The exchange failed: malformed message, unknown user or wrong password. The message
    never says which of the last two."""


@dataclass(frozen=True)
class ScramCredential:
    """What a broker stores for a user: never the password."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def _hmac(hash_name: str, key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hash_name).digest()


def credential(mechanism: str, password: str, salt: bytes | None = None) -> ScramCredential:
    """The stored credential of ``password`` for ``mechanism`` (a fresh random salt)."""
    hash_name = HASHES[mechanism]
    salt = salt if salt is not None else secrets.token_bytes(24)
    salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), salt, ITERATIONS)
    client_key = _hmac(hash_name, salted, b"Client Key")
    return ScramCredential(
        salt=salt,
        iterations=ITERATIONS,
        stored_key=hashlib.new(hash_name, client_key).digest(),
        server_key=_hmac(hash_name, salted, b"Server Key"),
    )


def _attributes(message: str) -> dict[str, str]:
    out = {}
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramError("malformed SCRAM message")
        out[part[0]] = part[2:]
    return out


class ScramServerSession:
    """One authentication exchange: :meth:`first` answers the client-first message,
    :meth:`final` the client-final one, after which :attr:`username` is authenticated."""

    def __init__(self, mechanism: str, credentials: Mapping[str, ScramCredential]) -> None:
        if mechanism not in HASHES:
            raise ScramError(f"unsupported mechanism {mechanism}")
        self._hash = HASHES[mechanism]
        self._credentials = credentials
        self._state: tuple[str, str, str, str, ScramCredential | None] | None = None
        self.username: str | None = None

    def first(self, client_first: bytes) -> bytes:
        try:
            text = client_first.decode()
        except UnicodeDecodeError:
            raise ScramError("malformed SCRAM message") from None
        gs2_flag, _, rest = text.partition(",")
        authzid, _, bare = rest.partition(",")
        if gs2_flag not in ("n", "y") or (authzid and not authzid.startswith("a=")):
            raise ScramError("malformed SCRAM message (channel binding is not supported)")
        attrs = _attributes(bare)
        if "n" not in attrs or "r" not in attrs:
            raise ScramError("malformed SCRAM client-first message")
        user = attrs["n"].replace("=2C", ",").replace("=3D", "=")
        stored = self._credentials.get(user)
        # An unknown user gets a made-up salt and fails at the proof, as a wrong password
        # does: the exchange does not reveal which users exist.
        salt = stored.salt if stored else hashlib.new(self._hash, user.encode()).digest()[:24]
        nonce = attrs["r"] + secrets.token_urlsafe(24)
        server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={ITERATIONS}"
        gs2_header = f"{gs2_flag},{authzid},"
        self._state = (user, bare, server_first, gs2_header, stored)
        return server_first.encode()

    def final(self, client_final: bytes) -> bytes:
        if self._state is None:
            raise ScramError("client-final before client-first")
        user, client_first_bare, server_first, gs2_header, stored = self._state
        self._state = None
        try:
            text = client_final.decode()
        except UnicodeDecodeError:
            raise ScramError("malformed SCRAM message") from None
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        attrs = _attributes(without_proof) if sep else {}
        expected_binding = base64.b64encode(gs2_header.encode()).decode()
        nonce = _attributes(server_first)["r"]
        if attrs.get("c") != expected_binding or attrs.get("r") != nonce:
            raise ScramError("malformed SCRAM client-final message")
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            raise ScramError("malformed SCRAM proof") from None
        auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
        if stored is None:
            raise ScramError("authentication failed")
        signature = _hmac(self._hash, stored.stored_key, auth_message)
        if len(proof) != len(signature):
            raise ScramError("authentication failed")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.new(self._hash, client_key).digest(), stored.stored_key):
            raise ScramError("authentication failed")
        self.username = user
        server_signature = _hmac(self._hash, stored.server_key, auth_message)
        return f"v={base64.b64encode(server_signature).decode()}".encode()
