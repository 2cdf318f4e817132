"""Budget storage: budgets, their ledger row per period (limit, spent, leased, alerts fired),
and spend reports. Leases on slices of a period and the charges under them:
banditd.store.budget_leases.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from banditd.domain.budgets import BudgetSpec
from banditd.errors import Aborted, NotFound
from banditd.store.budget_tables import budget_charges, budget_leases, budget_ledger, budgets
from banditd.store.engine import Database, insert_ignoring_duplicates, write_first
from banditd.store.feedback_decisions import COMPARED_RANKING, challenger_cost
from banditd.store.finite import bounded_usd
from banditd.store.models import decisions, feedback_events, routers

# BudgetSpec's fields stored as they are, in columns of the same names.
_PLAIN = ("limit_usd", "period", "window_seconds", "window_start", "on_exhausted")


_IN_FORCE = budgets.c.deleted_at.is_(None)  # not deleted (DeleteBudget)


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
class SpendLine:
    router: str
    arm: str
    metadata_value: str
    decisions: int
    spend_usd: float


class BudgetRepository:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock

    # -- budgets ---------------------------------------------------------------------------

    async def put_budget(
        self, spec: BudgetSpec, ledger_start: float | None
    ) -> tuple[StoredBudget, bool]:
        """Create or replace a budget (version + 1); its current period's ledger row
        (``ledger_start``) follows the new limit and alert fractions."""
        now = self._clock()
        values = {
            **{name: getattr(spec, name) for name in _PLAIN},
            "alerts": list(spec.alerts),
            "updated_at": now,
        }
        try:
            scope = (budgets.c.tenant == spec.tenant, budgets.c.router == spec.router)
            async with self.db.transaction() as conn:
                await write_first(conn, budgets.c.version, *scope)  # SQLite's FOR UPDATE
                row = (
                    await conn.execute(
                        select(
                            budgets.c.id, budgets.c.version, budgets.c.alerts, budgets.c.deleted_at
                        )
                        .where(*scope)
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
                    update(budgets)
                    .where(budgets.c.id == row.id)
                    .values(version=version, deleted_at=None, **values)  # a deleted one revives
                )
                if ledger_start is not None:
                    # Also when the period changed: a row of the old period that starts at the
                    # same time (an hour's, under a new day) is the new period's from now on.
                    await _follow(conn, row.id, ledger_start, tuple(row.alerts), spec)
                revived = row.deleted_at is not None
                return StoredBudget(int(row.id), replace(spec, version=version)), revived
        except IntegrityError as exc:
            raise Aborted(f"budget {spec.label} was created concurrently; retry") from exc

    async def delete_budget(self, tenant: str, router: str) -> bool:
        """Mark the budget deleted; False when there is none in force. Its row and ledger stay:
        charges of decisions still in flight keep their budget, and a SetBudget of the same
        tenant and router revives it with this period's spend."""
        async with self.db.transaction() as conn:
            result = await conn.execute(
                update(budgets)
                .where(_IN_FORCE, budgets.c.tenant == tenant, budgets.c.router == router)
                .values(deleted_at=self._clock())
            )
        return bool(result.rowcount)

    async def list_budgets(self, tenant: str | None = None) -> list[StoredBudget]:
        query = select(budgets).where(_IN_FORCE).order_by(budgets.c.tenant, budgets.c.router)
        if tenant:
            query = query.where(budgets.c.tenant == tenant)
        async with self.db.transaction() as conn:
            rows = (await conn.execute(query)).all()
        return [_stored(r) for r in rows]

    async def get_budget(self, tenant: str, router: str) -> StoredBudget:
        async with self.db.transaction() as conn:
            row = (
                await conn.execute(
                    select(budgets).where(
                        _IN_FORCE, budgets.c.tenant == tenant, budgets.c.router == router
                    )
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
                insert_ignoring_duplicates(conn, budget_ledger),
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
        else the expected cost (a compared decision's: both answers'); by router, arm (a
        compared decision's, its challenger's cost included) and the value of one metadata key."""
        query = (
            select(
                decisions.c.id,
                routers.c.name,
                decisions.c.arm,
                decisions.c.request_metadata,
                decisions.c.expected_cost_usd,
                decisions.c.challenger,
                COMPARED_RANKING,
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
        seen: set[str] = set()  # a decision has a row per signal, later ones carry the change
        async with self.db.transaction() as conn:
            for row in (await conn.execute(query)).all():
                decision_id, name, arm, meta, expected, challenger, ranking, actual = row
                value = str((meta or {}).get(metadata_key, "")) if metadata_key else ""
                line = lines.setdefault((name, arm, value), [0, 0.0])
                first = decision_id not in seen
                seen.add(decision_id)
                line[0] += first
                if bounded_usd(actual):
                    line[1] += actual
                elif first and bounded_usd(expected):
                    # No feedback, or a cost past the ceilings (logged before issue 17).
                    rival = challenger_cost(ranking, challenger)
                    line[1] += expected + (rival if bounded_usd(rival) else 0.0)
        return [
            SpendLine(name, arm, value, int(n), float(usd))
            for (name, arm, value), (n, usd) in sorted(lines.items())
        ]


async def _follow(
    conn: AsyncConnection, budget_id: int, start: float, alerts: tuple[float, ...], spec: BudgetSpec
) -> None:
    """The period's ledger row takes the new limit, and its count of alerts fired is recounted
    in the new fractions: fired, those up to the highest fraction that fired (``alerts``)."""
    where = (budget_ledger.c.budget_id == budget_id, budget_ledger.c.period_start == start)
    fired = await conn.scalar(select(budget_ledger.c.alerts_fired).where(*where).with_for_update())
    values: dict[str, Any] = {"limit_usd": spec.limit_usd}
    if fired is not None:
        highest = alerts[min(fired, len(alerts)) - 1] if fired and alerts else 0.0
        values["alerts_fired"] = sum(1 for f in spec.alerts if f <= highest)
    await conn.execute(update(budget_ledger).where(*where).values(values))


def _stored(row: Any) -> StoredBudget:
    spec = BudgetSpec(
        tenant=row.tenant,
        router=row.router,
        alerts=tuple(row.alerts),
        version=row.version,
        **{name: getattr(row, name) for name in _PLAIN},
    )
    return StoredBudget(int(row.id), spec)


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
