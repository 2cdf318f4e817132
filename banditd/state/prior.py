"""Where a router's posterior starts (banditd.state.posterior): its prior, and what decides which
logged events are its data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from banditd.domain import FloatArray, RouterSpec
from banditd.policy.priors import PRICE_TIER_SPREAD, price_tier_quality

PRIOR_INPUT_TOKENS = 500.0  # input size assumed for embedding-only requests before any report


@dataclass(frozen=True)
class Prior:
    """Where every arm's statistics start and how they age: with the events, this fixes a posterior.

    An arm with no feedback has A = weight * I and b = weight * q * e0 (x[0] is the intercept),
    so its mean quality is q with ``weight`` observations behind it: q is the arm's entry in
    ``arm_quality`` (the router's price-tier prior, banditd.policy.priors), else ``quality``.
    The posterior's shared level then moves every arm's q alike (Posterior.theta). Each update
    of an arm first discounts its A and b by ``forgetting``; each refactorisation puts back what
    that took of the prior, so A keeps weight x forgetting^64 of it. Events decided before router
    version ``context_since``, when the router last changed how it builds x, are not its data;
    nor are events whose x other encoder weights built (``weights``, ContextPipeline.weights:
    the weights of a new encoder package, a new distillation; "" where x is given: no filter).
    """

    dim: int
    quality: float = 0.0
    weight: float = 1.0
    forgetting: float = 1.0
    arm_quality: tuple[tuple[str, float], ...] = ()
    context_since: int = 0
    weights: str = ""

    @classmethod
    def of(cls, spec: RouterSpec, context_since: int = 0, weights: str = "") -> Prior:
        prices = np.array(
            [a.cost_usd(PRIOR_INPUT_TOKENS, spec.prior_output_tokens) for a in spec.arms]
        )
        tiers = price_tier_quality(prices, spec.prior_quality, PRICE_TIER_SPREAD)
        arm_quality = tuple(
            (a.name, float(q))
            for a, q in zip(spec.arms, tiers, strict=True)
            if float(q) != spec.prior_quality
        )
        return cls(
            spec.dim,
            spec.prior_quality,
            spec.prior_weight,
            spec.forgetting,
            arm_quality,
            context_since,
            weights,
        )

    def quality_of(self, arms: list[str]) -> FloatArray:
        """The prior mean quality of each arm, shape (len(arms),)."""
        tiers = dict(self.arm_quality)
        return np.array([tiers.get(arm, self.quality) for arm in arms], dtype=np.float64)
