"""Operators in the alert store: authentication of alert-API requests, and the
administration steps ``harstream operators`` (and the demo) take.

The thin async shell around :mod:`services.common.operators`: parse the ``Authorization``
header, look the operator up (by key id or name) and verify, in a worker thread (store calls
block; scrypt takes ~70 ms of CPU). Nothing is cached: a revoked operator or a rotated key is
refused from the next request on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from pydantic import SecretStr

from services.alerting.store import OperatorStore
from services.common.operators import (
    ApiKeyCredential,
    Credential,
    Identity,
    OperatorRecord,
    Role,
    authenticate,
    check_password,
    dummy_password_hash,
    generate_api_key,
    hash_password,
    new_operator,
    parse_authorization,
)

#: Password checks at once: each scrypt takes 32 MiB and a core for ~70 ms, so a burst of
#: Basic requests queues here instead of taking the process's memory or every thread.
PASSWORD_CHECKS = 2


class Authenticator:
    def __init__(self, store: OperatorStore, password_checks: int = PASSWORD_CHECKS) -> None:
        self._store = store
        self._password_slots = asyncio.Semaphore(password_checks)

    async def prepare(self) -> None:
        """Compute the dummy hash now, so the first unknown name costs what later ones do."""
        await asyncio.to_thread(dummy_password_hash)

    async def authenticate(
        self, authorization: str | None, before_hashing: Callable[[], None] = lambda: None
    ) -> Identity | None:
        """The operator an ``Authorization`` header proves, or None (answer 401).
        :class:`~services.alerting.store.StoreError` if the store cannot answer.

        ``before_hashing`` is called once a password check has its slot, just before the
        scrypt: whatever it raises is raised instead (the failed-authentication limit, so
        guesses queued behind a flood's first ones never cost a hash)."""
        credential = parse_authorization(authorization)
        if credential is None:
            return None
        if isinstance(credential, ApiKeyCredential):
            return await asyncio.to_thread(self._check, credential)
        async with self._password_slots:
            before_hashing()
            return await asyncio.to_thread(self._check, credential)

    def _check(self, credential: Credential) -> Identity | None:
        if isinstance(credential, ApiKeyCredential):
            record = self._store.operator_by_key(credential.key_id)
        else:
            record = self._store.operator(credential.name)
        return authenticate(credential, record)


def create_operator(
    store: OperatorStore, name: str, role: Role, password: str | None = None
) -> tuple[OperatorRecord, SecretStr]:
    """Store a new operator; its API key is returned here and never again."""
    record, key = new_operator(name, role, time.time(), password)
    store.add_operator(record)
    return record, key


def rotate_key(store: OperatorStore, name: str) -> tuple[OperatorRecord, SecretStr]:
    """A new API key for ``name``; the old one is refused from the commit on."""
    key = generate_api_key()
    return store.set_operator_key(name, key.key_id, key.key_hash, time.time()), key.key


def set_password(store: OperatorStore, name: str, password: str | None) -> OperatorRecord:
    """Set (or, with None, remove) ``name``'s password."""
    hashed = hash_password(check_password(password)) if password is not None else None
    return store.set_operator_password(name, hashed, time.time())
