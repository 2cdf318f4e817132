"""Budget leases and charges: the slices of a period's budget replicas hold, and what each
decision reserves under them (banditd.store.budgets holds the ledger they draw on).

Every grant of money to a replica is one atomic UPDATE of the period's ledger row that keeps
spent + leased <= limit, so however many replicas lease concurrently none can be granted money
another holds. A lease's use is the sum of the charges (decisions) recorded under it; a charge
is only recorded while its lease is open (the lease row is share-locked for it), and closing a
lease (returned by its holder, or expired because its holder died) moves exactly that sum from
``leased`` to ``spent`` and gives the rest back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, case, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from banditd.store.budget_tables import budget_charges, budget_leases, budget_ledger
from banditd.store.engine import Database, insert_ignoring_duplicates, write_first
from banditd.store.feedback_decisions import among


@dataclass(frozen=True)
class Charge:
    """What one decision reserves from one budget. lease_id None: beyond the budget."""

    decision_id: str
    budget_id: int
    period_start: float
    lease_id: int | None
    expected_cost_usd: float
    created_at: float


def _least(a: Any, b: Any) -> Any:
    return case((a < b, a), else_=b)


def _greatest(a: Any, b: Any) -> Any:
    return case((a > b, a), else_=b)


class Leases:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock

    async def take(
        self,
        budget_id: int,
        start: float,
        lease_id: int | None,
        *,
        holder: str,
        need_usd: float,
        fraction: float,
        expires_at: float,
    ) -> tuple[int | None, float]:
        """Grant a slice of the period's unleased budget: max(need, fraction x unleased), at most
        what is unleased. Tops up ``lease_id`` when given and still open, else opens a lease.
        Returns (lease id, amount granted); (lease_id or None, 0) when nothing is left."""
        unleased = (
            budget_ledger.c.limit_usd - budget_ledger.c.spent_usd - budget_ledger.c.leased_usd
        )
        grant = _least(unleased, _greatest(literal(need_usd), unleased * fraction))
        async with self.db.transaction() as conn:
            if lease_id is not None:
                await write_first(conn, budget_leases.c.closed_at, budget_leases.c.id == lease_id)
                open_ = await conn.scalar(
                    select(budget_leases.c.id)
                    .where(budget_leases.c.id == lease_id, budget_leases.c.closed_at.is_(None))
                    .with_for_update()
                )
                if open_ is None:
                    lease_id = None
            # The one atomic statement: both SET expressions read the row as it was.
            granted = (
                await conn.execute(
                    update(budget_ledger)
                    .where(
                        budget_ledger.c.budget_id == budget_id,
                        budget_ledger.c.period_start == start,
                        unleased > 0,
                    )
                    .values(leased_usd=budget_ledger.c.leased_usd + grant, last_grant_usd=grant)
                    .returning(budget_ledger.c.last_grant_usd)
                )
            ).scalar()
            if granted is None or granted <= 0:
                return lease_id, 0.0
            now = self._clock()
            if lease_id is None:
                lease_id = (
                    await conn.execute(
                        budget_leases.insert()
                        .values(
                            budget_id=budget_id,
                            period_start=start,
                            holder=holder,
                            granted_usd=granted,
                            expires_at=expires_at,
                            created_at=now,
                        )
                        .returning(budget_leases.c.id)
                    )
                ).scalar_one()
            else:
                await conn.execute(
                    update(budget_leases)
                    .where(budget_leases.c.id == lease_id)
                    .values(
                        granted_usd=budget_leases.c.granted_usd + granted, expires_at=expires_at
                    )
                )
            return int(lease_id), float(granted)

    async def renew(self, lease_id: int, expires_at: float) -> bool:
        """Extend an open lease; False when it was closed (expired and reaped)."""
        async with self.db.transaction() as conn:
            result = await conn.execute(
                update(budget_leases)
                .where(budget_leases.c.id == lease_id, budget_leases.c.closed_at.is_(None))
                .values(expires_at=expires_at)
            )
            return bool(result.rowcount)

    async def close(self, lease_id: int, now: float) -> float | None:
        """Close an open lease: its charges become spent, the rest returns to the budget.
        Returns what it used, or None when it was closed already."""
        async with self.db.transaction() as conn:
            return await _close(conn, lease_id, now)

    async def reap(self, now: float, limit: int = 100) -> int:
        """Close leases past their expiry (their holder died or stalled); how many."""
        async with self.db.transaction() as conn:
            expired = (
                (
                    await conn.execute(
                        select(budget_leases.c.id)
                        .where(
                            budget_leases.c.closed_at.is_(None), budget_leases.c.expires_at < now
                        )
                        .limit(limit)
                    )
                )
                .scalars()
                .all()
            )
        closed = 0
        for lease_id in expired:
            async with self.db.transaction() as conn:
                closed += await _close(conn, int(lease_id), now, expired_before=now) is not None
        return closed

    async def add_charges(self, charges: Sequence[Charge]) -> set[int]:
        """Record charges in one transaction: each under its lease while that lease is open
        (share-locked until commit, so it cannot close in between), over-budget ones straight
        into the ledger's spend. Returns the leases found closed: no charge of a decision with a
        charge under one of them was kept."""
        lease_ids = sorted({c.lease_id for c in charges if c.lease_id is not None})
        async with self.db.transaction() as conn:
            open_ids: set[int] = set()
            if lease_ids:
                await write_first(
                    conn, budget_leases.c.closed_at, budget_leases.c.id.in_(lease_ids)
                )
                open_ids = {
                    int(i)
                    for i in (
                        await conn.execute(
                            select(budget_leases.c.id)
                            .where(
                                budget_leases.c.id.in_(lease_ids),
                                budget_leases.c.closed_at.is_(None),
                            )
                            .with_for_update(read=True)
                        )
                    ).scalars()
                }
            # A decision with a charge under a closed lease is refused: none of its charges count.
            refused = {c.decision_id for c in charges if c.lease_id not in (None, *open_ids)}
            kept = [c for c in charges if c.decision_id not in refused]
            if not kept:
                return set(lease_ids) - open_ids
            rows = [
                {
                    "decision_id": c.decision_id,
                    "budget_id": c.budget_id,
                    "period_start": c.period_start,
                    "lease_id": c.lease_id,
                    "expected_cost_usd": c.expected_cost_usd,
                    "cost_usd": None,
                    "created_at": c.created_at,
                }
                for c in kept
            ]
            # Only the rows inserted now: a charge written before (a retry) is not spent again.
            insert = insert_ignoring_duplicates(conn, budget_charges).returning(
                budget_charges.c.decision_id, budget_charges.c.budget_id
            )
            inserted = {tuple(row) for row in await conn.execute(insert, rows)}
            for c in kept:
                if c.lease_id is None and (c.decision_id, c.budget_id) in inserted:
                    await _add_spend(conn, c.budget_id, c.period_start, c.expected_cost_usd)
        return set(lease_ids) - open_ids


async def settle_costs(conn: AsyncConnection, costs: Sequence[tuple[str, float]]) -> int:
    """The actual costs reported (decision id, USD), in the transaction that records them (the
    feedback event, the usage report): each decision's charges, once (the first cost reported),
    and their periods' spend move from the expected to the actual cost. Returns the charges
    settled; none for a decision without charges (no budget covered it). On SQLite the caller
    holds the write lock already."""
    first: dict[str, float] = {}
    for decision_id, cost in costs:
        first.setdefault(decision_id, cost)
    if not first:
        return 0
    rows = (
        await conn.execute(
            select(
                budget_charges.c.decision_id,
                budget_charges.c.budget_id,
                budget_charges.c.period_start,
                budget_charges.c.expected_cost_usd,
            )
            .where(among(conn, budget_charges.c.decision_id, list(first)))
            .where(budget_charges.c.cost_usd.is_(None))
            .with_for_update()
        )
    ).all()
    if not rows:
        return 0
    # One statement for the charges (executemany), one per period for the spend: a batch of
    # feedback holds its router's append lock meanwhile.
    await conn.execute(
        update(budget_charges)
        .where(
            budget_charges.c.decision_id == bindparam("decision"),
            budget_charges.c.budget_id == bindparam("budget"),
        )
        .values(cost_usd=bindparam("cost")),
        [
            {"decision": r.decision_id, "budget": r.budget_id, "cost": first[r.decision_id]}
            for r in rows
        ],
    )
    spend: dict[tuple[int, float], float] = {}
    for row in rows:
        if (cost := first[row.decision_id]) != row.expected_cost_usd:
            period = (row.budget_id, row.period_start)
            spend[period] = spend.get(period, 0.0) + cost - row.expected_cost_usd
    for (budget_id, start), usd in spend.items():
        await _add_spend(conn, budget_id, start, usd)
    return len(rows)


async def _add_spend(conn: AsyncConnection, budget_id: int, start: float, usd: float) -> None:
    await conn.execute(
        update(budget_ledger)
        .where(budget_ledger.c.budget_id == budget_id, budget_ledger.c.period_start == start)
        .values(spent_usd=budget_ledger.c.spent_usd + usd)
    )


async def _close(
    conn: AsyncConnection, lease_id: int, now: float, expired_before: float | None = None
) -> float | None:
    """Close one lease (only if still open, and expired when ``expired_before`` is given)."""
    where = [budget_leases.c.id == lease_id, budget_leases.c.closed_at.is_(None)]
    if expired_before is not None:
        where.append(budget_leases.c.expires_at < expired_before)
    # Taking the row lock first waits out any transaction still recording charges under it.
    await write_first(conn, budget_leases.c.closed_at, budget_leases.c.id == lease_id)
    lease = (
        await conn.execute(
            select(
                budget_leases.c.budget_id, budget_leases.c.period_start, budget_leases.c.granted_usd
            )
            .where(and_(*where))
            .with_for_update()
        )
    ).first()
    if lease is None:
        return None
    used = float(
        await conn.scalar(
            select(func.coalesce(func.sum(budget_charges.c.expected_cost_usd), 0.0)).where(
                budget_charges.c.lease_id == lease_id
            )
        )
        or 0.0
    )
    await conn.execute(
        update(budget_leases)
        .where(budget_leases.c.id == lease_id)
        .values(closed_at=now, used_usd=used)
    )
    await conn.execute(
        update(budget_ledger)
        .where(
            budget_ledger.c.budget_id == lease.budget_id,
            budget_ledger.c.period_start == lease.period_start,
        )
        .values(
            leased_usd=budget_ledger.c.leased_usd - lease.granted_usd,
            spent_usd=budget_ledger.c.spent_usd + used,
        )
    )
    return used
