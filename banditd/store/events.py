"""The event log: feedback events appended in batches under the router's append lock, and read
back in id order by every replica."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from operator import attrgetter
from typing import Any

import numpy as np
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from banditd.domain import MAX_SIGNALS_PER_DECISION, FeedbackEvent
from banditd.errors import AlreadyExists, Recorded
from banditd.store.budget_leases import settle_costs
from banditd.store.engine import EVENTS_CHANNEL, Database
from banditd.store.event_rows import event_row, insert_new_events
from banditd.store.finite import checked
from banditd.store.idempotency import answer_recorded
from banditd.store.models import decisions, feedback_events
from banditd.store.pending import refuse_taken, take_parked
from banditd.store.usage import lock_router, with_usage

# A decision's effective reward from its real rewards in arrival order (a pure domain rule,
# given by the caller: banditd.domain.signal_rule).
Combine = Callable[[Sequence[float]], float]


@dataclass(frozen=True)
class AppendedBatch:
    """What ``EventLog.append`` committed: the positions (in its input) added, the events as
    stored, in id order, and the router's newest event id before them (None when unknown:
    read the log instead); ``duplicates``: the positions not added, each with why (its decision
    has feedback, its preference or its most signals; Recorded: it has this very event, by its
    idempotency key); ``costs``: by the position of each later signal added, its decision's
    cost in the log with it (the cost it reported, else the one its decision had; a first
    signal's is its own ``cost_usd``)."""

    positions: list[int]
    events: list[FeedbackEvent]
    follows: int | None
    duplicates: dict[int, AlreadyExists] = field(default_factory=dict)
    costs: dict[int, float] = field(default_factory=dict)


class EventLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def append(
        self,
        events: Sequence[FeedbackEvent],
        combine: Combine | None = None,
        joined_at: float | None = None,
    ) -> AppendedBatch:
        """Commit a batch of one router's events in one transaction (one event is a batch of
        one), each with its decision's usage folded in. With ``combine`` None a decision takes
        one event: events of decisions with feedback already, or repeated in the batch, are
        refused. Otherwise each event becomes its decision's next signal, up to the maximum,
        its effective reward given by ``combine``. The router's newest event id before the
        batch lets a caller that has applied the log up to it apply the batch as returned.

        ``joined_at``: the events are parked feedback's (``banditd.store.pending``), joined
        now; an event whose parked row another join has taken is left out (neither added nor
        refused: that join applied it).

        The costs the events report settle their decisions' budget charges in the same
        transaction: an event is never logged with its cost left out of its budget."""
        if not events:
            return AppendedBatch([], [], None)
        router_id = events[0].router_id
        async with self.db.transaction() as conn:
            taken: set[str] = set()
            if joined_at is not None:  # before the append lock (see take_parked)
                taken = await take_parked(conn, [e.decision_id for e in events], joined_at)
            await _begin_append(conn, router_id)
            # Read under the append lock: no event of the router commits between it and ours.
            head = await _head(conn, router_id)
            if joined_at is None:
                return await _append(conn, events, combine, head)
            return await _append_joined(conn, events, combine, head, taken, joined_at)

    async def after(
        self, router_id: int, after_id: int, limit: int = 10_000
    ) -> list[FeedbackEvent]:
        """The router's events after ``after_id``, in id order, at most ``limit``."""
        async with self.db.transaction() as conn:
            rows = (
                await conn.execute(
                    select(*_EVENT_COLUMNS)
                    .select_from(_WITH_DECISION)
                    .where(*_after(router_id, after_id))
                    .order_by(feedback_events.c.id)
                    .limit(limit)
                )
            ).all()
        # By position (FeedbackEvent's field order): several times faster than by name.
        return [
            FeedbackEvent(r[0], r[1], r[2], r[3], np.frombuffer(r[4], dtype="<f8").copy(), *r[5:])
            for r in rows
        ]

    async def head(self, router_id: int) -> int:
        """Id of the router's newest event (0 for none)."""
        async with self.db.transaction() as conn:
            return await _head(conn, router_id)

    async def first_offline_context(self, router_id: int, since_version: int) -> str | None:
        """The context version of the router's first offline event decided at router version
        ``since_version`` or later: what built x of its first warm start since its context last
        changed (None: there is none, or it logged no version)."""
        fe = feedback_events.c
        async with self.db.transaction() as conn:
            version: str | None = await conn.scalar(
                select(fe.context_version)
                .where(
                    fe.router_id == router_id,
                    fe.offline,
                    func.coalesce(fe.decision_version, 0) >= since_version,
                )
                .order_by(fe.id)
                .limit(1)
            )
        return version

    async def offline_decisions(self, router_id: int) -> set[str]:
        """The decision ids of the router's offline (warm-start) events."""
        fe = feedback_events.c
        async with self.db.transaction() as conn:
            rows = await conn.scalars(
                select(fe.decision_id).where(fe.router_id == router_id, fe.offline)
            )
            return set(rows)

    async def count_after(self, router_id: int, after_id: int) -> int:
        async with self.db.transaction() as conn:
            return int(
                await conn.scalar(select(func.count()).where(*_after(router_id, after_id))) or 0
            )


def _reported_costs(
    events: Sequence[FeedbackEvent], batch: AppendedBatch
) -> list[tuple[str, float]]:
    """(decision id, USD) of each cost the batch reports: a first signal's as stored (with a
    usage report's folded in), a later signal's as sent (its decision's cost: a total)."""
    firsts = [
        (e.decision_id, e.cost_usd) for e in batch.events if e.signal == 0 and e.cost_reported
    ]
    later = [
        (events[i].decision_id, events[i].cost_usd) for i in batch.costs if events[i].cost_reported
    ]
    return firsts + later


def _after(router_id: int, after_id: int) -> tuple[Any, ...]:
    return feedback_events.c.router_id == router_id, feedback_events.c.id > after_id


async def _head(conn: AsyncConnection, router_id: int) -> int:
    return int(
        await conn.scalar(
            select(func.max(feedback_events.c.id)).where(feedback_events.c.router_id == router_id)
        )
        or 0
    )


async def _begin_append(conn: AsyncConnection, router_id: int) -> None:
    """Start a transaction that appends a router's events.

    It serialises the router's event writers until commit (row lock; SQLite has one writer
    anyway): ids come from one sequence, so without it two replicas could commit ids 7 and 6 in
    that order and a replica tailing the log by id would skip 6. On Postgres it also queues a
    NOTIFY, delivered at commit, that wakes the other replicas' tail.
    """
    await lock_router(conn, router_id)
    if conn.dialect.name == "postgresql":
        await conn.execute(select(func.pg_notify(EVENTS_CHANNEL, str(router_id))))


async def _append(
    conn: AsyncConnection, events: Sequence[FeedbackEvent], combine: Combine | None, head: int
) -> AppendedBatch:
    if combine is None:
        batch = await _append_firsts(conn, events, head)
    else:
        batch = await _append_signals(conn, events, combine, head)
    await answer_recorded(conn, events, batch.duplicates)
    await settle_costs(conn, _reported_costs(events, batch))
    return batch


async def _append_joined(
    conn: AsyncConnection,
    events: Sequence[FeedbackEvent],
    combine: Combine | None,
    head: int,
    taken: set[str],
    joined_at: float,
) -> AppendedBatch:
    """Parked feedback's events: only those of the decisions whose parked row this
    transaction took (``taken``). A row whose event its decision has (Recorded) stays joined."""
    kept = [i for i, e in enumerate(events) if e.decision_id in taken]
    if not kept:
        return AppendedBatch([], [], head)
    batch = await _append(conn, [events[i] for i in kept], combine, head)
    refused = [p for p, exc in batch.duplicates.items() if not isinstance(exc, Recorded)]
    await refuse_taken(conn, [events[kept[p]].decision_id for p in refused], joined_at)
    return AppendedBatch(
        [kept[p] for p in batch.positions],
        batch.events,
        batch.follows,
        {kept[p]: exc for p, exc in batch.duplicates.items()},
        {kept[p]: cost for p, cost in batch.costs.items()},
    )


async def _append_firsts(
    conn: AsyncConnection, events: Sequence[FeedbackEvent], head: int
) -> AppendedBatch:
    """Each decision's one event (the database skips those of decisions with feedback)."""
    events = await with_usage(conn, events)
    ids = {
        decision_id: int(event_id)
        for event_id, decision_id in await insert_new_events(conn, events)
    }
    positions: list[int] = []
    stored: list[FeedbackEvent] = []
    duplicates: dict[int, AlreadyExists] = {}
    for i, e in enumerate(events):
        event_id = ids.pop(e.decision_id, None)
        if event_id is None:  # a repeat in the batch is not added either
            why = f"decision {e.decision_id} already has feedback (one event per decision)"
            duplicates[i] = AlreadyExists(why)
            continue
        positions.append(i)
        stored.append(_with_id(e, event_id))
    # Which of a decision's repeats the database kept is its choice: read them back.
    repeated = len({e.decision_id for e in events}) != len(events)
    return AppendedBatch(positions, _by_id(stored), None if repeated else head, duplicates)


async def _append_signals(
    conn: AsyncConnection, events: Sequence[FeedbackEvent], combine: Combine, head: int
) -> AppendedBatch:
    positions: list[int] = []
    duplicates: dict[int, AlreadyExists] = {}
    signals: list[FeedbackEvent] = []
    rows: list[dict[str, Any]] = []
    costs: dict[int, float] = {}
    for i, e in enumerate(events):
        try:
            signal, cost = await _as_next_signal(conn, e, combine, rows)
        except AlreadyExists as exc:
            duplicates[i] = exc
            continue
        if cost is not None:
            costs[i] = cost
        (signal,) = await with_usage(conn, [signal])
        rows.append(checked(event_row(signal)))
        signals.append(signal)
        positions.append(i)
    if not rows:
        return AppendedBatch([], [], head, duplicates)
    result = await conn.execute(
        insert(feedback_events).returning(feedback_events.c.id, sort_by_parameter_order=True),
        rows,
    )
    ids_in_order = [int(event_id) for event_id in result.scalars().all()]
    stored = [_with_id(e, i) for e, i in zip(signals, ids_in_order, strict=True)]
    return AppendedBatch(positions, _by_id(stored), head, duplicates, costs)


# The columns of feedback_events that hold FeedbackEvent's fields, in the fields' order. An event
# logged without its featurisation (before migration 0021, or by a replica of an older banditd
# during a rolling upgrade) reads its decision's: the decision's id is its primary key.
_WITH_DECISION = feedback_events.outerjoin(
    decisions, decisions.c.id == feedback_events.c.decision_id
)
_EVENT_COLUMNS = tuple(
    func.coalesce(feedback_events.c.context_version, decisions.c.context_version)
    if f.name == "context_version"
    else feedback_events.c["id" if f.name == "event_id" else f.name]
    for f in fields(FeedbackEvent)
)


# FeedbackEvent's fields after event_id, read in one call (see _with_id).
_AFTER_ID = attrgetter(*(f.name for f in fields(FeedbackEvent)[1:]))


def _with_id(e: FeedbackEvent, event_id: int) -> FeedbackEvent:
    """``replace(e, event_id=event_id)`` at half the cost (once per event of a batch)."""
    return FeedbackEvent(event_id, *_AFTER_ID(e))


def _by_id(events: list[FeedbackEvent]) -> list[FeedbackEvent]:
    return sorted(events, key=lambda e: e.event_id)


async def _as_next_signal(
    conn: AsyncConnection,
    event: FeedbackEvent,
    combine: Combine,
    pending: Sequence[dict[str, Any]] = (),
) -> tuple[FeedbackEvent, float | None]:
    """The event as its decision's next signal, with the change it makes to the effective
    reward (``combine`` of the real rewards) and the settled cost; unchanged if it is the first.
    And the decision's cost with it (None for a first signal: its own).

    Real signals replace a default reward: the default counts only while nothing else came.
    ``pending``: rows of this transaction not inserted yet. Caller holds the append lock.
    """
    fe = feedback_events.c
    stored = (
        await conn.execute(
            select(fe.reward, fe.defaulted, fe.cost_usd, fe.effective_reward, fe.idempotency_key)
            .where(fe.decision_id == event.decision_id)
            .order_by(fe.signal)
        )
    ).all()
    earlier = [(r.reward, r.defaulted, r.cost_usd, r.effective_reward) for r in stored] + [
        (p["reward"], p["defaulted"], p["cost_usd"], p["effective_reward"])
        for p in pending
        if p["decision_id"] == event.decision_id
    ]
    if not earlier:
        return replace(event, signal=0, effective_reward=event.reward, reward_delta=None), None
    key = event.idempotency_key
    if key is not None and key in [r.idempotency_key for r in stored] + [
        p["idempotency_key"] for p in pending if p["decision_id"] == event.decision_id
    ]:  # a resend, answered as the event it repeats (``_append``)
        raise AlreadyExists(f"decision {event.decision_id} already has this idempotency_key")
    if event.challenger is not None:  # a compared decision takes one preference, whatever combine
        raise AlreadyExists(f"decision {event.decision_id} already has its preference")
    if len(earlier) >= MAX_SIGNALS_PER_DECISION:
        raise AlreadyExists(
            f"decision {event.decision_id} has {MAX_SIGNALS_PER_DECISION} signals, the maximum"
        )
    real = [reward for reward, defaulted, _, _ in earlier if not defaulted]
    previous = earlier[-1][3] if earlier[-1][3] is not None else earlier[-1][0]
    effective = combine([*real, event.reward])
    settled = sum(cost for _, _, cost, _ in earlier)
    later = replace(
        event,
        signal=len(earlier),
        effective_reward=effective,
        reward_delta=effective - previous,
        cost_usd=event.cost_usd - settled if event.cost_reported else 0.0,
    )
    return later, event.cost_usd if event.cost_reported else settled
