"""The delayed join (compact tokens, issue 20): parked feedback meets its decision.

Every replica runs it with each round of the log tail, before the tail's default rewards (a
decision whose feedback is parked must get that feedback, not the default). A round claims the
parked rows whose decision is visible now, in the order they were parked (a claim is one
replica's: banditd.store.pending), and commits them through the Feedback flow's own validation
and commit (``Learner.join``): they become ordinary events of the log, which every replica folds
in id order. The commit marks each row joined in the transaction that appends its event, where
the row is still waiting: a row whose claim was taken for dead and joined by another replica
is applied by one of the two, never both. A row whose decision does not appear within
``feedback_join_wait_s`` of its arrival (lost in a crash, or dropped from a full decision log)
is marked orphaned: kept, never applied, counted in ``banditd_feedback_unjoined_total``. A row
the join refuses (a stored request that cannot be read back included: ``parked_input``) is
marked refused: kept, never tried again, counted in ``banditd_feedback_join_refused_total``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from banditd import metrics
from banditd.errors import Unavailable
from banditd.flows.feedback import Learner
from banditd.store.pending import PendingStore

log = structlog.get_logger(__name__)
JOIN_BATCH = 1000  # parked rows claimed per transaction


class Joiner:
    def __init__(
        self,
        store: PendingStore,
        learner: Learner,
        wait_s: float,
        clock: Callable[[], float] = time.time,
        router_name: Callable[[int], str] = lambda router_id: "",
    ) -> None:
        self._store = store
        self._learner = learner
        self._wait_s = wait_s
        self._clock = clock
        self._router_name = router_name  # by router id, for metrics (Catalog.name_of)

    async def run(self) -> int:
        """One round: join what can be joined, mark what waited too long; the rows joined."""
        joined = 0
        # The time of each claim, not the round's: a round through a backlog can outlast
        # CLAIM_TIMEOUT_S, and a claim stamped earlier would look dead to other replicas.
        while items := await self._store.claim(JOIN_BATCH, now := self._clock()):
            done, refused = await self._learner.join(items, now)  # marked joined as committed
            retry = [i for i, exc in refused if isinstance(exc, Unavailable)]
            bad = [(i, exc) for i, exc in refused if not isinstance(exc, Unavailable)]
            await self._store.settle([i for i, _ in bad], "refused", now)
            await self._store.settle(retry, "pending", now)
            decisions = {i.pending_id: i.decision for i in items}
            for pending_id, exc in bad:
                decision = decisions[pending_id]
                router = self._router_name(decision.router_id)
                metrics.FEEDBACK_JOIN_REFUSED.labels(decision.tenant, router).inc()
                log.warning(
                    "feedback_join_refused",
                    pending_id=pending_id,
                    tenant=decision.tenant,
                    router=router,
                    error=exc.message,
                )
            joined += len(done)
            if retry or len(items) < JOIN_BATCH:
                break
        now = self._clock()
        for tenant, router in await self._store.orphan(now - self._wait_s, now):
            metrics.FEEDBACK_UNJOINED.labels(tenant, router).inc()
            log.warning("feedback_unjoined", tenant=tenant, router=router)
        if joined:
            log.info("feedback_joined", events=joined)
        return joined
