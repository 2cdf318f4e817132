"""Shadow policies: candidates that pick at every Select beside the live policy, never served.

A shadow scores the same eligible arms, at the same expected costs, on the live posterior, with its
own random stream (seeded from the decision's seed, salted), after the live choice is made: the live
answer, its ranking and its random draws are exactly what they would be without shadows. What a
shadow picks and its probability of the arm actually served are logged with the decision, so
GetStats and `banditd evaluate` can compare live against shadow (importance weight = that
probability / the live propensity). The extra work per Select is bounded: at most MAX_SHADOWS
shadows, each one policy scoring (plus PROPENSITY_DRAWS draws for Thompson sampling).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import structlog

from banditd.domain import FloatArray, RouterSpec, ShadowPick, ShadowSpec
from banditd.flows.ranking import Ranked, effective_cost_weight
from banditd.policy import make_policy
from banditd.state.fold import RouterState

log = structlog.get_logger(__name__)
SHADOW_SALT = 0x5EAD0B  # keeps shadows' random numbers apart from the live policy's


def _cost_weight(live: RouterSpec, shadow: ShadowSpec) -> float:
    return live.default_cost_weight if shadow.cost_weight is None else shadow.cost_weight


def shadow_spec(live: RouterSpec, shadow: ShadowSpec) -> RouterSpec:
    """The router configuration a shadow stands for (for offline evaluation)."""
    return dataclasses.replace(
        live,
        policy=shadow.policy,
        exploration=shadow.exploration,
        default_cost_weight=_cost_weight(live, shadow),
        shadows=(),
    )


def shadow_picks(
    state: RouterState, ranked: Ranked, x: FloatArray, cost_weight: float | None, seed: int
) -> tuple[ShadowPick, ...]:
    """What each of the router's shadows picks for the decision ``ranked`` (x: (dim,)).

    cost_weight: the request's own, which applies to shadows too; None for each shadow's default.
    Under a budget, as for the live choice, never less than the pacer's price.
    A shadow that fails is logged and left out: it can never fail the Select.
    """
    spec = state.spec
    if not spec.shadows:
        return ()
    post = state.posterior
    names = ranked.candidates
    priced = {r.arm: r.expected_cost_usd for r in ranked.ranking}
    arm_idx = np.array([post.index(a) for a in names], dtype=np.int64)
    costs = np.array([priced[a] for a in names])
    live = names.index(ranked.ranking[0].arm)
    other = ranked.other_term(names)  # the request's latency and energy terms apply too
    rng = np.random.default_rng(seed ^ SHADOW_SALT)  # one stream for the decision's shadows
    picks = []
    for shadow in spec.shadows:
        try:
            weight = effective_cost_weight(
                _cost_weight(spec, shadow), cost_weight, ranked.budget_price
            )
            policy = make_policy(shadow.policy, shadow.alpha)
            p = policy.probabilities(post, arm_idx, x, costs, weight, rng, other_term=other)
            # The shadow's pick is a draw from its distribution (its argmax when deterministic).
            chosen = int(np.argmax(p)) if p.max() >= 1.0 else int(rng.choice(len(p), p=p))
            picks.append(ShadowPick(shadow.name, names[chosen], float(p[live])))
        except Exception:  # a shadow must never cost the live answer
            log.exception("shadow_failed", tenant=spec.tenant, router=spec.name, shadow=shadow.name)
    return tuple(picks)
