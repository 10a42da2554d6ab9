"""Device tokens: generation, hashing, verification, Authorization header parsing.

Tokens are 256 bits from :func:`secrets.token_urlsafe`, so guessing one is hopeless and a
plain SHA-256 is enough to store them: slow password KDFs (bcrypt, scrypt, argon2) exist to
make *low-entropy* secrets expensive to brute-force, which these are not. The registry keeps
only the hash, so a leaked database does not leak usable tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

#: Bytes of randomness in a generated token (43 URL-safe characters).
TOKEN_BYTES = 32
#: Shortest token accepted from ``devices add --token`` (scripted setups).
MIN_TOKEN_LENGTH = 32
#: Longest token looked up at all (anything longer is not one of ours).
MAX_TOKEN_LENGTH = 256


def generate_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """SHA-256 hex digest of a token, as the registry stores it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def verify_token(token: str, token_hash: str) -> bool:
    """Whether ``token`` hashes to ``token_hash``, in time independent of where they differ."""
    return hmac.compare_digest(hash_token(token).encode(), token_hash.encode())


def check_token_format(token: str) -> str | None:
    """Why ``token`` is unfit to be registered, or None if it is fine."""
    if len(token) < MIN_TOKEN_LENGTH:
        return f"a token needs at least {MIN_TOKEN_LENGTH} characters"
    if len(token) > MAX_TOKEN_LENGTH:
        return f"a token has at most {MAX_TOKEN_LENGTH} characters"
    if not token.isascii() or not token.isprintable() or " " in token:
        return "a token is printable ASCII without spaces"
    return None


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None.

    Only printable ASCII can be a token (see :func:`check_token_format`). aiohttp decodes
    header bytes that are not UTF-8 to lone surrogates (``surrogateescape``), which cannot
    even be hashed: such a header is no token, answered 401 like any other."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    if not token.isascii() or not token.isprintable():
        return None
    return token
