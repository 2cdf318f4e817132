"""Budget leases closed while a charge is recorded under them, or closed twice at once (the
holder returning its lease as the reaper takes it): every charge ends up in the period's spend,
and a lease's grant goes back once. On SQLite, where SELECT ... FOR UPDATE locks nothing, each
of these transactions takes the write lock before it reads the lease."""

from __future__ import annotations

import pytest

from banditd.domain.budgets import BudgetSpec
from banditd.edge import codec
from banditd.store import Database
from banditd.store.budget_leases import Charge, Leases, settle_costs
from banditd.store.budgets import BudgetRepository, LedgerRow
from banditd.store.routers import Routers
from banditd.store.usage import lock_router
from tests.helpers import meanwhile, router_config

START, END = 1_000_020.0, 1_000_080.0


async def _lease(db: Database) -> tuple[BudgetRepository, Leases, int, int]:
    repo = BudgetRepository(db)
    stored, _ = await repo.put_budget(BudgetSpec("acme", "", 1.0, "window", 60), None)
    await repo.open_period(stored.budget_id, START, END, 1.0)
    lease_id, granted = await Leases(db).take(
        stored.budget_id, START, None, holder="h", need_usd=0.5, fraction=0.5, expires_at=END
    )
    assert lease_id is not None and granted == 0.5
    return repo, Leases(db), stored.budget_id, lease_id


async def _ledger(repo: BudgetRepository, budget_id: int) -> LedgerRow:
    row = await repo.ledger(budget_id, START)
    assert row is not None
    return row


async def test_a_charge_recorded_as_its_lease_closes_is_spent(db: Database) -> None:
    repo, leases, budget_id, lease_id = await _lease(db)
    charge = Charge("d-1", budget_id, START, lease_id, 0.25, START)
    lost, used = await meanwhile(
        db,
        "INSERT INTO budget_charges",
        lambda: leases.close(lease_id, START + 1),
        leases.add_charges([charge]),
    )
    row = await _ledger(repo, budget_id)
    assert row.leased_usd == 0.0
    if lost:  # refused under a closed lease: the caller is told (and charges it past the lease)
        assert (lost, used, row.spent_usd) == ({lease_id}, 0.0, 0.0)
    else:  # kept: the close counted it
        assert (used, row.spent_usd) == (0.25, 0.25)


async def test_a_lease_closed_twice_at_once_gives_its_grant_back_once(db: Database) -> None:
    repo, leases, budget_id, lease_id = await _lease(db)
    await leases.add_charges([Charge("d-1", budget_id, START, lease_id, 0.25, START)])
    first, second = await meanwhile(
        db,
        "UPDATE budget_ledger",  # the lease read and marked closed
        lambda: leases.reap(END + 1),  # the reaper, as its holder returns it
        leases.close(lease_id, END + 1),
    )
    assert sorted([first is not None, second == 1]) == [False, True]
    row = await _ledger(repo, budget_id)
    assert (row.leased_usd, row.spent_usd) == (0.0, 0.25)


async def _settle(db: Database, router_id: int, costs: list[tuple[str, float]]) -> int:
    """Reported costs settled as the transaction that logs them (a feedback event, a usage
    report) settles them: under the decision's router's append lock."""
    async with db.transaction() as conn:
        await lock_router(conn, router_id)
        return await settle_costs(conn, costs)


async def test_a_cost_settled_twice_at_once_is_spent_once(db: Database) -> None:
    repo, leases, budget_id, _ = await _lease(db)
    router_id = (await Routers(db).put(codec.spec_from_proto(router_config())))[0].router_id
    await leases.add_charges([Charge("d-1", budget_id, START, None, 0.25, START)])  # past lease
    first, second = await meanwhile(
        db,
        "UPDATE budget_ledger",  # the charge read and settled
        lambda: _settle(db, router_id, [("d-1", 0.1)]),  # the rating, as the usage report's
        _settle(db, router_id, [("d-1", 0.1)]),
    )
    assert sorted([first, second]) == [0, 1]
    assert (await _ledger(repo, budget_id)).spent_usd == pytest.approx(0.1)


async def test_charges_written_again_are_spent_once(db: Database) -> None:
    """A retry of charges whose commit went unacknowledged (or a deferred batch written again
    after its second step failed) counts each decision once, past the lease or under it."""
    repo, leases, budget_id, lease_id = await _lease(db)
    charges = [
        Charge("d-1", budget_id, START, None, 0.25, START),  # past the lease
        Charge("d-2", budget_id, START, lease_id, 0.125, START),
    ]
    assert await leases.add_charges(charges) == set()
    assert await leases.add_charges(charges) == set()
    row = await _ledger(repo, budget_id)
    assert (row.spent_usd, row.committed_usd) == (0.25, 0.375)
