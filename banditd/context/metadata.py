"""Request metadata as context: one-hot features per declared key, a vocabulary kept per router.

A router declares metadata keys (``metadata_keys``: the calling app, route, task, user tier) and a
width per key (``metadata_slots``). Each key owns ``metadata_slots`` positions of x:

- the first ``own_slots`` values ever seen for a key get one position each, in the order the
  router first saw them (its vocabulary);
- later values share the last ``metadata_slots - own_slots`` positions, chosen by a keyed blake2b
  hash of the value (stable across processes, unlike Python's salted ``hash``);
- a request without the key, or with an empty value, sets none of them.

The vocabulary is persisted with the router (table ``context_vocab``, one row per key and value,
unique per slot), so every replica and every restart maps a value to the same position: a replica
that meets a value it has not cached asks the store, which returns the slot another replica
assigned or assigns the next free one. Assignment is the only write on the Select path, and it
happens once per new value and router (after the vocabulary is full, never: a full key is cached
as full).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator, Mapping
from typing import Protocol

import numpy as np

from banditd.domain import FloatArray, RouterSpec


def own_slots(metadata_slots: int) -> int:
    """Positions per key given to individual values; the rest (a quarter, at least one) are
    shared by hashing."""
    return metadata_slots - max(1, metadata_slots // 4)


def hashed_slot(key: str, value: str, metadata_slots: int) -> int:
    """The shared position of a value past the vocabulary bound."""
    first = own_slots(metadata_slots)
    digest = hashlib.blake2b(f"{key}\x00{value}".encode(), digest_size=8).digest()
    return first + int.from_bytes(digest, "little") % (metadata_slots - first)


class VocabularyStore(Protocol):
    """Where a router's vocabulary is kept (the database; a dict in replay)."""

    async def assign(self, key: str, value: str, limit: int) -> int | None:
        """The slot of ``value`` under ``key``: the stored one, else the next free one below
        ``limit`` (stored now), else None (the key's vocabulary is full)."""
        ...


class MemoryVocabularyStore:
    """A vocabulary store in a dict: replay, and tests."""

    def __init__(self) -> None:
        self.slots: dict[str, dict[str, int]] = {}

    async def assign(self, key: str, value: str, limit: int) -> int | None:
        return self.assign_now(key, value, limit)

    def assign_now(self, key: str, value: str, limit: int) -> int | None:
        known = self.slots.setdefault(key, {})
        if value in known:
            return known[value]
        if len(known) >= limit:
            return None
        known[value] = len(known)
        return known[value]


class MetadataFeatures:
    """The metadata part of x for one router: shape (len(keys) * metadata_slots,)."""

    def __init__(
        self,
        spec: RouterSpec,
        store: VocabularyStore,
        known: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        self.keys = spec.metadata_keys
        self.slots = spec.metadata_slots
        self.limit = own_slots(spec.metadata_slots)
        self.store = store
        self.vocab: dict[str, dict[str, int]] = {k: {} for k in self.keys}
        self.full: set[str] = set()
        # One store call at a time: concurrent Selects meeting new values would race each other
        # for the next free slot, and one that lost every retry was ABORTED (a burst of new
        # values on Postgres); only other replicas' assignments are raced for now.
        self._assigning = asyncio.Lock()
        for key, values in (known or {}).items():
            if key in self.vocab:
                self.vocab[key].update({v: s for v, s in values.items() if s < self.limit})
                if len(self.vocab[key]) >= self.limit:
                    self.full.add(key)

    @property
    def dim(self) -> int:
        return len(self.keys) * self.slots

    def _cached(self, key: str, value: str) -> int | None:
        slot = self.vocab[key].get(value)
        if slot is None and key in self.full:
            return hashed_slot(key, value, self.slots)
        return slot

    def unplaced(self, metadata: Mapping[str, str]) -> Iterator[tuple[str, str]]:
        """The declared keys' values in ``metadata`` that have no position yet."""
        for key in self.keys:
            value = metadata.get(key, "")
            if value and self._cached(key, value) is None:
                yield key, value

    async def resolve(self, metadata: Mapping[str, str]) -> None:
        """Give every declared key's value in ``metadata`` a position (store I/O only for
        values this process has not seen)."""
        for key, value in self.unplaced(metadata):
            async with self._assigning:
                if self._cached(key, value) is None:  # else placed while this one waited
                    self._learn(key, value, await self.store.assign(key, value, self.limit))

    def resolve_now(self, metadata: Mapping[str, str]) -> None:
        """``resolve`` when the store answers without I/O (MemoryVocabularyStore); with another
        store, nothing (``resolve`` first: a value it has not placed hashes)."""
        if isinstance(self.store, MemoryVocabularyStore):
            for key, value in self.unplaced(metadata):
                self._learn(key, value, self.store.assign_now(key, value, self.limit))

    def _learn(self, key: str, value: str, slot: int | None) -> None:
        # A stored slot past our own ones was given by a replica still on a wider
        # metadata_slots: slots are given in order, so the key is full for us (its values hash).
        if slot is None or slot >= self.limit:
            self.full.add(key)
        else:
            self.vocab[key][value] = slot

    def features(self, metadata: Mapping[str, str]) -> FloatArray:
        """One-hot per key, shape (dim,); call ``resolve`` first (an unresolved value hashes)."""
        out = np.zeros(self.dim)
        for i, key in enumerate(self.keys):
            value = metadata.get(key, "")
            if not value:
                continue
            slot = self._cached(key, value)
            if slot is None:
                slot = hashed_slot(key, value, self.slots)
            out[i * self.slots + slot] = 1.0
        return out
