"""Who is calling: the API key a call presents, looked up in the key store (a lookup trusted for
``BANDITD_AUTH_CACHE_SECONDS``), as a ``Principal`` that banditd.edge.auth then authorizes."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
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
    (so a revocation reaches every replica within that time); at most ``max_keys`` lookups are
    kept, the least recently used going first, and concurrent lookups of one key share one read.
    While the store cannot be reached, a key's last lookup stands (Select keeps answering through
    a database outage) and is tried again after ``cache_seconds``; a key never looked up is
    UNAVAILABLE."""

    def __init__(
        self,
        store: KeyStore,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_CACHED_KEYS,
    ) -> None:
        self._store = store
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._max_keys = max_keys
        self._cache: OrderedDict[str, tuple[float, StoredKey | None]] = OrderedDict()  # LRU first
        self._reading: dict[str, asyncio.Task[StoredKey | None]] = {}

    async def _lookup(self, key_id: str) -> StoredKey | None:
        hit = self._cache.get(key_id)
        if hit is not None and self._clock() - hit[0] < self._cache_seconds:
            self._cache.move_to_end(key_id)
            return hit[1]
        # One read of a key at a time: calls that come while it is on its way wait for its answer
        # (a burst with a new key is one query); reads of different keys do not wait on each other.
        reading = self._reading.get(key_id)
        if reading is None:
            reading = self._reading[key_id] = asyncio.create_task(self._read(key_id, hit))
            reading.add_done_callback(partial(self._landed, key_id))
        return await asyncio.shield(reading)  # a caller gone does not cancel the others' read

    async def _read(
        self, key_id: str, hit: tuple[float, StoredKey | None] | None
    ) -> StoredKey | None:
        now = self._clock()
        try:
            stored = await self._store.get(key_id)
        except Unavailable as exc:
            if hit is None:
                raise
            log.warning("auth_lookup_failed", key_id=key_id, error=exc.message)
            stored = hit[1]
        if self._cache_seconds > 0:
            self._cache[key_id] = (now, stored)
            self._cache.move_to_end(key_id)
            if len(self._cache) > self._max_keys:  # full: forget the least recently used key
                self._cache.popitem(last=False)
        return stored

    def _landed(self, key_id: str, reading: asyncio.Task[StoredKey | None]) -> None:
        del self._reading[key_id]
        if not reading.cancelled():
            reading.exception()  # seen: one that every caller left is not logged as unretrieved

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
