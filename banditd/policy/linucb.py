"""Disjoint LinUCB (Li et al. 2010): optimism in the face of uncertainty, deterministic.

Cost-aware: when choosing, an arm's bonus is divided by 1 + its cost term (cost weight x
expected cost, in quality), so an expensive arm must promise more before it is explored, and at
high cost weights the priciest arms are not explored at all (issue 18). Without a cost weight it
is plain LinUCB.
"""

from __future__ import annotations

import numpy as np

from banditd.domain import FloatArray
from banditd.policy import _kernels
from banditd.policy.base import Estimates, IntArray, Policy, Rng


class LinUCB(Policy):
    name = "linucb"

    def quality_scores(
        self, post: Estimates, arm_idx: IntArray, x: FloatArray, rng: Rng
    ) -> FloatArray:
        return _kernels.linucb_scores(post.a_inv, post.theta, arm_idx, x, self.exploration)

    def priced_quality_scores(
        self, post: Estimates, arm_idx: IntArray, x: FloatArray, cost_term: FloatArray, rng: Rng
    ) -> FloatArray:
        return _kernels.cost_aware_linucb_scores(
            post.a_inv, post.theta, arm_idx, x, self.exploration, np.maximum(cost_term, 0.0)
        )
