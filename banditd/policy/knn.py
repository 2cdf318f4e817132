"""kNN: rank arms by how the nearest past prompts went (banditd.context.knn), not the posterior.

Per arm, the neighbours' similarity-weighted mean reward shrunk to the prior quality by one
pseudo-count, plus exploration / sqrt(neighbours + 1); the base class prices it as any policy.
Replay only (`banditd replay --policy knn`): a router cannot be configured with it
(``banditd.domain.ROUTER_POLICIES``), because x's kNN features follow the router's arm order,
which is the posterior's only for a router whose arms never changed, as in a replay.
"""

from __future__ import annotations

import numpy as np

from banditd.domain import FloatArray, RouterSpec
from banditd.policy.base import Estimates, IntArray, Policy

DEFAULT_K = 20  # neighbours, for a router (replay) that does not set knn_k


class KNN(Policy):
    name = "knn"

    def __init__(self, exploration: float, k: int = DEFAULT_K) -> None:
        super().__init__(exploration)
        self.k = k  # the neighbours searched (the router's knn_k)

    @classmethod
    def of(cls, spec: RouterSpec) -> Policy:
        return cls(spec.alpha, spec.knn_k)

    def quality_scores(
        self, post: Estimates, arm_idx: IntArray, x: FloatArray, rng: np.random.Generator
    ) -> FloatArray:
        """x's last 2 values per posterior arm are its kNN features, [mean reward, neighbour
        share] (arm_idx: posterior indices, the router's arm positions in a replay); an x
        without them has no neighbours (each arm at the prior)."""
        width = 2 * len(post.arms)
        feats = x[len(x) - width :] if width <= len(x) else np.zeros(width)
        n = feats[1::2] * self.k
        quality = (feats[0::2] * n + post.prior.quality) / (n + 1.0)
        scores: FloatArray = (quality + self.exploration / np.sqrt(n + 1.0))[arm_idx]
        return scores
