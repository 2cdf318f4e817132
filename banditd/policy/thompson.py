"""Linear Thompson sampling (Agrawal & Goyal 2013) with the one-context exact shortcut."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt

from banditd.domain import FloatArray
from banditd.domain.ceilings import finite_scores
from banditd.policy import _kernels
from banditd.policy.base import Choice, Estimates, IntArray, Policy, Rng

PROPENSITY_DRAWS = 256


class Thompson(Policy):
    name = "thompson"

    def quality_scores(
        self, post: Estimates, arm_idx: IntArray, x: FloatArray, rng: Rng
    ) -> FloatArray:
        normals = rng.standard_normal(len(arm_idx))
        return _kernels.thompson_scores(
            post.a_inv, post.theta, arm_idx, x, self.exploration, normals
        )

    def _wins(
        self, post: Estimates, arm_idx: IntArray, x: FloatArray, cost_term: FloatArray, rng: Rng
    ) -> npt.NDArray[np.int64]:
        """How often each eligible arm wins among PROPENSITY_DRAWS posterior draws."""
        mean = _kernels.mean_scores(post.theta, arm_idx, x) - cost_term
        spread = self.exploration * np.sqrt(_kernels.variances(post.a_inv, arm_idx, x))
        draws = mean + spread * rng.standard_normal((PROPENSITY_DRAWS, len(arm_idx)))
        return np.bincount(np.argmax(draws, axis=1), minlength=len(arm_idx))

    def priced_choice(
        self, post: Estimates, arm_idx: IntArray, x: FloatArray, cost_term: FloatArray, rng: Rng
    ) -> Choice:
        """The base ranking on one posterior draw; its propensity is the share of resampled
        draws (plus the one acted on) in which the chosen arm wins."""
        choice = super().priced_choice(post, arm_idx, x, cost_term, rng)
        wins = self._wins(post, arm_idx, x, finite_scores(cost_term), rng)
        return replace(choice, propensity=(int(wins[choice.chosen]) + 1) / (PROPENSITY_DRAWS + 1))

    def priced_probabilities(
        self, post: Estimates, arm_idx: IntArray, x: FloatArray, cost_term: FloatArray, rng: Rng
    ) -> FloatArray:
        """Each eligible arm's share of PROPENSITY_DRAWS posterior draws: a Monte Carlo estimate,
        unbiased, so importance weights built on it stay unbiased too."""
        wins = self._wins(post, arm_idx, x, cost_term, rng)
        return np.asarray(wins / PROPENSITY_DRAWS, dtype=np.float64)
