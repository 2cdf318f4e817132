"""The dueling pick: a challenger for the arm a policy chose, for pairwise feedback (issue 21).

As in FGTS.CDB (dueling-bandit Thompson sampling), the challenger is the best arm of a second,
independent posterior draw among the eligible arms other than the first pick, scored on the same
utility as the live choice (quality - cost weight x USD - latency and energy terms). Whatever the
router's policy, the draw is Thompson's: a deterministic policy would otherwise always put its
runner-up in the duel and never learn about the others.
"""

from __future__ import annotations

import numpy as np

from banditd.domain import FloatArray
from banditd.domain.ceilings import finite_scores
from banditd.policy import _kernels
from banditd.policy.base import Estimates, IntArray


def challenger(
    post: Estimates,
    arm_idx: IntArray,
    x: FloatArray,
    cost_term: FloatArray,
    first: int,
    rng: np.random.Generator,
    exploration: float,
) -> int | None:
    """Position (into ``arm_idx``) of the challenger of the arm at position ``first``; None
    when no other arm is eligible. Draws from ``rng`` only when there is a duel to pick.

    cost_term: utility each eligible arm loses to its price, latency and energy, shape (k,).
    """
    if len(arm_idx) < 2:
        return None
    normals = rng.standard_normal(len(arm_idx))
    sampled = _kernels.thompson_scores(post.a_inv, post.theta, arm_idx, x, exploration, normals)
    utility = finite_scores(sampled - cost_term)
    utility[first] = -np.inf
    return int(np.argmax(utility))
