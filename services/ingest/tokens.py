"""Device tokens: generation, hashing, verification, Authorization header parsing.

Tokens are 256 bits from :func:`secrets.token_urlsafe`, so guessing one is hopeless and a
plain SHA-256 is enough to store them: slow password KDFs (bcrypt, scrypt, argon2) exist to
make *low-entropy* secrets expensive to brute-force, which these are not. The registry keeps
only the hash, so a leaked database does not leak usable tokens.

Tokens chosen by an operator (``devices add --token``) are held to the same bar instead of
being salted: a device presents only its token, so the registry must find the device *by*
the token, and any salted or slow hash would have to be computed against every row (or
behind an unsalted index that an attacker would brute-force instead). So a custom token must
carry at least :data:`MIN_TOKEN_BITS` of estimated entropy (:func:`estimated_bits`), which
makes its SHA-256 as safe to store as a generated token's. Tokens registered before this
rule are still accepted; the service logs a warning when a weak one is used
(:func:`check_token_strength`), so the operator can rotate it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import string
import zlib

#: Bytes of randomness in a generated token (43 URL-safe characters).
TOKEN_BYTES = 32
#: Shortest token accepted from ``devices add --token`` (scripted setups).
MIN_TOKEN_LENGTH = 32
#: Longest token looked up at all (anything longer is not one of ours).
MAX_TOKEN_LENGTH = 256
#: Least estimated entropy of a custom token (bits): as much as a generated one has.
MIN_TOKEN_BITS = 256
#: Hashed in place of a stored hash when there is none to compare against, so a lookup that
#: finds no device costs the same compare as one that does.
_DUMMY_HASH = hashlib.sha256(b"harstream: no such device").hexdigest()

_CLASSES = (string.digits, string.ascii_lowercase, string.ascii_uppercase, string.punctuation)
#: zlib's fixed cost (2-byte header, 4-byte Adler-32) when measuring how far a token compresses.
_ZLIB_OVERHEAD_BYTES = 6


def generate_token() -> str:
    # About one draw in 10^4 has neither digits nor '-'/'_' and scores below the bar of
    # estimated_bits; drawing again costs under 0.001 bit and keeps every generated token
    # acceptable as a custom one too (re-registering it with --token).
    while True:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        if check_token_strength(token) is None:
            return token


def hash_token(token: str) -> str:
    """SHA-256 hex digest of a token, as the registry stores it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def verify_token(token: str, token_hash: str | None) -> bool:
    """Whether ``token`` hashes to ``token_hash``, in time independent of where they differ
    and of whether there was a hash at all (None: no such device; a dummy is compared)."""
    expected = _DUMMY_HASH if token_hash is None else token_hash
    matches = hmac.compare_digest(hash_token(token).encode(), expected.encode())
    return matches and token_hash is not None


def estimated_bits(token: str) -> float:
    """A conservative estimate of the entropy of ``token`` (bits): the smaller of

    - its length times log2 of the alphabet its character classes span (digits 10, lower
      case 26, upper case 26, punctuation 32): what a uniformly random string of that
      length and alphabet carries; and
    - its size after zlib compression (less zlib's fixed overhead), in bits: repeated or
      patterned tokens ("password1234" five times) compress far below their length.

    ``secrets.token_hex(32)`` scores ≥ 256, ``secrets.token_urlsafe(32)`` ≥ 256, a 32-
    character urlsafe token about 190. A heuristic: a token built from a known text or a
    counting sequence can still score high, so generated tokens remain the advice.
    """
    if not token:
        return 0.0
    alphabet = sum(len(chars) for chars in _CLASSES if any(c in chars for c in token))
    alphabet = max(alphabet, len(set(token)))  # characters outside the classes
    by_alphabet = len(token) * math.log2(max(alphabet, 1))
    compressed = len(zlib.compress(token.encode("utf-8", "surrogatepass"), 9))
    by_compression = max(0, compressed - _ZLIB_OVERHEAD_BYTES) * 8.0
    return min(by_alphabet, by_compression)


def check_token_strength(token: str) -> str | None:
    """Why ``token`` is too weak to be stored as an unsalted hash, or None if it is not."""
    bits = estimated_bits(token)
    if bits < MIN_TOKEN_BITS:
        return (
            f"a custom token needs at least {MIN_TOKEN_BITS} bits of entropy, this one has "
            f"about {bits:.0f} (e.g. 64 hex digits from `openssl rand -hex 32`; or leave "
            "out --token to have one generated)"
        )
    return None


def check_token_format(token: str) -> str | None:
    """Why ``token`` is unfit to be registered, or None if it is fine."""
    if len(token) < MIN_TOKEN_LENGTH:
        return f"a token needs at least {MIN_TOKEN_LENGTH} characters"
    if len(token) > MAX_TOKEN_LENGTH:
        return f"a token has at most {MAX_TOKEN_LENGTH} characters"
    if not token.isascii() or not token.isprintable() or " " in token:
        return "a token is printable ASCII without spaces"
    return check_token_strength(token)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None.

    Only printable ASCII can be a token (see :func:`check_token_format`). aiohttp decodes
    header bytes that are not UTF-8 to lone surrogates (``surrogateescape``), which cannot
    even be hashed: such a header is no token, answered 401 like any other."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return presented_token(token.strip())


def presented_token(value: object) -> str | None:
    """``value`` if it can be a device token as a client presents it (a string of 1 to
    :data:`MAX_TOKEN_LENGTH` printable ASCII characters: in a header, or in a batch's
    ``tokens``), else None. Anything else is no token, answered like an unknown one."""
    if type(value) is not str or not value or len(value) > MAX_TOKEN_LENGTH:
        return None
    if not value.isascii() or not value.isprintable():
        return None
    return value
