"""Feedback waiting for its decision row (compact tokens, issue 20): parked, then joined.

A compact token does not carry x: Feedback takes it from the decision. A decision not yet
visible (its replica's group commit has not landed) leaves the feedback parked here, committed
before the call returns, once per decision id. ``banditd.flows.joiner`` moves it into the event log
when the decision appears, or marks it orphaned when none comes in time (kept, never deleted).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Text, cast, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from banditd.domain import JoinRecord
from banditd.store.decisions import decision_from_row, with_router
from banditd.store.engine import Database
from banditd.store.feedback_decisions import among, decisions_for_feedback
from banditd.store.idempotency import recorded_keys
from banditd.store.models import (
    PENDING_WAITING,
    decisions,
    feedback_events,
    feedback_pending,
    routers,
)

# A join claimed longer ago than this is taken to have died with its replica. A join that is only
# slow is still applied once: its commit takes its rows (``take_parked``) or finds them taken.
CLAIM_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Parked:
    decision_id: str
    router_id: int
    tenant: str
    request: Mapping[str, Any]  # the FeedbackInput's fields, standard JSON, but for the key
    received_at: float
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Joinable:
    """A parked feedback whose decision is visible now, claimed to be joined."""

    pending_id: int
    request: Any  # as stored: the FeedbackInput's fields; the text where it is not JSON
    received_at: float
    decision: JoinRecord
    idempotency_key: str | None = None


class PendingStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def lookup(
        self, ids: Sequence[str], known: Sequence[str] = ()
    ) -> tuple[dict[str, JoinRecord], set[str]]:
        """The join records of the visible decisions of ``ids``
        (``banditd.store.feedback_decisions``); and which of ``ids`` and ``known`` (decisions the
        caller has already) have feedback parked and not settled yet (a joined row's feedback is
        in the event log, where further signals find it; a refused or orphaned one was never
        applied)."""
        async with self.db.transaction() as conn:
            found = await decisions_for_feedback(conn, ids)
            ids = [*ids, *known]
            parked = await conn.scalars(
                select(feedback_pending.c.decision_id).where(
                    among(conn, feedback_pending.c.decision_id, ids),
                    feedback_pending.c.state.in_(PENDING_WAITING),
                )
            )
            return found, set(parked)

    async def park(self, items: Sequence[Parked]) -> tuple[set[str], dict[str, int]]:
        """Commit what can be parked; the decision ids parked (an id with feedback already,
        parked or in the event log, is not); and of the others, those whose idempotency key is
        recorded for their decision, with the id of its event (``recorded_keys``)."""
        if not items:
            return set(), {}
        ids = [p.decision_id for p in items]
        async with self.db.transaction() as conn:
            logged = set(
                await conn.scalars(
                    select(feedback_events.c.decision_id).where(
                        feedback_events.c.decision_id.in_(ids)
                    )
                )
            )
            rows = {
                p.decision_id: {
                    "decision_id": p.decision_id,
                    "router_id": p.router_id,
                    "tenant": p.tenant,
                    "request": dict(p.request),
                    "received_at": p.received_at,
                    "idempotency_key": p.idempotency_key,
                }
                for p in items
                if p.decision_id not in logged
            }
            parked: set[str] = set()
            if rows:
                dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
                stmt = (
                    dialect.insert(feedback_pending)
                    .on_conflict_do_nothing()
                    .returning(feedback_pending.c.decision_id)
                )
                parked = set((await conn.execute(stmt, list(rows.values()))).scalars())
            keyed = {
                p.decision_id: p.idempotency_key
                for p in items
                if p.decision_id not in parked and p.idempotency_key is not None
            }
            return parked, await recorded_keys(conn, keyed)

    async def claim(self, limit: int, now: float) -> list[Joinable]:
        """Parked feedback whose decision is visible now, in the order it was parked, claimed by
        this replica (state ``joining``): no other replica joins it meanwhile. Claims older than
        CLAIM_TIMEOUT_S (their replica died mid-join) are released first: back to ``pending``,
        or ``joined`` where the event is in the log (a joined event's created_at is the row's
        received_at). Each row's request is decoded on its own (``_decoded``)."""
        async with self.db.transaction() as conn:
            stale = (
                feedback_pending.c.state == "joining",
                feedback_pending.c.settled_at < now - CLAIM_TIMEOUT_S,
            )
            logged = (
                select(feedback_events.c.id)
                .where(
                    feedback_events.c.decision_id == feedback_pending.c.decision_id,
                    feedback_events.c.created_at == feedback_pending.c.received_at,
                )
                .exists()
            )
            await conn.execute(
                update(feedback_pending).where(*stale, logged).values(state="joined")
            )
            await conn.execute(update(feedback_pending).where(*stale).values(state="pending"))
            visible = (
                select(feedback_pending.c.id)
                .join(decisions, decisions.c.id == feedback_pending.c.decision_id)
                .where(feedback_pending.c.state == "pending")
                .order_by(feedback_pending.c.id)
                .limit(limit)
            )
            claimed = list(
                await conn.scalars(
                    update(feedback_pending)
                    .where(
                        feedback_pending.c.id.in_(visible.scalar_subquery()),
                        feedback_pending.c.state == "pending",
                    )
                    .values(state="joining", settled_at=now)
                    .returning(feedback_pending.c.id)
                )
            )
            if not claimed:
                return []
            rows = (
                await conn.execute(
                    with_router()
                    .add_columns(
                        feedback_pending.c.id.label("pending_id"),
                        cast(feedback_pending.c.request, Text).label("request"),
                        feedback_pending.c.received_at,
                        feedback_pending.c.idempotency_key,
                    )
                    .join(feedback_pending, feedback_pending.c.decision_id == decisions.c.id)
                    .where(feedback_pending.c.id.in_(claimed))
                    .order_by(feedback_pending.c.id)
                )
            ).all()
        return [
            Joinable(
                row.pending_id,
                _decoded(row.request),
                row.received_at,
                decision_from_row(row).join_record(),
                row.idempotency_key,
            )
            for row in rows
        ]

    async def settle(self, pending_ids: Sequence[int], state: str, now: float) -> None:
        """Mark claimed rows joined or refused, or release them (``pending``) to be tried again."""
        if not pending_ids:
            return
        async with self.db.transaction() as conn:
            await conn.execute(
                update(feedback_pending)
                .where(
                    feedback_pending.c.id.in_(pending_ids), feedback_pending.c.state == "joining"
                )
                .values(state=state, settled_at=now)
            )

    async def orphan(self, received_before: float, now: float) -> list[tuple[str, str]]:
        """Mark orphaned the parked rows received before ``received_before`` whose decision never
        appeared; (tenant, router) of each row this call marked (another replica's are not)."""
        async with self.db.transaction() as conn:
            stale = select(feedback_pending.c.id).where(
                feedback_pending.c.state == "pending",
                feedback_pending.c.received_at < received_before,
                ~select(decisions.c.id)
                .where(decisions.c.id == feedback_pending.c.decision_id)
                .exists(),
            )
            marked = (
                await conn.execute(
                    update(feedback_pending)
                    .where(feedback_pending.c.id.in_(stale.scalar_subquery()))
                    .where(feedback_pending.c.state == "pending")
                    .values(state="orphaned", settled_at=now)
                    .returning(feedback_pending.c.tenant, feedback_pending.c.router_id)
                )
            ).all()
            if not marked:
                return []
            names = dict(
                (
                    await conn.execute(
                        select(routers.c.id, routers.c.name).where(
                            routers.c.id.in_({r.router_id for r in marked})
                        )
                    )
                ).all()
            )
        return [(r.tenant, str(names.get(r.router_id, ""))) for r in marked]

    async def count(self, state: str) -> int:
        """Parked rows in ``state`` (statistics and tests)."""
        async with self.db.transaction() as conn:
            rows = await conn.scalars(
                select(feedback_pending.c.id).where(feedback_pending.c.state == state)
            )
            return len(list(rows))


async def take_parked(conn: AsyncConnection, decision_ids: Sequence[str], now: float) -> set[str]:
    """Mark joined, in the transaction that appends their events, the rows of these decisions
    still waiting (claimed, or released meanwhile); the decision ids marked. A join appends only
    the events of the rows it marked: of two joiners holding one row (the first's claim taken
    for dead), only the one whose commit comes first applies it, whatever the timing.

    Taken before the router's append lock: a claim that has just released a row waits for the
    router's row (on Postgres, its second update of the row checks the row's foreign key), so
    taking the row under that lock could deadlock with it."""
    marked = await conn.scalars(
        update(feedback_pending)
        .where(
            among(conn, feedback_pending.c.decision_id, decision_ids),
            feedback_pending.c.state.in_(PENDING_WAITING),
        )
        .values(state="joined", settled_at=now)
        .returning(feedback_pending.c.decision_id)
    )
    return set(marked)


async def refuse_taken(conn: AsyncConnection, decision_ids: Sequence[str], now: float) -> None:
    """Mark refused the rows ``take_parked`` marked whose event the log refused (the decision
    has feedback, its preference or its most signals), in the same transaction."""
    if decision_ids:
        await conn.execute(
            update(feedback_pending)
            .where(among(conn, feedback_pending.c.decision_id, decision_ids))
            .values(state="refused", settled_at=now)
        )


def _decoded(text: str) -> Any:
    """A parked request read as text, decoded row by row: a row that is not JSON (SQLite does
    not check) is the join's to refuse, not an error that fails every claim."""
    try:
        return json.loads(text)
    except ValueError:
        return text
