"""A router's serving state, and the one way feedback events fold into it.

``RouterState.fresh(spec)`` is a router before any event: every configured arm at its prior,
every breaker closed, an empty kNN index. ``fold(state, events)`` applies events in id order to
every part that learns from them: the posterior (quality, with pairwise duels; cost, token,
latency and energy heads: ``Posterior.apply``), arm health (``ArmHealth.observe``) and, where the
router has one, the kNN outcome index (``ContextPipeline.observe``). Live routers
(banditd.state.live_routers), replay, the OPE proof, the Evaluate RPC and warm start all rebuild
state through these two, so what a replay learnt is what a server would have.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from banditd.context.pipeline import ContextPipeline
from banditd.domain import FeedbackEvent, RouterSpec
from banditd.errors import BadData
from banditd.policy import POLICIES, Policy
from banditd.policy.base import IntArray
from banditd.state.breaker import ArmHealth
from banditd.state.posterior import Posterior
from banditd.state.prior import Prior


@dataclass
class RouterState:
    router_id: int
    spec: RouterSpec
    policy: Policy
    posterior: Posterior
    events_since_snapshot: int = 0
    # Decisions this process forced onto arms short of feedback (explore_new_arm), by arm name.
    forced_picks: dict[str, int] = field(default_factory=dict)
    # Decisions made before this were all checked for a default reward (see Catalog).
    defaults_checked_until: float = 0.0
    # Arm health, folded from the same events as the posterior (see banditd.state.breaker).
    health: ArmHealth = field(default_factory=ArmHealth)
    # Request -> x (banditd.context.pipeline), and the kNN index ``fold`` feeds; None: x is
    # given (the OPE proof's precomputed contexts, the Evaluate RPC's logged ones).
    context: ContextPipeline | None = None
    # Events the posterior skipped and the catalog has not reported yet (dead letters).
    skipped: list[tuple[FeedbackEvent, BadData]] = field(default_factory=list)
    # arm_rows's answer, with the spec and posterior it is for.
    _rows: tuple[RouterSpec, Posterior, IntArray] | None = field(
        default=None, repr=False, compare=False
    )

    def arm_rows(self) -> IntArray:
        """The posterior's row of each of spec.arms, in order (read-only): built once per spec
        and posterior (a posterior's rows never move), not on every Select."""
        kept = self._rows
        if kept is None or kept[0] is not self.spec or kept[1] is not self.posterior:
            rows = np.array([self.posterior.index(a.name) for a in self.spec.arms], dtype=np.int64)
            rows.flags.writeable = False
            kept = self._rows = (self.spec, self.posterior, rows)
        return kept[2]

    @classmethod
    def fresh(
        cls,
        spec: RouterSpec,
        router_id: int = 0,
        *,
        context: ContextPipeline | None = None,
        policy: str | None = None,
        context_since: int = 0,
    ) -> RouterState:
        """The router before any event. ``policy``: a registered policy to run instead of the
        router's own (replay's ``knn``), with the router's exploration; ``context_since``: the
        router version since which it builds x as now (StoredRouter's). The posterior folds
        only events whose x the context's encoder weights built (all where x is given)."""
        weights = "" if context is None else context.weights
        prior = Prior.of(spec, context_since, weights)
        posterior = Posterior.empty(prior, spec.prior_output_tokens)
        for arm in spec.arms:
            posterior.index(arm.name)
        return cls(
            router_id,
            spec,
            POLICIES[policy or spec.policy].of(spec),
            posterior,
            health=ArmHealth(spec.breaker),
            context=context,
        )

    def resume(self, posterior: Posterior, health: ArmHealth) -> None:
        """Go on from a snapshot's posterior and arm health (the router's current prior output
        tokens and arms apply); the events after it are still to fold."""
        posterior.prior_output_tokens = self.spec.prior_output_tokens
        for arm in self.spec.arms:
            posterior.index(arm.name)
        self.posterior, self.health = posterior, health


def fold(state: RouterState, events: Sequence[FeedbackEvent]) -> None:
    """Apply events that follow the last applied one, in id order, to every part of the state.

    An event the posterior skips (a non-finite number, logged before issue 17) changes nothing
    else and is kept in ``state.skipped`` for reporting. Only served calls judge an arm's health,
    each once: offline (warm-start) events, default rewards and a decision's later signals do
    not. The kNN index takes each event once, by id (``ContextPipeline.observe``)."""
    state.events_since_snapshot += len(events)
    posterior, health, context = state.posterior, state.health, state.context
    for event in events:
        problem = posterior.apply(event)
        if problem is not None:
            state.skipped.append((event, BadData(f"event skipped by the posterior: {problem}")))
            continue
        if not (event.offline or event.defaulted or event.signal):
            health.observe(event.arm, event.error, event.created_at)
        if context is not None:
            context.observe(event)
