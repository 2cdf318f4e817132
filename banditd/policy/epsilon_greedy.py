"""Epsilon-greedy on the ridge-regression means: the baseline the linear bandits must beat."""

from __future__ import annotations

from dataclasses import replace

from banditd.domain import FloatArray
from banditd.policy import _kernels
from banditd.policy.base import Choice, Estimates, IntArray, Policy, Rng


class EpsilonGreedy(Policy):
    """With probability epsilon (the router's exploration) a uniformly random eligible arm leads
    the ranking; otherwise the greedy one. Propensities are exact."""

    name = "epsilon-greedy"

    def quality_scores(
        self, post: Estimates, arm_idx: IntArray, x: FloatArray, rng: Rng
    ) -> FloatArray:
        return _kernels.mean_scores(post.theta, arm_idx, x)

    def priced_choice(
        self, post: Estimates, arm_idx: IntArray, x: FloatArray, cost_term: FloatArray, rng: Rng
    ) -> Choice:
        # The base ranking on the means is the greedy choice (propensity 1, not explored).
        choice = super().priced_choice(post, arm_idx, x, cost_term, rng)
        greedy = choice.chosen
        if rng.random() < self.exploration:
            choice = choice.forced(int(rng.integers(len(arm_idx))))
        chosen = choice.chosen
        propensity = self.exploration / len(arm_idx) + (1.0 - self.exploration) * (chosen == greedy)
        return replace(choice, propensity=propensity, explored=chosen != greedy)

    def priced_probabilities(
        self, post: Estimates, arm_idx: IntArray, x: FloatArray, cost_term: FloatArray, rng: Rng
    ) -> FloatArray:
        """epsilon / k on every eligible arm, plus 1 - epsilon on the greedy one."""
        greedy = super().priced_probabilities(post, arm_idx, x, cost_term, rng)
        return self.exploration / len(arm_idx) + (1.0 - self.exploration) * greedy
