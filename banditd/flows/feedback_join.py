"""Where Feedback finds a compact token's decision (issue 20): x and the arm names stay on the
server, in the decision.

The decision is looked for in this replica's decision log first (pending in memory: the replica
that made it never waits for its group commit), then in the ``decisions`` table. A decision
visible in neither (another replica's group commit has not landed; or it was lost) leaves the
feedback parked (``banditd.store.pending``): validated, committed, acknowledged, and joined to
the decision when the row appears (``banditd.flows.joiner``), the delayed join of
Personalizer's event model. ``park`` is the Feedback flow's step that parks it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import structlog

from banditd import metrics
from banditd.domain import JoinRecord, RouterSpec
from banditd.errors import (
    AlreadyExists,
    BanditdError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Recorded,
    ResourceExhausted,
    Unavailable,
)
from banditd.flows.decision_log import DecisionLog
from banditd.flows.feedback_guard import FeedbackGuard
from banditd.flows.feedback_input import FeedbackResult
from banditd.flows.tokens import TokenClaims
from banditd.state.live_routers import Catalog
from banditd.store.pending import Parked, PendingStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Waiting:
    """A valid feedback whose decision is not visible yet: what is parked, and what the caller
    is answered (the reward and cost as far as the token tells them)."""

    parked: Parked
    reward: float
    cost_usd: float
    arm_index: int
    challenger_index: int | None


class DecisionFinder:
    def __init__(self, store: PendingStore, log: DecisionLog | None = None) -> None:
        self.store = store
        self._log = log

    async def find(self, claims: Sequence[TokenClaims]) -> tuple[dict[str, JoinRecord], set[str]]:
        """The join records of compact tokens' decisions that are visible, by id; and the ids
        whose feedback is parked already (one query). Claims of v1 tokens (which carry x) are
        skipped."""
        found: dict[str, JoinRecord] = {}
        rest: list[str] = []
        for c in claims:
            if c.x is not None:
                continue
            pending = None if self._log is None else self._log.decision(c.decision_id)
            if pending is not None:
                found[c.decision_id] = pending.join_record()
            else:
                rest.append(c.decision_id)
        if not rest and not found:
            return found, set()
        # Found in memory or not, a decision may have feedback parked by another replica.
        rows, parked = await self.store.lookup(rest, list(found))
        found.update(rows)
        return found, parked


def joined(claims: TokenClaims, decision: JoinRecord) -> TokenClaims:
    """A compact token's claims completed from its decision: x, the arm names, the exact
    propensity and expected costs (the token has them as float32), the router's version."""
    if (
        decision.decision_id != claims.decision_id  # only a tampered parked row differs
        or decision.router_id != claims.router_id
        or decision.tenant != claims.tenant
    ):
        raise PermissionDenied("decision_id does not match its decision")
    if decision.x is None:
        raise InvalidArgument("decision_id", "its decision has no context logged")
    # Spelled out, not dataclasses.replace: about half the cost, once per feedback event.
    return TokenClaims(
        decision_id=claims.decision_id,
        tenant=claims.tenant,
        router_id=claims.router_id,
        arm=decision.arm,
        x=decision.x,
        propensity=decision.propensity,
        expected_cost_usd=decision.expected_cost_usd,
        expires_at=claims.expires_at,
        challenger=decision.challenger,
        challenger_cost_usd=decision.challenger_cost_usd,
        arm_index=claims.arm_index,
        challenger_index=claims.challenger_index,
        router_version=decision.router_version,
    )


async def park(
    catalog: Catalog,
    guard: FeedbackGuard,
    decisions: DecisionFinder | None,
    items: list[tuple[int, Waiting]],
    refused: list[tuple[int, BanditdError]],
) -> dict[int, FeedbackResult]:
    """Commit feedback whose decision is not visible yet, to be joined to it later; the result
    of each parked (once per decision; the client's feedback cap counts those parked on the arms
    the token names; a thumb answers the router's reward for it, as the join maps it), by index
    (the others are added to ``refused``: a resend of the parked feedback's idempotency key as
    Recorded, answered as it was)."""
    if not items:
        return {}
    if decisions is None:
        raise Unavailable("this server cannot join feedback to decisions")
    kept: list[tuple[int, Waiting, RouterSpec, tuple[str, ...]]] = []  # with the arms counted
    seen: set[str] = set()  # decisions kept (a second signal for one is a duplicate)
    parked: set[str] = set()
    recorded: dict[str, int] = {}
    try:
        for i, w in items:
            if w.parked.decision_id in seen:
                refused.append((i, waiting_duplicate(w.parked.decision_id)))
                continue
            try:
                async with catalog.locked(w.parked.router_id) as state:
                    if (thumb := w.parked.request.get("thumb")) is not None:
                        w = replace(w, reward=state.spec.thumb_reward(thumb == "up"))
                    names = [arm.name for arm in state.spec.arms]
                    indices = (w.arm_index, w.challenger_index)
                    arms = tuple(names[k] for k in indices if k is not None and k < len(names))
                    guard.check_cap(state.spec, state.router_id, *arms)
            except (NotFound, ResourceExhausted) as exc:
                refused.append((i, exc))
                continue
            kept.append((i, w, state.spec, arms))
            seen.add(w.parked.decision_id)
        parked, recorded = await decisions.store.park([w.parked for _, w, _, _ in kept])
    finally:  # the cap counts the feedback parked, not the attempts (a later router's load too)
        for _, w, spec, arms in kept:
            if w.parked.decision_id not in parked and spec.feedback_cap_per_key:
                guard.uncount(w.parked.router_id, *arms)
    for i, w, _, _ in kept:
        decision_id = w.parked.decision_id
        if decision_id in recorded:
            why = f"decision {decision_id} already has the feedback of this idempotency_key"
            refused.append((i, Recorded(why, recorded[decision_id], w.reward, w.cost_usd)))
        elif decision_id not in parked:
            refused.append((i, waiting_duplicate(decision_id)))
    metrics.FEEDBACK_PARKED.inc(len(parked))
    results = {}
    for i, w, _, _ in kept:
        if w.parked.decision_id in parked:
            log.info("feedback_parked", tenant=w.parked.tenant, decision_id=w.parked.decision_id)
            results[i] = FeedbackResult(0, w.reward, w.cost_usd)
    return results


def waiting_duplicate(decision_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"decision {decision_id} already has feedback (waiting for its decision row; further "
        "signals are taken once it is joined)"
    )
