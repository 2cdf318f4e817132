"""Two PutRouter (or SetBudget) calls at once go in turn, on SQLite too (where SELECT ... FOR
UPDATE locks nothing): the second reads what the first wrote before deciding its own write."""

from __future__ import annotations

import dataclasses

from banditd.domain import ArmSpec, RouterSpec
from banditd.domain.budgets import BudgetSpec
from banditd.store import Database
from banditd.store.budgets import BudgetRepository
from banditd.store.routers import Routers
from tests.helpers import meanwhile

SPEC = RouterSpec("acme", "chat", (ArmSpec("cheap", 0.1, 0.2), ArmSpec("dear", 5.0, 10.0)))


async def test_a_router_update_compares_x_with_the_version_written_just_before(
    db: Database,
) -> None:
    routers = Routers(db)
    await routers.put(SPEC)  # version 1: hashing, 16 values
    other_x = dataclasses.replace(SPEC, embedding_dim=8)  # builds x another way
    back = dataclasses.replace(SPEC, exploration=0.3)  # x as version 1 builds it
    # The second writer reads the router while the first is writing version 2.
    (first, _), (second, _) = await meanwhile(
        db, "INSERT INTO router_versions", lambda: routers.put(back), routers.put(other_x)
    )
    assert (first.spec.version, first.context_since) == (2, 2)
    # Version 3 builds x as version 1 did, not as version 2: it learns again from version 3.
    assert (second.spec.version, second.context_since) == (3, 3)
    stored = await routers.get("acme", "chat")
    assert stored is not None and stored.context_since == 3


async def test_two_budget_updates_at_once_get_two_versions(db: Database) -> None:
    repo = BudgetRepository(db)
    await repo.put_budget(BudgetSpec("acme", "", 1.0, "day"), None)
    (first, _), (second, _) = await meanwhile(
        db,
        "UPDATE budget_ledger",  # the first's last write: its budget row is written
        lambda: repo.put_budget(BudgetSpec("acme", "", 3.0, "day"), None),
        repo.put_budget(BudgetSpec("acme", "", 2.0, "day"), 0.0),
    )
    assert (first.spec.limit_usd, second.spec.limit_usd) == (2.0, 3.0)
    assert (first.spec.version, second.spec.version) == (2, 3)
    stored = await repo.get_budget("acme", "")
    assert (stored.spec.version, stored.spec.limit_usd) == (3, 3.0)
