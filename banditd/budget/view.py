"""What one Select sees of the budgets: the budgets that cover it, or none (``UNLIMITED``).

Select asks the ledger (banditd.budget.ledger.Budgets) for a request's ``BudgetView`` once and
goes through it without asking whether a budget applies: ``UNLIMITED`` (no budget configured, or
none covering the tenant and router) has the same interface, allows everything and books nothing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from banditd.budget.pacer import USD_EPSILON, BudgetCheck, Pacing
from banditd.domain.budgets import BudgetSpec
from banditd.store.budget_leases import Charge


@dataclass
class BudgetState:
    """One budget in this process: its spec, current period and lease."""

    budget_id: int
    spec: BudgetSpec
    period_start: float = math.nan
    period_end: float = math.nan
    limit_usd: float = 0.0
    lease_id: int | None = None
    granted_usd: float = 0.0  # of the open lease
    reserved_usd: float = 0.0  # charged under the open lease by this process
    committed_usd: float = 0.0  # the period's committed spend at the last refresh
    reserved_since_refresh: float = 0.0
    alerts_fired: int = 0
    dry: bool = False  # the last top-up found nothing left: wait for a refresh before asking again
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def available_usd(self) -> float:
        return self.granted_usd - self.reserved_usd if self.lease_id is not None else 0.0

    def holds(self, usd: float) -> bool:
        return self.available_usd >= usd - USD_EPSILON


@dataclass
class Reservation:
    """One decision's charges, one per budget that covers it (none: nothing booked)."""

    charges: list[Charge]
    states: list[BudgetState]


class Ledger(Protocol):
    """The Select path of banditd.budget.ledger.Budgets."""

    async def prepare(self, states: Sequence[BudgetState], need_usd: float) -> None: ...

    def pacings(self, states: Sequence[BudgetState]) -> list[Pacing]: ...

    def reserve(
        self, states: Sequence[BudgetState], decision_id: str, cost_usd: float
    ) -> Reservation: ...

    async def commit(self, reservation: Reservation) -> None: ...


class BudgetView:
    """The budgets one request counts against (the router's and the tenant's)."""

    def __init__(self, ledger: Ledger, states: Sequence[BudgetState]) -> None:
        self._ledger, self.states = ledger, states

    async def prepare(self, need_usd: Callable[[], float]) -> None:
        """Hold enough lease for ``need_usd()`` (the priciest answer the request may get)."""
        await self._ledger.prepare(self.states, need_usd())

    def check(self) -> BudgetCheck | None:
        """What ranking needs of the budgets (their pacing, refuse or serve the cheapest)."""
        return BudgetCheck(self._ledger.pacings(self.states))

    def reserve(self, decision_id: str, cost_usd: float) -> Reservation:
        """Charge a decision's expected cost to each budget, in memory (no I/O)."""
        return self._ledger.reserve(self.states, decision_id, cost_usd)

    async def commit(self, reservation: Reservation) -> None:
        """Write the charges before the decision leaves (Aborted when a lease was lost)."""
        await self._ledger.commit(reservation)


class Unlimited(BudgetView):
    """No budget covers the request: everything is allowed, nothing is booked."""

    def __init__(self) -> None:
        self.states = ()

    async def prepare(self, need_usd: Callable[[], float]) -> None:
        return None

    def check(self) -> BudgetCheck | None:
        return None

    def reserve(self, decision_id: str, cost_usd: float) -> Reservation:
        return Reservation([], [])

    async def commit(self, reservation: Reservation) -> None:
        return None


UNLIMITED = Unlimited()


class NoBudgets:
    """The budgets of a process that keeps none (a flow built without a ledger): every request
    is UNLIMITED."""

    def applicable(self, tenant: str, router: str) -> BudgetView:
        return UNLIMITED
