"""A process's budgets: leases on slices of each budget, reserved at Select, settled at Feedback.

Select goes through its request's ``BudgetView`` (``applicable``; banditd.budget.view): it asks
``prepare`` to hold enough lease for the priciest arm, reads ``pacings`` for the pacer,
``reserve``s the chosen arm's expected cost from the lease in memory (no I/O), and ``commit``s the
charge before it answers: charges are written in groups (banditd.budget.charges), each only
while its lease is open, so a decision that leaves the server is always counted. The actual
cost Feedback (or a usage report) reports settles the decision's charges in the transaction
that logs it (banditd.store.budget_leases.settle_costs); without one the expected cost stays.

A background round (``housekeeping``, every budget_refresh_s) renews this process's leases,
closes every replica's expired leases (a dead replica's unspent part returns), re-reads budgets
other replicas changed, refreshes committed spend for the pacer, fires alerts (once a period,
whichever replica wins the compare-and-set) and sets the metrics.

Bound: the leases keep the sum of expected costs within the limit; spend exceeds the limit only
by feedback reporting more than the expected cost for decisions still open when the budget runs
out (and, with on_exhausted "cheapest", by the decisions served past it, which it asks for).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Sequence

import structlog

from banditd import metrics
from banditd.budget.charges import ChargeWriter
from banditd.budget.pacer import DEFAULT_SLACK, Pacing
from banditd.budget.usage import BudgetUsage
from banditd.budget.view import UNLIMITED, BudgetState, BudgetView, Reservation
from banditd.domain.budgets import BudgetSpec, elapsed_fraction, period_bounds
from banditd.errors import Aborted, Unavailable
from banditd.store.budget_leases import Charge, Leases
from banditd.store.budgets import BudgetRepository, LedgerRow, SpendLine, StoredBudget

log = structlog.get_logger(__name__)


class Budgets:
    def __init__(
        self,
        repo: BudgetRepository,
        *,
        lease_fraction: float = 0.1,
        lease_ttl_s: float = 15.0,
        slack: float = DEFAULT_SLACK,
        clock: Callable[[], float] = time.time,
        holder: str | None = None,
    ) -> None:
        self._repo = repo
        self._leases = Leases(repo.db, clock)
        self._fraction = lease_fraction
        self._ttl = lease_ttl_s
        self._slack = slack
        self._clock = clock
        self.holder = holder or f"replica-{uuid.uuid4().hex[:12]}"
        self._by_key: dict[tuple[str, str], BudgetState] = {}
        self._charges = ChargeWriter(self._leases)
        # SetBudget and DeleteBudget made here, counted; by budget, the count at its latest
        # (housekeeping leaves a budget changed while it listed to the change).
        self._changes = 0
        self._changed: dict[tuple[str, str], int] = {}

    # -- configuration -----------------------------------------------------------------------

    async def load_all(self) -> int:
        stored = await self._repo.list_budgets()
        for item in stored:
            self._adopt(item)
        return len(stored)

    def _adopt(self, stored: StoredBudget) -> BudgetState:
        state = self._by_key.get(stored.spec.key)
        if state is None or state.budget_id != stored.budget_id:
            state = BudgetState(stored.budget_id, stored.spec)
            self._by_key[stored.spec.key] = state
        elif state.spec.version != stored.spec.version:
            # Return the lease and start the period afresh at the next use (a lower limit must
            # not leave this replica holding money the new limit no longer has).
            state.period_start = state.period_end = math.nan
            state.spec = stored.spec
            state.limit_usd = stored.spec.limit_usd
            state.dry = False
        return state

    async def put(self, spec: BudgetSpec) -> tuple[BudgetSpec, bool]:
        start, _ = period_bounds(spec, self._clock())
        stored, created = await self._repo.put_budget(spec, start)
        self._count_change(spec.key)
        self._adopt(stored)
        log.info(
            "budget_set", budget=stored.spec.label, limit_usd=spec.limit_usd, period=spec.period
        )
        return stored.spec, created

    async def usage(self, tenant: str, router: str) -> BudgetUsage:
        stored = await self._repo.get_budget(tenant, router)  # NotFound when absent
        return await self._usage(stored)

    async def list_usage(self, tenant: str) -> list[BudgetUsage]:
        return [await self._usage(s) for s in await self._repo.list_budgets(tenant or None)]

    async def _usage(self, stored: StoredBudget) -> BudgetUsage:
        bounds = period_bounds(stored.spec, self._clock())
        row = await self._repo.ledger(stored.budget_id, bounds[0])
        return BudgetUsage.of(stored.spec, bounds, row, self._clock())

    async def delete(self, tenant: str, router: str) -> bool:
        """Stop enforcing the budget here at once (other replicas at their next housekeeping);
        False when there is none. This replica's lease is left to expire, so that decisions
        already reserved on it still commit."""
        deleted = await self._repo.delete_budget(tenant, router)
        self._count_change((tenant, router))
        self._drop((tenant, router))
        if deleted:
            log.info("budget_deleted", tenant=tenant, router=router)
        return deleted

    def _count_change(self, key: tuple[str, str]) -> None:
        self._changes += 1
        self._changed[key] = self._changes

    def _drop(self, key: tuple[str, str]) -> None:
        """Enforce a deleted budget no more: its lease expires by itself; its gauges go."""
        self._by_key.pop(key, None)
        tenant, router = key[0], key[1] or "*"
        metrics.BUDGET_SPEND.remove(tenant, router)
        metrics.BUDGET_REMAINING.remove(tenant, router)

    async def spend(
        self, tenant: str, router: str, since: float, until: float, metadata_key: str
    ) -> list[SpendLine]:
        return await self._repo.spend(tenant, router, since, until, metadata_key)

    # -- the Select path ---------------------------------------------------------------------

    def applicable(self, tenant: str, router: str) -> BudgetView:
        """The budgets a decision of tenant/router counts against: the router's and the
        tenant's; UNLIMITED when there are none (no I/O)."""
        found = [self._by_key.get((tenant, router)), self._by_key.get((tenant, ""))]
        states = [s for s in found if s is not None]
        return BudgetView(self, states) if states else UNLIMITED

    async def prepare(self, states: Sequence[BudgetState], need_usd: float) -> None:
        """Roll each budget into the current period and top up this process's lease so that it
        holds at least ``need_usd`` (when the budget has it)."""
        for state in states:
            if self._clock() < state.period_end and (state.holds(need_usd) or state.dry):
                continue
            async with state.lock:
                try:
                    await self._roll(state)
                    if not state.holds(need_usd) and not state.dry:
                        await self._top_up(state, need_usd)
                except Unavailable as exc:
                    # Database down: decide within what this replica holds (the pacer masks
                    # what does not fit; an exhausted budget refuses or serves the cheapest).
                    log.warning("budget_top_up_failed", budget=state.spec.label, error=exc.message)

    async def _roll(self, state: BudgetState) -> None:
        """Move into the period holding now: return the old period's lease, open the new."""
        now = self._clock()
        if now < state.period_end:
            return
        await self._return_lease(state)
        start, end = period_bounds(state.spec, now)
        row = await self._repo.open_period(state.budget_id, start, end, state.spec.limit_usd)
        state.period_start, state.period_end = start, end
        state.dry = False
        self._refreshed(state, row)
        log.info("budget_period", budget=state.spec.label, period_start=start, period_end=end)

    async def _top_up(self, state: BudgetState, need_usd: float) -> None:
        lease_id, granted = await self._leases.take(
            state.budget_id,
            state.period_start,
            state.lease_id,
            holder=self.holder,
            need_usd=need_usd - state.available_usd,
            fraction=self._fraction,
            expires_at=self._clock() + self._ttl,
        )
        if lease_id != state.lease_id:  # a new lease (the old one was closed under us)
            state.granted_usd = state.reserved_usd = 0.0
        state.lease_id = lease_id
        state.granted_usd += granted
        if granted <= 0 or not state.holds(need_usd):
            state.dry = True
        row = await self._repo.ledger(state.budget_id, state.period_start)
        if row is not None:
            self._refreshed(state, row)

    def _refreshed(self, state: BudgetState, row: LedgerRow) -> None:
        state.committed_usd = row.committed_usd
        state.reserved_since_refresh = 0.0
        state.limit_usd = row.limit_usd
        state.alerts_fired = row.alerts_fired

    def pacings(self, states: Sequence[BudgetState]) -> list[Pacing]:
        now = self._clock()
        return [
            Pacing(
                limit_usd=s.limit_usd,
                committed_usd=s.committed_usd + s.reserved_since_refresh,
                elapsed=elapsed_fraction((s.period_start, s.period_end), now),
                available_usd=s.available_usd,
                slack=self._slack,
                refuse=s.spec.on_exhausted == "refuse",
                scope=s.spec.label,
            )
            for s in states
        ]

    def reserve(
        self, states: Sequence[BudgetState], decision_id: str, cost_usd: float
    ) -> Reservation:
        """Charge a decision's expected cost to each budget (no I/O): from the lease when it
        holds enough, else as spend past the budget (on_exhausted cheapest)."""
        now = self._clock()
        charges = []
        for s in states:
            lease_id = s.lease_id if s.holds(cost_usd) else None
            if lease_id is not None:
                s.reserved_usd += cost_usd
            s.reserved_since_refresh += cost_usd
            charges.append(
                Charge(decision_id, s.budget_id, s.period_start, lease_id, cost_usd, now)
            )
        return Reservation(charges, list(states))

    def release(self, reservation: Reservation) -> None:
        for charge, s in zip(reservation.charges, reservation.states, strict=True):
            if charge.lease_id is not None and charge.lease_id == s.lease_id:
                s.reserved_usd -= charge.expected_cost_usd
            s.reserved_since_refresh -= charge.expected_cost_usd

    async def commit(self, reservation: Reservation) -> None:
        """Write the charges (grouped with concurrent ones) before the decision leaves; Aborted
        when a lease was closed under this process (it stalled past the lease's expiry)."""
        outcome = await self._charges.queue(reservation.charges)
        if isinstance(outcome, Unavailable):
            # Database down: the decision is served within this replica's lease (reserved in
            # memory) and its charges are written when the database is back.
            self._charges.defer(reservation.charges, outcome)
            return
        if isinstance(outcome, Exception):
            self.release(reservation)
            raise outcome
        if lost := outcome & {c.lease_id for c in reservation.charges}:
            self.release(reservation)
            for s in reservation.states:
                if s.lease_id in lost:
                    s.lease_id, s.granted_usd, s.reserved_usd = None, 0.0, 0.0
            raise Aborted("the budget lease of this replica expired meanwhile; retry")

    # -- background ----------------------------------------------------------------------------

    async def housekeeping(self) -> None:
        """One round: pick up budget changes, renew own leases, reap expired ones, refresh
        committed spend, fire alerts, set metrics."""
        await self._charges.write_deferred()
        now = self._clock()
        seen = self._changes
        listed = await self._repo.list_budgets()
        # A SetBudget or DeleteBudget made here meanwhile is newer than the list: it stands.
        for stored in listed:
            if self._changed.get(stored.spec.key, 0) <= seen:
                self._adopt(stored)
        for key in self._by_key.keys() - {stored.spec.key for stored in listed}:
            if self._changed.get(key, 0) <= seen:
                self._drop(key)  # deleted (DeleteBudget)
        await self._leases.reap(now)
        for state in list(self._by_key.values()):
            async with state.lock:
                await self._renew(state)
                await self._check(state)

    async def _renew(self, state: BudgetState) -> None:
        if state.lease_id is None:
            return
        if self._clock() >= state.period_end:
            await self._return_lease(state)
            return
        if not await self._leases.renew(state.lease_id, self._clock() + self._ttl):
            log.warning("budget_lease_lost", budget=state.spec.label, lease_id=state.lease_id)
            state.lease_id, state.granted_usd, state.reserved_usd = None, 0.0, 0.0

    async def _check(self, state: BudgetState) -> None:
        await self._roll(state)
        row = await self._repo.ledger(state.budget_id, state.period_start)
        if row is None:
            return
        self._refreshed(state, row)
        state.dry = False
        spec = state.spec
        tenant, router = spec.tenant, spec.router or "*"
        metrics.BUDGET_SPEND.labels(tenant, router).set(row.committed_usd)
        metrics.BUDGET_REMAINING.labels(tenant, router).set(row.limit_usd - row.committed_usd)
        due = sum(1 for f in spec.alerts if row.committed_usd >= f * row.limit_usd)
        if due > row.alerts_fired and await self._repo.mark_alerts(
            state.budget_id, state.period_start, row.alerts_fired, due
        ):
            for fraction in spec.alerts[row.alerts_fired : due]:
                metrics.BUDGET_ALERTS.labels(tenant, router, f"{fraction:g}").inc()
                log.warning(
                    "budget_alert",
                    tenant=spec.tenant,
                    router=spec.router,
                    fraction=fraction,
                    committed_usd=row.committed_usd,
                    limit_usd=row.limit_usd,
                    period_start=state.period_start,
                )
            state.alerts_fired = due

    async def _return_lease(self, state: BudgetState) -> None:
        # The charges queued so far (Selects waiting in commit, some under this lease) are
        # written first: closed before them, the lease would refuse them and abort those Selects.
        if state.lease_id is not None and self._charges.writing:
            await self._charges.queue([])
        if state.lease_id is None:
            return
        used = await self._leases.close(state.lease_id, self._clock())
        log.info(
            "budget_lease_returned", budget=state.spec.label, lease_id=state.lease_id, used_usd=used
        )
        state.lease_id, state.granted_usd, state.reserved_usd = None, 0.0, 0.0

    async def close(self) -> None:
        """Return every lease (on shutdown), so its unused part is available at once."""
        await self._charges.close()
        for state in list(self._by_key.values()):
            async with state.lock:
                try:
                    await self._return_lease(state)
                except Unavailable as exc:  # it expires and returns by itself
                    log.warning("budget_lease_not_returned", error=str(exc))
