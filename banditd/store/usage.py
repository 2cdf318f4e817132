"""Usage reports (issue 22): a call's measured cost, tokens, latency and error, sent by the
gateway as Feedback with usage_only. They live apart from the event log, so they never take a
decision's one rating: a decision's usage is folded into its first event (the rating, or the
default reward) when that is appended, under the same router lock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import case, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from banditd.domain import FeedbackEvent
from banditd.errors import AlreadyExists, NotFound
from banditd.store.budget_leases import settle_costs
from banditd.store.engine import Database
from banditd.store.models import decision_usage, feedback_events, routers


@dataclass(frozen=True)
class Usage:
    decision_id: str
    router_id: int
    arm: str
    cost_usd: float | None
    input_tokens: int | None
    output_tokens: int | None
    latency_ms: float | None
    first_token_ms: float | None
    energy_wh: float | None
    error: bool
    created_at: float


@dataclass(frozen=True)
class UsageTotals:
    """An arm's usage reports: count, errors, total cost, mean latency and first token (ms)."""

    reports: int
    errors: int
    cost_usd: float
    mean_latency_ms: float
    mean_first_token_ms: float


class UsageStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, usage: Usage) -> None:
        """Commit a decision's usage, its cost settling the decision's budget charges with it;
        AlreadyExists when it has usage or an event already (its rating came first: usage is
        then sent with the rating)."""
        try:
            async with self.db.transaction() as conn:
                # The appenders' lock: no event of the router commits between check and insert.
                await lock_router(conn, usage.router_id)
                rated = await conn.scalar(
                    select(func.count())
                    .select_from(feedback_events)
                    .where(feedback_events.c.decision_id == usage.decision_id)
                )
                if rated:
                    raise AlreadyExists(
                        f"decision {usage.decision_id} already has feedback: send usage with it"
                    )
                await conn.execute(insert(decision_usage).values(**usage.__dict__))
                if usage.cost_usd is not None:
                    await settle_costs(conn, [(usage.decision_id, usage.cost_usd)])
        except IntegrityError as exc:
            raise AlreadyExists(
                f"decision {usage.decision_id} already has a usage report (one per decision)"
            ) from exc

    async def totals(self, router_id: int) -> dict[str, UsageTotals]:
        u = decision_usage.c
        async with self.db.transaction() as conn:
            rows = (
                await conn.execute(
                    select(
                        u.arm,
                        func.count(),
                        func.sum(case((u.error, 1), else_=0)),
                        func.coalesce(func.sum(u.cost_usd), 0.0),
                        func.avg(u.latency_ms),
                        func.avg(u.first_token_ms),
                    )
                    .where(u.router_id == router_id)
                    .group_by(u.arm)
                )
            ).all()
        return {
            arm: UsageTotals(int(n), int(errors or 0), float(cost), float(lat or 0), float(ft or 0))
            for arm, n, errors, cost, lat, ft in rows
        }


async def lock_router(conn: AsyncConnection, router_id: int) -> None:
    """Take the router's append lock (a row lock on the router until commit): its event
    writers, and usage reports that check for an event, go in turn. NotFound when the router
    has been deleted."""
    if conn.dialect.name == "sqlite":  # the SELECTs below would run before pysqlite's BEGIN
        touched = await conn.execute(  # a write first: the write lock, and the latest snapshot
            update(routers).where(routers.c.id == router_id).values(version=routers.c.version)
        )
        found = router_id if touched.rowcount else None
    else:
        found = await conn.scalar(
            select(routers.c.id).where(routers.c.id == router_id).with_for_update()
        )
    if found is None:
        raise NotFound("the router of this decision has been deleted")


async def with_usage(conn: AsyncConnection, events: Sequence[FeedbackEvent]) -> list[FeedbackEvent]:
    """The events with their decisions' usage folded in (only first signals: later ones carry
    changes); a field the event sets wins. Caller holds the router's append lock."""
    firsts = {e.decision_id for e in events if e.signal == 0 and not e.offline}
    if not firsts:
        return list(events)
    rows = (
        await conn.execute(select(decision_usage).where(decision_usage.c.decision_id.in_(firsts)))
    ).all()
    found = {r.decision_id: r for r in rows}
    return [
        _merged(e, found[e.decision_id]) if e.signal == 0 and e.decision_id in found else e
        for e in events
    ]


def _merged(event: FeedbackEvent, usage: Any) -> FeedbackEvent:
    cost_known = event.cost_reported or usage.cost_usd is None
    return replace(
        event,
        cost_usd=event.cost_usd if cost_known else usage.cost_usd,
        cost_reported=event.cost_reported or usage.cost_usd is not None,
        input_tokens=_first(event.input_tokens, usage.input_tokens),
        output_tokens=_first(event.output_tokens, usage.output_tokens),
        latency_ms=_first(event.latency_ms, usage.latency_ms),
        energy_wh=_first(event.energy_wh, usage.energy_wh),
        error=event.error or usage.error,
    )


def _first(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value
