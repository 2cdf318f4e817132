"""Budget storage: budgets, their ledger per period, leases on slices of it, and charges.

Every grant of money to a replica is one atomic UPDATE of the period's ledger row that keeps
spent + leased <= limit, so however many replicas lease concurrently none can be granted money
another holds. A lease's use is the sum of the charges (decisions) recorded under it; a charge is
only recorded while its lease is open (the lease row is share-locked for it), and closing a lease
(returned by its holder, or expired because its holder died) moves exactly that sum from
``leased`` to ``spent`` and gives the rest back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import and_, case, func, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from banditd.domain.budgets import BudgetSpec
from banditd.errors import Aborted, NotFound
from banditd.store.engine import Database
from banditd.store.finite import bounded_usd
from banditd.store.models import (
    budget_charges,
    budget_leases,
    budget_ledger,
    budgets,
    decisions,
    feedback_events,
    routers,
)
from banditd.store.repository import _insert_ignoring_duplicates


@dataclass(frozen=True)
class StoredBudget:
    budget_id: int
    spec: BudgetSpec


@dataclass(frozen=True)
class LedgerRow:
    """One budget's period. committed_usd: settled spend plus the charges of open leases."""

    period_start: float
    period_end: float
    limit_usd: float
    spent_usd: float
    leased_usd: float
    committed_usd: float
    alerts_fired: int

    @property
    def unleased_usd(self) -> float:
        return self.limit_usd - self.spent_usd - self.leased_usd


@dataclass(frozen=True)
class Charge:
    """What one decision reserves from one budget. lease_id None: beyond the budget."""

    decision_id: str
    budget_id: int
    period_start: float
    lease_id: int | None
    expected_cost_usd: float
    created_at: float


@dataclass(frozen=True)
class SpendLine:
    router: str
    arm: str
    metadata_value: str
    decisions: int
    spend_usd: float


def _least(a: Any, b: Any) -> Any:
    return case((a < b, a), else_=b)


def _greatest(a: Any, b: Any) -> Any:
    return case((a > b, a), else_=b)


class BudgetRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- budgets ---------------------------------------------------------------------------

    async def put_budget(
        self, spec: BudgetSpec, ledger_start: float | None
    ) -> tuple[StoredBudget, bool]:
        """Create or replace a budget (version + 1); the limit of its current period's ledger
        row (``ledger_start``) follows the new limit."""
        now = time.time()
        values = {
            "limit_usd": spec.limit_usd,
            "period": spec.period,
            "window_seconds": spec.window_seconds,
            "window_start": spec.window_start,
            "alerts": list(spec.alerts),
            "on_exhausted": spec.on_exhausted,
            "updated_at": now,
        }
        try:
            async with self.db.transaction() as conn:
                row = (
                    await conn.execute(
                        select(budgets.c.id, budgets.c.version, budgets.c.period)
                        .where(budgets.c.tenant == spec.tenant, budgets.c.router == spec.router)
                        .with_for_update()
                    )
                ).first()
                if row is None:
                    budget_id = (
                        await conn.execute(
                            budgets.insert()
                            .values(
                                tenant=spec.tenant,
                                router=spec.router,
                                version=1,
                                created_at=now,
                                **values,
                            )
                            .returning(budgets.c.id)
                        )
                    ).scalar_one()
                    return StoredBudget(int(budget_id), replace(spec, version=1)), True
                version = int(row.version) + 1
                await conn.execute(
                    update(budgets).where(budgets.c.id == row.id).values(version=version, **values)
                )
                if row.period != spec.period:  # the old period's rows no longer apply
                    ledger_start = None
                if ledger_start is not None:
                    await conn.execute(
                        update(budget_ledger)
                        .where(
                            budget_ledger.c.budget_id == row.id,
                            budget_ledger.c.period_start == ledger_start,
                        )
                        .values(limit_usd=spec.limit_usd)
                    )
                return StoredBudget(int(row.id), replace(spec, version=version)), False
        except IntegrityError as exc:
            raise Aborted(f"budget {spec.label} was created concurrently; retry") from exc

    async def list_budgets(self, tenant: str | None = None) -> list[StoredBudget]:
        query = select(budgets).order_by(budgets.c.tenant, budgets.c.router)
        if tenant:
            query = query.where(budgets.c.tenant == tenant)
        async with self.db.transaction() as conn:
            rows = (await conn.execute(query)).all()
        return [_stored(r) for r in rows]

    async def get_budget(self, tenant: str, router: str) -> StoredBudget:
        async with self.db.transaction() as conn:
            row = (
                await conn.execute(
                    select(budgets).where(budgets.c.tenant == tenant, budgets.c.router == router)
                )
            ).first()
        if row is None:
            scope = f"tenant {tenant!r}" + (f" router {router!r}" if router else "")
            raise NotFound(f"no budget for {scope}")
        return _stored(row)

    # -- the ledger ------------------------------------------------------------------------

    async def open_period(
        self, budget_id: int, start: float, end: float, limit_usd: float
    ) -> LedgerRow:
        """The budget's ledger row for the period [start, end), created when missing."""
        async with self.db.transaction() as conn:
            await conn.execute(
                _insert_ignoring_duplicates(conn, budget_ledger),
                {
                    "budget_id": budget_id,
                    "period_start": start,
                    "period_end": end,
                    "limit_usd": limit_usd,
                    "spent_usd": 0.0,
                    "leased_usd": 0.0,
                    "last_grant_usd": 0.0,
                    "alerts_fired": 0,
                },
            )
            return await _ledger(conn, budget_id, start)

    async def ledger(self, budget_id: int, start: float) -> LedgerRow | None:
        async with self.db.transaction() as conn:
            found = await conn.scalar(
                select(func.count()).where(
                    budget_ledger.c.budget_id == budget_id, budget_ledger.c.period_start == start
                )
            )
            return await _ledger(conn, budget_id, start) if found else None

    async def take_lease(
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
            now = time.time()
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

    async def renew_lease(self, lease_id: int, expires_at: float) -> bool:
        """Extend an open lease; False when it was closed (expired and reaped)."""
        async with self.db.transaction() as conn:
            result = await conn.execute(
                update(budget_leases)
                .where(budget_leases.c.id == lease_id, budget_leases.c.closed_at.is_(None))
                .values(expires_at=expires_at)
            )
            return bool(result.rowcount)

    async def close_lease(self, lease_id: int, now: float) -> float | None:
        """Close an open lease: its charges become spent, the rest returns to the budget.
        Returns what it used, or None when it was closed already."""
        async with self.db.transaction() as conn:
            return await _close(conn, lease_id, now)

    async def reap_leases(self, now: float, limit: int = 100) -> int:
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
        into the ledger's spend. Returns the leases found closed, whose charges were not kept."""
        lease_ids = sorted({c.lease_id for c in charges if c.lease_id is not None})
        async with self.db.transaction() as conn:
            open_ids: set[int] = set()
            if lease_ids:
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
            kept = [c for c in charges if c.lease_id is None or c.lease_id in open_ids]
            if kept:
                await conn.execute(
                    _insert_ignoring_duplicates(conn, budget_charges),
                    [
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
                    ],
                )
            for c in kept:
                if c.lease_id is None:
                    await _add_spend(conn, c.budget_id, c.period_start, c.expected_cost_usd)
        return set(lease_ids) - open_ids

    async def settle(self, costs: Sequence[tuple[str, float]]) -> int:
        """Feedback's actual costs: each decision's charges (once) and their periods' spend move
        from the expected to the actual cost. Returns the charges settled."""
        settled = 0
        async with self.db.transaction() as conn:
            for decision_id, cost in costs:
                rows = (
                    await conn.execute(
                        select(
                            budget_charges.c.budget_id,
                            budget_charges.c.period_start,
                            budget_charges.c.expected_cost_usd,
                        )
                        .where(
                            budget_charges.c.decision_id == decision_id,
                            budget_charges.c.cost_usd.is_(None),
                        )
                        .with_for_update()
                    )
                ).all()
                for row in rows:
                    await conn.execute(
                        update(budget_charges)
                        .where(
                            budget_charges.c.decision_id == decision_id,
                            budget_charges.c.budget_id == row.budget_id,
                        )
                        .values(cost_usd=cost)
                    )
                    if cost != row.expected_cost_usd:
                        await _add_spend(
                            conn, row.budget_id, row.period_start, cost - row.expected_cost_usd
                        )
                    settled += 1
        return settled

    async def mark_alerts(self, budget_id: int, start: float, seen: int, fired: int) -> bool:
        """Compare-and-set of the alerts fired this period: True for the one caller that moved
        it from ``seen`` to ``fired`` (so each alert fires once across replicas)."""
        async with self.db.transaction() as conn:
            result = await conn.execute(
                update(budget_ledger)
                .where(
                    budget_ledger.c.budget_id == budget_id,
                    budget_ledger.c.period_start == start,
                    budget_ledger.c.alerts_fired == seen,
                )
                .values(alerts_fired=fired)
            )
            return bool(result.rowcount)

    # -- cost attribution --------------------------------------------------------------------

    async def spend(
        self, tenant: str, router: str, since: float, until: float, metadata_key: str
    ) -> list[SpendLine]:
        """Spend of decisions made in [since, until): the actual cost when feedback reported it,
        else the expected cost; by router, arm and the value of one metadata key."""
        query = (
            select(
                routers.c.name,
                decisions.c.arm,
                decisions.c.request_metadata,
                decisions.c.expected_cost_usd,
                feedback_events.c.cost_usd,
            )
            .join(routers, routers.c.id == decisions.c.router_id)
            .outerjoin(feedback_events, feedback_events.c.decision_id == decisions.c.id)
            .where(
                routers.c.tenant == tenant,
                decisions.c.created_at >= since,
                decisions.c.created_at < until,
            )
        )
        if router:
            query = query.where(routers.c.name == router)
        lines: dict[tuple[str, str, str], list[float]] = {}
        async with self.db.transaction() as conn:
            for name, arm, meta, expected, actual in (await conn.execute(query)).all():
                value = str((meta or {}).get(metadata_key, "")) if metadata_key else ""
                line = lines.setdefault((name, arm, value), [0, 0.0])
                line[0] += 1
                # A cost past the ceilings was logged before issue 17: the expected cost then.
                line[1] += next((c for c in (actual, expected) if bounded_usd(c)), 0.0)
        return [
            SpendLine(name, arm, value, int(n), float(usd))
            for (name, arm, value), (n, usd) in sorted(lines.items())
        ]


def _stored(row: Any) -> StoredBudget:
    return StoredBudget(
        int(row.id),
        BudgetSpec(
            tenant=row.tenant,
            router=row.router,
            limit_usd=row.limit_usd,
            period=row.period,
            window_seconds=row.window_seconds,
            window_start=row.window_start,
            alerts=tuple(row.alerts),
            on_exhausted=row.on_exhausted,
            version=row.version,
        ),
    )


async def _ledger(conn: AsyncConnection, budget_id: int, start: float) -> LedgerRow:
    row = (
        await conn.execute(
            select(budget_ledger).where(
                budget_ledger.c.budget_id == budget_id, budget_ledger.c.period_start == start
            )
        )
    ).one()
    in_open_leases = await conn.scalar(
        select(func.coalesce(func.sum(budget_charges.c.expected_cost_usd), 0.0))
        .select_from(budget_charges)
        .join(budget_leases, budget_leases.c.id == budget_charges.c.lease_id)
        .where(
            budget_leases.c.budget_id == budget_id,
            budget_leases.c.period_start == start,
            budget_leases.c.closed_at.is_(None),
        )
    )
    return LedgerRow(
        period_start=row.period_start,
        period_end=row.period_end,
        limit_usd=row.limit_usd,
        spent_usd=row.spent_usd,
        leased_usd=row.leased_usd,
        committed_usd=row.spent_usd + float(in_open_leases or 0.0),
        alerts_fired=row.alerts_fired,
    )


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
