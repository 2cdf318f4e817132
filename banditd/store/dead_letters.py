"""Dead letters: rows set aside so that the rest commits (issue 17).

A group commit (decisions) or a feedback batch that the database refuses as data (BadData) is
split in halves until the bad rows are found; they go to the ``dead_letters`` table with the
error, counted by ``banditd_dead_letters_total`` and logged as ``dead_letter``, and every other
row commits. Errors that are not about the data (Unavailable) stop the split: what committed
stays committed, the rest is retried later. One tenant's bad row therefore never holds back
another tenant's rows, and is never retried.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import structlog
from sqlalchemy import select

from banditd import metrics
from banditd.domain import FeedbackEvent
from banditd.errors import AlreadyExists, BadData
from banditd.store.engine import Database, insert_ignoring_duplicates
from banditd.store.events import AppendedBatch, Combine, EventLog
from banditd.store.models import dead_letters

log = structlog.get_logger(__name__)
T = TypeVar("T")
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class DeadLetter:
    kind: str  # "decision", "feedback_event" or "skipped_event"
    ref: str  # decision id, or the skipped event's id
    router_id: int | None
    tenant: str | None
    error: str
    payload: Any  # the row as it was (made into standard JSON when stored)


def plain(value: Any) -> Any:
    """``value`` as standard JSON values: non-finite floats and bytes as strings, arrays as
    lists, dataclass-like objects (and named tuples) by their fields."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else repr(float(value))
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple: as a dataclass
        return {k: plain(v) for k, v in zip(value._fields, value, strict=True)}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: plain(getattr(value, k)) for k in value.__dataclass_fields__}
    return repr(value)


def _ascii(text: str) -> str:
    """Text any database stores: NUL, non-ASCII and lone surrogates as backslash escapes."""
    return text.encode("ascii", "backslashreplace").decode("ascii")


class DeadLetters:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock

    async def add(self, letters: Sequence[DeadLetter]) -> None:
        """Store letters (a letter of the same kind and ref stored before is kept), then count
        and log each. Raises Unavailable when the database cannot be reached."""
        if not letters:
            return
        now = self._clock()
        rows = [
            {
                "kind": d.kind,
                "ref": _ascii(d.ref)[:64],
                "router_id": d.router_id,
                "tenant": d.tenant,
                "error": _ascii(d.error[:MAX_ERROR_CHARS]),
                # ASCII JSON: a NUL or a lone surrogate in a payload cannot be refused in turn.
                "payload": json.dumps(plain(d.payload), allow_nan=False, default=repr),
                "created_at": now,
            }
            for d in letters
        ]
        async with self.db.transaction() as conn:
            await conn.execute(insert_ignoring_duplicates(conn, dead_letters), rows)
        for d in letters:
            metrics.DEAD_LETTERS.labels(d.kind, d.tenant or "").inc()
            log.error(
                "dead_letter",
                kind=d.kind,
                ref=d.ref,
                router_id=d.router_id,
                tenant=d.tenant,
                error=d.error[:MAX_ERROR_CHARS],
            )

    async def add_events(
        self,
        router_id: int,
        tenant: str,
        items: Sequence[tuple[FeedbackEvent, BadData]],
        kind: str = "",
    ) -> None:
        """Letters for feedback events refused as data (kind "feedback_event", by decision id)
        or skipped by the posterior (``kind`` "skipped_event", by event id). One that cannot
        be stored either is logged, not retried."""
        letters = [
            DeadLetter(
                kind or "feedback_event",
                str(e.event_id) if kind else e.decision_id,
                router_id,
                tenant,
                exc.message,
                e,
            )
            for e, exc in items
        ]
        try:
            await self.add(letters)
        except BadData as exc:
            log.error("dead_letter_not_stored", events=len(letters), error=exc.message)

    async def list(self, router_id: int | None = None) -> list[dict[str, Any]]:
        """Stored letters, oldest first (of one router when given)."""
        query = select(dead_letters).order_by(dead_letters.c.id)
        if router_id is not None:
            query = query.where(dead_letters.c.router_id == router_id)
        async with self.db.transaction() as conn:
            return [dict(r._mapping) for r in (await conn.execute(query)).all()]


async def commit_isolating(
    items: Sequence[T],
    write: Callable[[Sequence[T]], Awaitable[Any]],
    committed: Callable[[Sequence[T], Any], None],
) -> list[tuple[T, BadData]]:
    """``write`` all items in one go; when that fails on data, each half, and so on down to the
    bad items, which are returned with their errors. ``committed(items, result)`` is called for
    every part that committed, as it commits. Any other error propagates."""
    if not items:
        return []
    try:
        result = await write(items)
    except BadData as exc:
        if len(items) == 1:
            return [(items[0], exc)]
        mid = len(items) // 2
        first = await commit_isolating(items[:mid], write, committed)
        return first + await commit_isolating(items[mid:], write, committed)
    committed(items, result)
    return []


async def append_isolating(
    event_log: EventLog,
    events: Sequence[FeedbackEvent],
    combine: Combine | None,
    joined_at: float | None = None,
) -> tuple[AppendedBatch, list[tuple[int, BadData]]]:
    """``event_log.append``, split when the database refuses it as data: the batch of the events
    that committed (positions into ``events``; ``follows`` None when it was split, so the
    caller reads the log back) and the positions refused as data, with their errors."""
    try:
        return await event_log.append(events, combine, joined_at), []
    except BadData:
        pass
    positions: list[int] = []
    stored: list[FeedbackEvent] = []
    duplicates: dict[int, AlreadyExists] = {}
    costs: dict[int, float] = {}

    def committed(part: Sequence[tuple[int, FeedbackEvent]], result: AppendedBatch) -> None:
        positions.extend(part[p][0] for p in result.positions)
        stored.extend(result.events)
        duplicates.update((part[p][0], exc) for p, exc in result.duplicates.items())
        costs.update((part[p][0], cost) for p, cost in result.costs.items())

    async def write(part: Sequence[tuple[int, FeedbackEvent]]) -> AppendedBatch:
        return await event_log.append([e for _, e in part], combine, joined_at)

    bad = await commit_isolating(list(enumerate(events)), write, committed)
    stored.sort(key=lambda e: e.event_id)
    batch = AppendedBatch(sorted(positions), stored, None, duplicates, costs)
    return batch, [(i, exc) for (i, _), exc in bad]
