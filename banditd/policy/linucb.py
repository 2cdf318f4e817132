"""Disjoint LinUCB (Li et al. 2010): optimism in the face of uncertainty, deterministic."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from banditd.domain import FloatArray
from banditd.policy import _kernels
from banditd.policy.base import IntArray, Policy

if TYPE_CHECKING:  # posterior imports the kernels of this package
    from banditd.posterior import Posterior


class LinUCB(Policy):
    name = "linucb"

    def quality_scores(
        self, post: Posterior, arm_idx: IntArray, x: FloatArray, rng: np.random.Generator
    ) -> FloatArray:
        return _kernels.linucb_scores(post.a_inv, post.theta, arm_idx, x, self.exploration)
