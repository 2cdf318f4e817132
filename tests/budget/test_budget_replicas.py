"""Several server processes on one Postgres spend one tenant budget concurrently; one is killed
(SIGKILL) mid-run. Committed spend stays within the limit and no lease is lost."""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections.abc import Iterator
from functools import partial

import grpc
import numpy as np
import pytest
from sqlalchemy import create_engine, func, select

from banditd.commands.bench.local import ServerProcess, servers
from banditd.store.budget_tables import budget_charges, budget_leases, budget_ledger
from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as rpc
from tests.helpers import SIGNING_KEY, router_config, wait_until

REPLICAS = 3
WORKERS = 4  # concurrent callers per replica
LIMIT = 0.02  # USD: room for a hundred or two decisions
LEASE_TTL_S = 2.0
KILL_AFTER = 10  # decisions the last replica serves (from its lease) before it is killed
# Callers stop once refused this many times in a row after the killed replica's lease expired
# (so the survivors have reaped it and spent what it returned), or at the cap.
REFUSALS_TO_STOP = 6
RUN_CAP_S = 90.0


@pytest.fixture
def replicas(postgres_url: str) -> Iterator[list[ServerProcess]]:
    env = {
        "BANDITD_TAIL_INTERVAL_S": "0.2",
        "BANDITD_BUDGET_REFRESH_S": "0.2",
        "BANDITD_BUDGET_LEASE_TTL_S": str(LEASE_TTL_S),
        "BANDITD_BUDGET_LEASE_FRACTION": "0.2",
    }
    with servers(
        postgres_url, REPLICAS, signing_key=SIGNING_KEY, metrics=False, log_level="warning", env=env
    ) as started:
        yield started


@pytest.mark.postgres
async def test_replicas_never_overspend_a_shared_budget(
    postgres_url: str, replicas: list[ServerProcess]
) -> None:
    channels = [grpc.aio.insecure_channel(r.target) for r in replicas]
    admin = rpc.AdminStub(channels[0])
    await admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    await admin.SetBudget(
        pb.SetBudgetRequest(
            # A day-long window begun now: spend runs ahead of its clock from the first
            # decisions whatever the hour, so the pacer serves the cheap arm and the limit goes
            # in many small decisions across the replicas' leases.
            budget=pb.Budget(
                tenant="acme",
                limit_usd=LIMIT,
                period=pb.BUDGET_PERIOD_WINDOW,
                window_seconds=86_400,
                window_start_unix=int(time.time()),
                on_exhausted=pb.ON_EXHAUSTED_REFUSE,
            )
        )
    )
    served = [0] * REPLICAS
    refused = [0] * REPLICAS
    # Spend the callers know of (decisions they received), at least and at most: a Feedback cut
    # off by the kill may or may not have settled its actual cost.
    seen_usd = [0.0, 0.0]

    async def budgeted(r: int) -> bool:
        """Replica r's budget round has loaded the budget: its Selects count against it (a
        probe that does is charged its expected cost, as it gets no Feedback)."""
        probe = pb.SelectRequest(
            tenant="acme", router="chat", embedding=pb.Embedding(values=[1, 0, 0, 0])
        )
        d = await rpc.RouterStub(channels[r]).Select(probe)
        if d.budget_outcome:
            seen_usd[0] += d.expected_cost_usd
            seen_usd[1] += d.expected_cost_usd
        return bool(d.budget_outcome)

    for r in range(REPLICAS):
        await wait_until(partial(budgeted, r), f"replica {r} to load the budget")
    loop = asyncio.get_running_loop()
    start, killed_at = loop.time(), math.inf

    async def worker(r: int, w: int) -> None:
        router = rpc.RouterStub(channels[r])
        rng = np.random.default_rng([r, w])
        in_a_row = 0
        while loop.time() - start < RUN_CAP_S:
            reaped = loop.time() > killed_at + LEASE_TTL_S + 0.5
            if in_a_row >= REFUSALS_TO_STOP and reaped:
                return
            x = rng.normal(size=4).astype(np.float32)
            try:
                d = await router.Select(
                    pb.SelectRequest(
                        tenant="acme", router="chat", embedding=pb.Embedding(values=x)
                    ),
                    timeout=5,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refused[r] += 1
                    in_a_row += 1
                    await asyncio.sleep(0.1)
                    continue
                assert r == REPLICAS - 1, exc  # only the killed replica fails otherwise
                return
            served[r] += 1
            in_a_row = 0
            cost = d.expected_cost_usd * float(rng.uniform(0.5, 1.0))  # never above expected
            seen_usd[0] += cost
            seen_usd[1] += cost
            try:
                await router.Feedback(
                    pb.FeedbackRequest(
                        tenant="acme", decision_id=d.decision_id, reward=1.0, cost_usd=cost
                    ),
                    timeout=5,
                )
            except grpc.aio.AioRpcError:
                assert r == REPLICAS - 1
                seen_usd[1] += d.expected_cost_usd - cost  # charged at the expected cost
                return

    async def kill() -> None:
        nonlocal killed_at
        await wait_until(lambda: served[-1] >= KILL_AFTER, "the last replica to serve")
        replicas[-1].proc.send_signal(signal.SIGKILL)
        killed_at = loop.time()

    await asyncio.gather(kill(), *(worker(r, w) for r in range(REPLICAS) for w in range(WORKERS)))
    for channel in channels:
        await channel.close()
    for replica in replicas[:-1]:  # a clean stop returns the survivors' leases
        replica.proc.send_signal(signal.SIGTERM)
        assert replica.proc.wait(timeout=30) == 0

    engine = create_engine(postgres_url.replace("+asyncpg", "+psycopg"))
    try:
        with engine.connect() as conn:
            ledger = conn.execute(select(budget_ledger)).one()
            open_leases = conn.scalar(
                select(func.count()).where(budget_leases.c.closed_at.is_(None))
            )
            leases = conn.execute(select(budget_leases)).all()
            charges = conn.scalar(select(func.count()).select_from(budget_charges))
    finally:
        engine.dispose()
    # The killed replica's leases were closed by another replica after they expired.
    reaped = [lease for lease in leases if lease.closed_at > lease.expires_at]
    killed_used = sum(lease.used_usd for lease in reaped)
    print(
        f"\nbudget ${LIMIT}: committed ${ledger.spent_usd:.6f} "
        f"({ledger.spent_usd / LIMIT:.2%}), leased ${ledger.leased_usd:.6f}, "
        f"served {served} (refused {refused}), charges {charges}, leases {len(leases)}, "
        f"killed replica's leases used ${killed_used:.6f}, "
        f"callers saw ${seen_usd[0]:.6f} to ${seen_usd[1]:.6f}"
    )
    assert open_leases == 0  # the killed replica's lease expired and was closed
    assert ledger.leased_usd == pytest.approx(0.0, abs=1e-12)  # nothing held
    # Actual costs never exceed the expected ones here, so the bound is the limit itself.
    assert ledger.spent_usd <= LIMIT + 1e-9
    assert ledger.spent_usd >= seen_usd[0] - 1e-9  # every decision a caller got is counted
    assert ledger.spent_usd >= 0.9 * LIMIT  # and the budget was used, not stranded in leases
    assert reaped and killed_used > 0  # counted, though its holder never returned it
    assert served[-1] > 0 and all(served[:-1])
    assert sum(refused[:-1]) > 0  # the survivors ran it down to exhaustion
