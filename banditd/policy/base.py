"""The policy interface: a policy scores quality; the base class turns scores into a choice.

A new policy is one subclass that fills in ``quality_scores``, registered in
``banditd.policy.POLICIES``; one whose scores depend on the arms' prices (cost-aware exploration)
overrides ``priced_quality_scores`` too. The base ranking is deterministic (propensity 1); a
randomised policy overrides ``priced_choice`` (its propensity, or the ranking itself) and
``priced_probabilities``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from banditd.domain import FloatArray, RouterSpec, record
from banditd.domain.ceilings import finite_scores
from banditd.policy import _kernels

IntArray = npt.NDArray[np.int64]
Rng = np.random.Generator


class PriorMean(Protocol):
    @property
    def quality(self) -> float: ...


class Estimates(Protocol):
    """What a policy reads of a router's posterior (``banditd.state.posterior.Posterior``, which
    satisfies this): per arm, the ridge means ``theta`` (n, d) and inverse design matrices
    ``a_inv`` (n, d, d). A protocol, so that the policies import nothing of ``banditd.state``."""

    @property
    def arms(self) -> list[str]: ...
    @property
    def theta(self) -> FloatArray: ...
    @property
    def a_inv(self) -> FloatArray: ...
    @property
    def prior(self) -> PriorMean: ...


@record
class Choice:
    """A ranked choice among eligible arms.

    order: positions into the eligible arms, best first, shape (k,).
    quality, utility: per eligible arm, shape (k,).
    """

    order: IntArray
    quality: FloatArray
    utility: FloatArray
    propensity: float
    explored: bool

    @property
    def chosen(self) -> int:
        return int(self.order[0])

    def forced(self, position: int) -> Choice:
        """The same scores with the eligible arm at ``position`` chosen by rule (propensity 1)."""
        order = np.concatenate([[position], self.order[self.order != position]]).astype(np.int64)
        return Choice(order, self.quality, self.utility, 1.0, position != self.chosen)


class Policy(ABC):
    name: ClassVar[str]

    def __init__(self, exploration: float) -> None:
        self.exploration = exploration

    @classmethod
    def of(cls, spec: RouterSpec) -> Policy:
        """This policy for a router: with its exploration (``spec.alpha``)."""
        return cls(spec.alpha)

    @abstractmethod
    def quality_scores(
        self, post: Estimates, arm_idx: IntArray, x: FloatArray, rng: Rng
    ) -> FloatArray:
        """Quality score per eligible arm, shape (k,); arm_idx: posterior indices, shape (k,)."""

    def priced_quality_scores(
        self, post: Estimates, arm_idx: IntArray, x: FloatArray, cost_term: FloatArray, rng: Rng
    ) -> FloatArray:
        """Quality score per eligible arm when each costs cost_term (cost weight x expected
        cost, shape (k,)) of quality; by default the same as ``quality_scores``."""
        return self.quality_scores(post, arm_idx, x, rng)

    def choose(
        self,
        post: Estimates,
        arm_idx: IntArray,
        x: FloatArray,
        expected_cost: FloatArray,
        cost_weight: float,
        rng: Rng,
        *,
        other_term: FloatArray | None = None,
    ) -> Choice:
        """Rank eligible arms by quality - cost_weight * expected cost (ties: configured order).

        expected_cost: USD per eligible arm, shape (k,).
        other_term: utility lost to latency and energy per eligible arm, shape (k,), or None;
        it is priced like cost (cost-aware exploration sees the whole price).
        Scores are finite by construction (NaN ranks last), so a ranking can always be logged.
        """
        cost_term = _cost_term(expected_cost, cost_weight, other_term)
        return self.priced_choice(post, arm_idx, x, cost_term, rng)

    def probabilities(
        self,
        post: Estimates,
        arm_idx: IntArray,
        x: FloatArray,
        expected_cost: FloatArray,
        cost_weight: float,
        rng: Rng,
        *,
        other_term: FloatArray | None = None,
    ) -> FloatArray:
        """The probability that ``choose`` ranks each eligible arm first, shape (k,): for
        off-policy evaluation and shadows."""
        cost_term = _cost_term(expected_cost, cost_weight, other_term)
        return self.priced_probabilities(post, arm_idx, x, cost_term, rng)

    # The hooks of choose and probabilities, once the price is one cost term per eligible arm.

    def priced_choice(
        self, post: Estimates, arm_idx: IntArray, x: FloatArray, cost_term: FloatArray, rng: Rng
    ) -> Choice:
        """Quality and utility (quality - cost_term) made finite, the arms ranked by utility
        (ties: configured order), explored when the first is not the greedy arm (the best
        posterior mean less cost_term): one kernel call (``_kernels.ranked_choice``)."""
        cost_term = finite_scores(cost_term)
        scores = self.priced_quality_scores(post, arm_idx, x, cost_term, rng)
        quality, utility, order, explored = _kernels.ranked_choice(
            scores, cost_term, post.theta, arm_idx, x
        )
        return Choice(order, quality, utility, 1.0, bool(explored))

    def priced_probabilities(
        self, post: Estimates, arm_idx: IntArray, x: FloatArray, cost_term: FloatArray, rng: Rng
    ) -> FloatArray:
        """Deterministic policies put 1 on their choice."""
        out = np.zeros(len(arm_idx))
        out[Policy.priced_choice(self, post, arm_idx, x, cost_term, rng).chosen] = 1.0
        return out


def _cost_term(
    expected_cost: FloatArray, cost_weight: float, other_term: FloatArray | None
) -> FloatArray:
    """The utility each eligible arm loses to its price: cost_weight x USD, plus latency and
    energy (other_term)."""
    priced = cost_weight * expected_cost
    return priced if other_term is None else priced + other_term
