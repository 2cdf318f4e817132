"""Decisions for `banditd bench feedback` to rate: logged as Select logs them, with compact tokens.

A compact token (what Select issues) carries no x: Feedback looks its decision up (this
replica's decision log, then the ``decisions`` table). So the benchmark writes decision rows
through ``Decisions.insert``, in the DecisionLog's group-commit batches, and signs
compact tokens for them with the replicas' key: what is then timed is the production feedback
path, decision lookup included, without paying for tens of thousands of Selects first.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np

from banditd.domain import Decision, RankedArm
from banditd.flows.tokens import TokenClaims, TokenSigner
from banditd.store.decisions import Decisions
from banditd.store.engine import Database
from banditd.store.pending import PendingStore

LOG_BATCH = 500  # decisions per Decisions.insert call (a DecisionLog group commit)
TOKEN_LIFETIME_S = 3600


class DecisionMaker:
    """Decisions of the benchmark router (arms ``model-0`` ..), logged in its database."""

    def __init__(
        self,
        database_url: str,
        key: str,
        tenant: str,
        router: str,
        router_id: int,
        dim: int,
        arms: int,
        seed: int = 8,
    ) -> None:
        self._url = database_url
        self._signer = TokenSigner(key.encode())
        self._tenant, self._router, self._router_id = tenant, router, router_id
        self._dim = dim
        self._arms = tuple(f"model-{k}" for k in range(arms))
        self._rng = np.random.default_rng(seed)

    def tokens(self, n: int) -> list[str]:
        """Compact tokens of n new decisions, committed to the database before they return."""
        return asyncio.run(self.logged(n))

    async def logged(self, n: int) -> list[str]:
        """``tokens``, from inside an event loop."""
        decisions = self._decisions(n)
        await self._log(decisions)
        return [d.token for d in decisions]

    def _decisions(self, n: int) -> list[Decision]:
        xs = self._rng.standard_normal((n, self._dim + 1))
        xs[:, 0] = 1.0
        arm_idx = self._rng.integers(0, len(self._arms), n)
        now = time.time()
        expires_at = float(int(now) + TOKEN_LIFETIME_S)
        ranking = tuple(
            RankedArm(arm, 0.5, 0.5, 0.0001 * (k + 1)) for k, arm in enumerate(self._arms)
        )
        out = []
        for x, a in zip(xs, arm_idx, strict=True):
            decision_id, arm = str(uuid.uuid4()), int(a)
            token = self._signer.sign(
                TokenClaims(
                    decision_id=decision_id,
                    tenant=self._tenant,
                    router_id=self._router_id,
                    arm="",
                    x=None,
                    propensity=1.0 / len(self._arms),
                    expected_cost_usd=ranking[arm].expected_cost_usd,
                    expires_at=expires_at,
                    arm_index=arm,
                )
            )
            out.append(
                Decision(
                    decision_id=decision_id,
                    router_id=self._router_id,
                    tenant=self._tenant,
                    router=self._router,
                    request_id=None,
                    arm=self._arms[arm],
                    ranking=ranking,
                    propensity=1.0 / len(self._arms),
                    explored=False,
                    expected_cost_usd=ranking[arm].expected_cost_usd,
                    token=token,
                    expires_at=expires_at,
                    created_at=now,
                    policy="linucb",
                    router_version=1,
                    seed=0,
                    candidates=self._arms,
                    x=x,
                )
            )
        return out

    def parked(self) -> int:
        """Feedback parked waiting for its decision (0 when every lookup found its row)."""
        return asyncio.run(self._parked())

    async def _parked(self) -> int:
        db = Database(self._url)
        try:
            store = PendingStore(db)
            return sum(
                [
                    await store.count(s)
                    for s in ("pending", "joining", "joined", "orphaned", "refused")
                ]
            )
        finally:
            await db.close()

    async def _log(self, decisions: list[Decision]) -> None:
        db = Database(self._url)
        try:
            table = Decisions(db)
            for i in range(0, len(decisions), LOG_BATCH):
                await table.insert(decisions[i : i + LOG_BATCH])
        finally:
            await db.close()
