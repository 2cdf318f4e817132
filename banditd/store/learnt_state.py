"""What routers learnt beside the event log: metadata vocabularies (value -> slot), fitted
context models (PCA blobs, by fingerprint) and posterior snapshots."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from banditd.errors import Aborted, NotFound
from banditd.store.engine import Database
from banditd.store.models import context_models, context_vocab, posterior_snapshots

SNAPSHOTS_KEPT = 2
SLOT_ATTEMPTS = 8  # replicas racing for a vocabulary slot: looks before giving up (Aborted)
# A metadata value of more UTF-8 bytes is stored as its digest: a Select's value may be 1,024
# characters, 4 KB of 4-byte ones, past the 2,704 bytes a row of a btree index (context_vocab's
# primary key) may have on Postgres.
VALUE_BYTES_KEPT = 1024
DIGEST_PREFIX = "blake2b:"


def stored_value(value: str) -> str:
    """A metadata value as context_vocab holds it: itself, or ``blake2b:`` and its digest when
    over VALUE_BYTES_KEPT bytes or itself starting with ``blake2b:`` (so a stored form is
    never another value's)."""
    data = value.encode()
    if len(data) <= VALUE_BYTES_KEPT and not value.startswith(DIGEST_PREFIX):
        return value
    return DIGEST_PREFIX + hashlib.blake2b(data, digest_size=32).hexdigest()


class LearntState:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock

    # -- metadata vocabulary -------------------------------------------------------------------

    async def vocabulary(self, router_id: int) -> dict[str, dict[str, int]]:
        """Per metadata key, the slot of each value seen, as stored (``stored_value``: a value
        stored as its digest is placed by ``assign_slot`` when met)."""
        async with self.db.transaction() as conn:
            rows = (
                await conn.execute(
                    select(context_vocab).where(context_vocab.c.router_id == router_id)
                )
            ).all()
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            out.setdefault(r.key, {})[r.value] = r.slot
        return out

    async def assign_slot(self, router_id: int, key: str, value: str, limit: int) -> int | None:
        """The stored slot of a metadata value, else the next free one below ``limit`` (stored
        now; replicas racing for a slot retry), else None."""
        stored = stored_value(value)
        # A long value stored as itself before digests keeps its slot.
        forms = sorted({stored} if value.startswith(DIGEST_PREFIX) else {stored, value})
        for _ in range(SLOT_ATTEMPTS):
            try:
                async with self.db.transaction() as conn:
                    where = (context_vocab.c.router_id == router_id, context_vocab.c.key == key)
                    slot = await conn.scalar(
                        select(context_vocab.c.slot)
                        .where(*where, context_vocab.c.value.in_(forms))
                        .order_by(context_vocab.c.slot)
                        .limit(1)
                    )
                    if slot is not None:
                        return int(slot)
                    used = int(await conn.scalar(select(func.count()).where(*where)) or 0)
                    if used >= limit:
                        return None
                    await conn.execute(
                        insert(context_vocab).values(
                            router_id=router_id, key=key, value=stored, slot=used
                        )
                    )
                    return used
            except IntegrityError:
                continue  # another replica took that slot or that value first: look again
        raise Aborted(f"metadata vocabulary of {key!r} is changing too fast; retry")

    # -- fitted context models -----------------------------------------------------------------

    async def context_model(self, router_id: int, fingerprint: str) -> bytes | None:
        async with self.db.transaction() as conn:
            data = await conn.scalar(
                select(context_models.c.data).where(
                    context_models.c.router_id == router_id,
                    context_models.c.fingerprint == fingerprint,
                )
            )
        return None if data is None else bytes(data)

    async def save_context_model(self, router_id: int, fingerprint: str, data: bytes) -> bytes:
        """Store a fitted model unless one is stored already; returns the stored one (the
        first writer's, whichever replica it was)."""
        row = dict(
            router_id=router_id, fingerprint=fingerprint, data=data, created_at=self._clock()
        )
        try:
            async with self.db.transaction() as conn:
                await conn.execute(insert(context_models), row)
            return data
        except IntegrityError:
            stored = await self.context_model(router_id, fingerprint)
            assert stored is not None
            return stored

    # -- posterior snapshots -------------------------------------------------------------------

    async def latest_snapshot(self, router_id: int) -> tuple[bytes, str | None] | None:
        """The newest snapshot's posterior bytes and breaker state (JSON; None before 0009)."""
        async with self.db.transaction() as conn:
            row = (
                await conn.execute(
                    select(posterior_snapshots.c.data, posterior_snapshots.c.health)
                    .where(posterior_snapshots.c.router_id == router_id)
                    .order_by(posterior_snapshots.c.id.desc())
                    .limit(1)
                )
            ).first()
        return None if row is None else (bytes(row.data), row.health)

    async def newest_snapshot_event_id(self, router_id: int) -> int | None:
        """The last event id of the router's newest snapshot (by any replica), None if none."""
        async with self.db.transaction() as conn:
            return (
                await conn.execute(
                    select(posterior_snapshots.c.last_event_id)
                    .where(posterior_snapshots.c.router_id == router_id)
                    .order_by(posterior_snapshots.c.id.desc())
                    .limit(1)
                )
            ).scalar()

    async def write_snapshot(
        self, router_id: int, last_event_id: int, data: bytes, health: str | None = None
    ) -> None:
        """Store a snapshot and drop all but the newest few of the router's snapshots.

        Errors: NotFound where the router is gone (another replica deleted it)."""
        newest = (
            select(posterior_snapshots.c.id)
            .where(posterior_snapshots.c.router_id == router_id)
            .order_by(posterior_snapshots.c.id.desc())
        )
        row = {"router_id": router_id, "last_event_id": last_event_id, "data": data}
        try:
            async with self.db.transaction() as conn:
                await conn.execute(
                    insert(posterior_snapshots).values(
                        **row, created_at=self._clock(), health=health
                    )
                )
                kept = (await conn.execute(newest.limit(SNAPSHOTS_KEPT))).scalars().all()
                await conn.execute(
                    delete(posterior_snapshots).where(
                        posterior_snapshots.c.router_id == router_id,
                        posterior_snapshots.c.id.not_in(kept),
                    )
                )
        except IntegrityError as exc:  # a snapshot row's one reference: its router
            raise NotFound(f"router {router_id} is deleted: its snapshot is not kept") from exc
