"""Decisions: logged in groups (with their shadow picks), found by request id, and those still
waiting for feedback when a default reward is due."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from banditd.domain import Decision, RankedArm
from banditd.domain.ceilings import HARD_MAX_CALL_USD
from banditd.store.engine import Database, bad_data, insert_ignoring_duplicates
from banditd.store.finite import checked
from banditd.store.models import (
    PENDING_WAITING,
    decisions,
    feedback_events,
    feedback_pending,
    routers,
    shadow_picks,
)

# Decision's fields read as they are from columns of the same names (decision_from_row).
_PLAIN = (
    "router_id",
    "request_id",
    "arm",
    "propensity",
    "explored",
    "expected_cost_usd",
    "policy",
    "router_version",
    "seed",
    "token",
    "context_version",
    "challenger",
    "cost_weight",
    "latency_weight",
    "energy_weight",
    "expires_at",
    "created_at",
)


def with_router() -> Select[Any]:
    """Decisions with their router's tenant and name (as ``decision_from_row`` reads them)."""
    return select(decisions, routers.c.tenant, routers.c.name.label("router_name")).join(
        routers, routers.c.id == decisions.c.router_id
    )


class Decisions:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, batch: Sequence[Decision]) -> None:
        """Log a group of decisions and their shadow picks in one transaction (a decision
        already logged, by a retried flush, is skipped). A decision whose request_id another
        replica logged first (both decided before either logged it) was given to its client
        too: it is logged without the request_id, which stays the first one's. BadData when a
        row is refused (a constraint: its router was deleted meanwhile; a value): the caller
        splits the group (store.dead_letters)."""
        rows = [checked(decision_row(d)) for d in batch]
        picks = [
            checked(
                {
                    "decision_id": d.decision_id,
                    "shadow": p.shadow,
                    "router_id": d.router_id,
                    "arm": p.arm,
                    "live_arm_probability": p.live_arm_probability,
                }
            )
            for d in batch
            for p in d.shadows
        ]
        try:
            async with self.db.transaction() as conn:
                await _insert_each(conn, rows)
                if picks:
                    await conn.execute(insert_ignoring_duplicates(conn, shadow_picks), picks)
        except IntegrityError as exc:
            raise bad_data(exc) from exc

    async def find(self, router_id: int, request_id: str) -> Decision | None:
        query = with_router().where(
            decisions.c.router_id == router_id, decisions.c.request_id == request_id
        )
        async with self.db.transaction() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else decision_from_row(row)

    async def awaiting_default(
        self, router_id: int, made_after: float, made_before: float, limit: int
    ) -> list[Decision]:
        """Decisions made in [made_after, made_before) that have no feedback event, nor
        feedback parked waiting to be joined to them (it must win over the default), oldest
        first (an index range on (router_id, created_at), not a scan of the whole log)."""
        parked = (
            select(feedback_pending.c.id)
            .where(
                feedback_pending.c.decision_id == decisions.c.id,
                feedback_pending.c.state.in_(PENDING_WAITING),
            )
            .exists()
        )
        query = (
            with_router()
            .outerjoin(feedback_events, feedback_events.c.decision_id == decisions.c.id)
            .where(
                decisions.c.router_id == router_id,
                decisions.c.created_at >= made_after,
                decisions.c.created_at < made_before,
                decisions.c.x.is_not(None),
                decisions.c.challenger.is_(None),  # a compared decision waits for a preference
                decisions.c.expected_cost_usd.between(0, HARD_MAX_CALL_USD),  # not poisoned
                feedback_events.c.id.is_(None),
                ~parked,
            )
            .order_by(decisions.c.created_at)
            .limit(limit)
        )
        async with self.db.transaction() as conn:
            return [decision_from_row(r) for r in (await conn.execute(query)).all()]


async def _insert_each(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Insert the decision rows; one skipped for another's request_id goes in without it."""
    inserted = insert_ignoring_duplicates(conn, decisions).returning(decisions.c.id)
    logged = set((await conn.execute(inserted, rows)).scalars())
    skipped = {r["id"]: r for r in rows if r["id"] not in logged and r["request_id"] is not None}
    if skipped:
        present = select(decisions.c.id).where(decisions.c.id.in_(list(skipped)))
        for decision_id in (await conn.execute(present)).scalars():
            del skipped[decision_id]  # logged before, by a flush retried after its commit
    if skipped:
        again = [{**r, "request_id": None} for r in skipped.values()]
        await conn.execute(insert_ignoring_duplicates(conn, decisions), again)


def decision_row(d: Decision) -> dict[str, Any]:
    # Spelled out (one per decision of every group commit): a dict display is the fastest.
    return {
        "id": d.decision_id,
        "router_id": d.router_id,
        "request_id": d.request_id,
        "arm": d.arm,
        "propensity": d.propensity,
        "explored": d.explored,
        "expected_cost_usd": d.expected_cost_usd,
        "policy": d.policy,
        "router_version": d.router_version,
        "seed": d.seed,
        "candidates": list(d.candidates),
        "ranking": [
            [r.arm, r.score, r.quality_score, r.expected_cost_usd]
            + (
                [r.expected_latency_ms, r.expected_energy_wh]
                if r.expected_latency_ms or r.expected_energy_wh
                else []
            )
            for r in d.ranking
        ],
        "request_metadata": dict(d.metadata),
        "token": d.token,
        "x": None if d.x is None else np.ascontiguousarray(d.x, dtype="<f8").tobytes(),
        "context_version": d.context_version,
        "challenger": d.challenger,
        "expires_at": d.expires_at,
        "created_at": d.created_at,
        "budget_price": d.budget_price,
        "budget_outcome": d.budget_outcome,
        "cost_weight": d.cost_weight,
        "latency_weight": d.latency_weight,
        "energy_weight": d.energy_weight,
    }


def decision_from_row(row: Any) -> Decision:
    """A decision from a row of ``with_router()`` (or one with the same columns)."""
    return Decision(
        decision_id=row.id,
        tenant=row.tenant,
        router=row.router_name,
        ranking=tuple(RankedArm(str(r[0]), *(float(v) for v in r[1:6])) for r in row.ranking),
        candidates=tuple(row.candidates),
        metadata=dict(row.request_metadata),
        x=None if row.x is None else np.frombuffer(row.x, dtype="<f8").copy(),
        budget_price=row.budget_price or 0.0,  # null: logged before 0018
        budget_outcome=row.budget_outcome or "",
        **{name: getattr(row, name) for name in _PLAIN},
    )
