"""A process's budgets against a real database: period rollover (injected clock), leases that
expire with their holder, exactly-once alerts across processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest

from banditd.budget.ledger import Budgets
from banditd.budget.view import UNLIMITED, BudgetState
from banditd.config import DEFAULT_MIGRATIONS_DIR
from banditd.domain.budgets import BudgetSpec, period_bounds
from banditd.errors import Aborted
from banditd.store import Database, migrate
from banditd.store.budget_leases import Leases
from banditd.store.budgets import BudgetRepository, StoredBudget

WINDOW = BudgetSpec("acme", "", 1.0, "window", window_seconds=60, alerts=(0.5,))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def repo(database_url: str) -> AsyncIterator[BudgetRepository]:
    await migrate(database_url, DEFAULT_MIGRATIONS_DIR)
    db = Database(database_url)
    yield BudgetRepository(db)
    await db.close()


async def spend(budgets: Budgets, usd: float, n: int, first: int = 0) -> int:
    """Reserve and commit n decisions of ``usd`` each while the budget allows; how many went."""
    view = budgets.applicable("acme", "chat")
    done = 0
    for i in range(first, first + n):
        await view.prepare(lambda: usd)
        if min(s.available_usd for s in view.states) < usd - 1e-12:
            break
        await view.commit(view.reserve(f"d-{i}", usd))
        done += 1
    return done


async def test_a_new_period_starts_with_the_whole_limit(repo: BudgetRepository) -> None:
    clock = Clock(1_000_020.0)  # the start of a 60 s window
    budgets = Budgets(repo, clock=clock)
    await budgets.put(WINDOW)
    assert await spend(budgets, 0.3, 10) == 3  # 0.9 of 1.0
    usage = await budgets.usage("acme", "")
    assert usage.committed_usd == pytest.approx(0.9)
    clock.now += 60  # the next window
    assert await spend(budgets, 0.3, 10, first=10) == 3
    usage = await budgets.usage("acme", "")
    assert usage.period_start == period_bounds(WINDOW, clock.now)[0]
    assert usage.committed_usd == pytest.approx(0.9)
    # The old period's lease was returned: its spend is settled there, nothing is held.
    old = await repo.ledger(budgets._by_key[("acme", "")].budget_id, usage.period_start - 60)
    assert old is not None
    assert old.spent_usd == pytest.approx(0.9) and old.leased_usd == 0.0


async def test_a_tenant_no_budget_covers_is_unlimited_and_books_nothing(
    repo: BudgetRepository,
) -> None:
    clock = Clock(1_000_020.0)
    budgets = Budgets(repo, clock=clock)
    await budgets.put(WINDOW)
    assert budgets.applicable("acme", "chat") is not UNLIMITED  # the tenant's budget covers it
    view = budgets.applicable("other", "chat")
    assert view is UNLIMITED and view.check() is None
    reservation = view.reserve("d-1", 5.0)
    await view.commit(reservation)
    assert reservation.charges == []
    assert (await budgets.usage("acme", "")).committed_usd == 0.0


async def test_a_dead_holders_lease_expires_and_its_unspent_part_returns(
    repo: BudgetRepository,
) -> None:
    clock = Clock(1_000_020.0)
    dead = Budgets(repo, clock=clock, lease_ttl_s=5.0, lease_fraction=0.5)
    await dead.put(WINDOW)
    assert await spend(dead, 0.1, 1) == 1  # takes half the budget as a lease, uses 0.1
    state = dead._by_key[("acme", "")]
    assert state.granted_usd == pytest.approx(0.5)
    alive = Budgets(repo, clock=clock, lease_ttl_s=5.0, lease_fraction=1.0)
    await alive.load_all()
    assert await spend(alive, 0.1, 10, first=100) == 5  # only the unleased half
    clock.now += 6  # the dead one never renews; the living one does, and reaps
    await alive.housekeeping()
    assert await spend(alive, 0.1, 10, first=200) == 4  # the dead lease's 0.4 came back
    usage = await alive.usage("acme", "")
    assert usage.committed_usd == pytest.approx(1.0)
    # The dead process's charges after its lease closed are refused, never counted twice.
    with pytest.raises(Exception, match="lease of this replica expired"):
        await dead.commit(dead.reserve([state], "late", 0.1))


async def test_a_lower_limit_takes_back_what_leases_held(repo: BudgetRepository) -> None:
    clock = Clock(1_000_020.0)
    a, b = Budgets(repo, clock=clock, lease_fraction=1.0), Budgets(repo, clock=clock)
    await a.put(WINDOW)
    await b.load_all()
    assert await spend(a, 0.1, 1) == 1  # a leases the whole budget
    await b.put(BudgetSpec("acme", "", 0.3, "window", window_seconds=60))
    await a.housekeeping()  # a sees the new version and returns its lease
    assert await spend(a, 0.1, 10, first=10) == 2  # 0.3 in all
    assert (await a.usage("acme", "")).committed_usd == pytest.approx(0.3)


async def test_alerts_fire_once_per_period_across_processes(repo: BudgetRepository) -> None:
    clock = Clock(1_000_020.0)
    a, b = Budgets(repo, clock=clock), Budgets(repo, clock=clock)
    await a.put(WINDOW)
    await b.load_all()
    await spend(a, 0.3, 2)
    fired = [await _alerts_fired(a), await _alerts_fired(b)]
    assert fired == [1, 0]  # a won the compare-and-set; b saw it done
    clock.now += 60
    await spend(b, 0.3, 2, first=10)
    assert [await _alerts_fired(b), await _alerts_fired(a)] == [1, 0]


async def _alerts_fired(budgets: Budgets) -> int:
    """Alerts this process fired in one round."""
    from banditd import metrics

    counter = metrics.BUDGET_ALERTS.labels("acme", "*", "0.5")
    before = counter._value.get()
    await budgets.housekeeping()
    return int(counter._value.get() - before)


async def test_a_new_period_kind_gets_the_new_limit(repo: BudgetRepository) -> None:
    day_start = 1_000_080_000.0  # 00:00 UTC: the day's and its first hour's ledger row start here
    clock = Clock(day_start + 600)
    budgets = Budgets(repo, clock=clock, lease_fraction=1.0)
    await budgets.put(BudgetSpec("acme", "", 1.0, "hour"))
    assert await spend(budgets, 0.3, 10) == 3  # 0.9 of the hour's 1.0
    await budgets.put(BudgetSpec("acme", "", 10.0, "day"))
    # The day has 10.0: the first hour's 0.9 counts, the hour's limit no longer does.
    assert await spend(budgets, 0.3, 40, first=10) == 30
    usage = await budgets.usage("acme", "")
    assert usage.period_end - usage.period_start == 86_400
    assert usage.committed_usd == pytest.approx(9.9)
    assert usage.remaining_usd == pytest.approx(0.1)


async def test_windows_repeat_before_window_start_too(repo: BudgetRepository) -> None:
    clock = Clock(1_000_020.0)
    budgets = Budgets(repo, clock=clock)
    await budgets.put(
        BudgetSpec("acme", "", 1.0, "window", window_seconds=60, window_start=clock.now + 600)
    )
    assert await spend(budgets, 0.3, 10) == 3
    usage = await budgets.usage("acme", "")
    assert usage.period_start <= clock.now < usage.period_end  # the window holding now
    clock.now += 60  # the next window, still before window_start: the whole limit again
    assert await spend(budgets, 0.3, 10, first=10) == 3


async def test_a_decision_in_flight_as_the_period_ends_is_counted_not_aborted(
    repo: BudgetRepository,
) -> None:
    clock = Clock(1_000_020.0)
    budgets = Budgets(repo, clock=clock)
    await budgets.put(WINDOW)
    view = budgets.applicable("acme", "chat")
    await view.prepare(lambda: 0.3)
    served = asyncio.create_task(view.commit(view.reserve("d-1", 0.3)))
    await asyncio.sleep(0)  # its charge is queued for the writer, as Select's commit leaves it
    clock.now += 60  # the next window: the next Select returns the old period's lease
    await view.prepare(lambda: 0.3)
    await served  # was Aborted: the lease closed before the charge under it was written
    old = await repo.ledger(view.states[0].budget_id, 1_000_020.0)
    assert old is not None and (old.spent_usd, old.leased_usd) == (pytest.approx(0.3), 0.0)


async def test_a_period_ends_without_waiting_for_other_budgets_traffic(
    repo: BudgetRepository,
) -> None:
    clock = Clock(1_000_020.0)
    budgets = Budgets(repo, clock=clock)
    await budgets.put(WINDOW)
    await budgets.put(BudgetSpec("other", "", 1e6, "day"))
    view, busy = budgets.applicable("acme", "chat"), budgets.applicable("other", "chat")
    await view.prepare(lambda: 0.3)
    await busy.prepare(lambda: 1.0)
    served = asyncio.create_task(view.commit(view.reserve("d-1", 0.3)))

    rolled: asyncio.Task[None] | None = None

    async def traffic() -> int:
        """Another tenant's Selects, arriving all the while, until acme's period has rolled:
        how many (the charge writer never runs dry meanwhile)."""
        commits: list[asyncio.Task[None]] = []
        n = 0
        while not (rolled and rolled.done()):
            commits.append(asyncio.create_task(busy.commit(busy.reserve(f"o-{n}", 1e-6))))
            n += 1
            await asyncio.sleep(0)
            if len(commits) >= 1000:
                commits = [c for c in commits if not c.done()]
        await asyncio.gather(*commits)
        return n

    others = asyncio.create_task(traffic())
    await asyncio.sleep(0)  # d-1's charge is queued
    clock.now += 60  # acme's next window
    rolled = asyncio.create_task(view.prepare(lambda: 0.3))
    await served
    # The roll waits for d-1's charge, not for every charge queued after it: it ends while the
    # other tenant's traffic goes on (waiting for the writer to stop, it never did).
    await asyncio.wait_for(asyncio.shield(rolled), 60)
    assert await others > 0


async def test_a_refused_charge_books_the_decision_under_no_budget(repo: BudgetRepository) -> None:
    clock = Clock(1_000_020.0)
    budgets = Budgets(repo, clock=clock)
    await budgets.put(WINDOW)  # the tenant's
    await budgets.put(BudgetSpec("acme", "chat", 1.0, "window", window_seconds=60))
    view = budgets.applicable("acme", "chat")
    await view.prepare(lambda: 0.3)
    router, tenant = view.states
    await Leases(repo.db).close(tenant.lease_id or 0, clock.now)  # reaped: this replica stalled
    with pytest.raises(Aborted):
        await view.commit(view.reserve("d-1", 0.3))
    # Not served, so counted by neither budget (the router's charge was kept under its lease).
    await view.prepare(lambda: 0.3)
    assert await _committed(repo, router) == await _committed(repo, tenant) == 0.0
    await budgets.close()
    assert await _committed(repo, router) == await _committed(repo, tenant) == 0.0


async def _committed(repo: BudgetRepository, state: BudgetState) -> float:
    row = await repo.ledger(state.budget_id, state.period_start)
    assert row is not None
    return row.committed_usd


async def test_alerts_changed_mid_period_fire_when_crossed(repo: BudgetRepository) -> None:
    clock = Clock(1_000_020.0)
    budgets = Budgets(repo, clock=clock)
    await budgets.put(BudgetSpec("acme", "", 1.0, "window", window_seconds=60, alerts=(0.5, 0.8)))
    await spend(budgets, 0.3, 2)
    assert await _alerts(budgets) == ["0.5"]
    # Mid-period the 0.5 alert becomes 0.7, not reached yet (it read as fired: the first one).
    await budgets.put(BudgetSpec("acme", "", 1.0, "window", window_seconds=60, alerts=(0.7, 0.8)))
    assert (await budgets.usage("acme", "")).alerts_fired == ()
    await spend(budgets, 0.25, 1, first=10)  # 0.85 in all
    assert await _alerts(budgets) == ["0.7", "0.8"]  # 0.7 never fired
    assert (await budgets.usage("acme", "")).alerts_fired == (0.7, 0.8)


async def _alerts(budgets: Budgets) -> list[str]:
    """The alert fractions of acme's budget one housekeeping round fired."""
    from banditd import metrics

    labels = ["0.5", "0.7", "0.8"]
    counters = [metrics.BUDGET_ALERTS.labels("acme", "*", f) for f in labels]
    before = [c._value.get() for c in counters]
    await budgets.housekeeping()
    return [f for f, c, b in zip(labels, counters, before, strict=True) if c._value.get() > b]


async def test_a_deleted_budget_leaves_no_gauges_behind(repo: BudgetRepository) -> None:
    from prometheus_client import REGISTRY

    def remaining() -> float | None:
        labels = {"tenant": "acme", "router": "*"}
        return REGISTRY.get_sample_value("banditd_budget_remaining_usd", labels)

    clock = Clock(1_000_020.0)
    here, there = Budgets(repo, clock=clock), Budgets(repo, clock=clock)
    await here.put(WINDOW)
    await there.load_all()
    await spend(here, 0.3, 1)
    await there.housekeeping()
    assert remaining() == pytest.approx(0.7)
    await repo.delete_budget("acme", "")  # DeleteBudget on another replica
    await there.housekeeping()
    assert remaining() is None  # was 0.7 until a restart: a dashboard's budget nearly spent
    await here.put(WINDOW)  # revived
    await here.housekeeping()
    assert remaining() == pytest.approx(0.7)
    await here.delete("acme", "")  # on this replica: at once
    assert remaining() is None


class ChangedWhileListing(BudgetRepository):
    """A repository whose next listing returns what it read before ``change`` ran: a SetBudget
    or DeleteBudget on this process landing while a housekeeping round lists the budgets."""

    change: Callable[[], Awaitable[object]] | None = None

    async def list_budgets(self, tenant: str | None = None) -> list[StoredBudget]:
        listed = await super().list_budgets(tenant)
        change, self.change = self.change, None
        if change is not None:
            await change()
        return listed


async def test_a_change_made_while_a_round_lists_budgets_stands(database_url: str) -> None:
    await migrate(database_url, DEFAULT_MIGRATIONS_DIR)
    db = Database(database_url)
    try:
        repo = ChangedWhileListing(db)
        budgets = Budgets(repo, clock=Clock(1_000_020.0))
        await budgets.put(WINDOW)
        refuse = replace(WINDOW, on_exhausted="refuse")
        repo.change = lambda: budgets.put(refuse)
        await budgets.housekeeping()  # listed version 1 before the change to version 2
        (state,) = budgets.applicable("acme", "chat").states
        assert (state.spec.version, state.spec.on_exhausted) == (2, "refuse")  # was 1, cheapest
        await budgets.housekeeping()
        assert budgets.applicable("acme", "chat").states[0].spec.version == 2
        repo.change = lambda: budgets.delete("acme", "")
        await budgets.housekeeping()  # listed the budget before it was deleted
        assert budgets.applicable("acme", "chat") is UNLIMITED  # was enforced again
    finally:
        await db.close()
