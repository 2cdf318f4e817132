"""Who is calling: the API key a call presents, looked up in the key store (a lookup trusted for
``BANDITD_AUTH_CACHE_SECONDS``), as a ``Principal`` that banditd.edge.auth then authorizes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from banditd.edge.keys import matches, split_key
from banditd.errors import Unauthenticated, Unavailable
from banditd.store.api_keys import KeyStore, StoredKey

log = structlog.get_logger(__name__)

AUTH_HEADER = "authorization"
MAX_CACHED_KEYS = 10_000


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant: str
    roles: frozenset[str]


class Authenticator:
    """Checks presented keys against the key store, trusting a lookup for ``cache_seconds``
    (so a revocation reaches every replica within that time). While the store cannot be
    reached, a key's last lookup stands (Select keeps answering through a database outage) and
    is tried again after ``cache_seconds``; a key never looked up is UNAVAILABLE."""

    def __init__(
        self, store: KeyStore, cache_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, StoredKey | None]] = {}

    async def _lookup(self, key_id: str) -> StoredKey | None:
        now = self._clock()
        hit = self._cache.get(key_id)
        if hit is not None and now - hit[0] < self._cache_seconds:
            return hit[1]
        try:
            stored = await self._store.get(key_id)
        except Unavailable as exc:
            if hit is None:
                raise
            log.warning("auth_lookup_failed", key_id=key_id, error=exc.message)
            stored = hit[1]
        if self._cache_seconds > 0:
            if len(self._cache) >= MAX_CACHED_KEYS:
                self._cache.clear()
            self._cache[key_id] = (now, stored)
        return stored

    async def authenticate(self, metadata: Any) -> Principal:
        values = [v for k, v in (metadata or ()) if k == AUTH_HEADER]
        if not values:
            raise Unauthenticated(
                "missing API key: send metadata 'authorization: Bearer <key>' "
                "(create one with `banditd keys create`)"
            )
        scheme, _, key = str(values[0]).strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <key>'")
        key_id, secret = split_key(key.strip())
        stored = await self._lookup(key_id)
        if stored is None or not matches(stored, secret):
            raise Unauthenticated("unknown API key")
        if stored.revoked_at is not None:
            raise Unauthenticated(f"API key {key_id} has been revoked")
        return Principal(stored.key_id, stored.tenant, stored.roles)
