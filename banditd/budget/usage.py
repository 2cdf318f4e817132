"""A budget's current period as GetBudget and ListBudgets report it."""

from __future__ import annotations

from dataclasses import dataclass

from banditd.domain.budgets import BudgetSpec, elapsed_fraction
from banditd.store.budgets import LedgerRow


@dataclass(frozen=True)
class BudgetUsage:
    spec: BudgetSpec
    period_start: float
    period_end: float
    committed_usd: float
    leased_usd: float  # granted to open leases and not yet used
    remaining_usd: float
    alerts_fired: tuple[float, ...]
    elapsed: float

    @classmethod
    def of(
        cls, spec: BudgetSpec, bounds: tuple[float, float], row: LedgerRow | None, now: float
    ) -> BudgetUsage:
        """The period ``bounds`` of ``spec`` from its ledger row (None: nothing spent yet)."""
        committed = row.committed_usd if row else 0.0
        leased = row.leased_usd - (row.committed_usd - row.spent_usd) if row else 0.0
        fired = row.alerts_fired if row else 0
        return cls(
            spec=spec,
            period_start=bounds[0],
            period_end=bounds[1],
            committed_usd=committed,
            leased_usd=max(0.0, leased),
            remaining_usd=spec.limit_usd - committed,
            alerts_fired=spec.alerts[:fired],
            elapsed=elapsed_fraction(bounds, now),
        )
