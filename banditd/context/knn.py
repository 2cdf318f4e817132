"""kNN outcome features: how the nearest past prompts went, per arm.

A router with ``knn_k`` > 0 keeps a FAISS index of the (reduced, unit-length) embeddings of past
prompts whose feedback has arrived, with each one's arm and reward. For a new prompt x gets, per
arm of the router (in config order), two features from its k nearest neighbours (inner product =
cosine similarity, negatives counted as 0):

- the similarity-weighted mean reward of the neighbours that arm served (0 when none did), and
- the share of the k neighbours that arm served (so a sparse neighbourhood is visible).

The index is a pure function of the router's feedback log (event id order; default rewards left
out), like the posterior: it grows as events are applied and is rebuilt from the log on restart.
It starts flat (exact) and becomes approximate once it holds ``approx_after`` vectors: HNSW on
the CPU, IVF-Flat on the GPU. Where it lives is the process's choice (banditd.context.device):
on a machine with a GPU (``faiss.get_num_gpus() > 0``, the ``gpu`` extra) every router's index
is on GPU 0, sharing the process's one ``StandardGpuResources``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from banditd.context.device import FaissDevice, faiss_device
from banditd.domain import FloatArray

# One query per Select: faiss's OpenMP pool costs more than it saves (about 1 ms against 0.1 ms
# for a 11k-vector flat search on 2 busy cores), so searches run on the calling thread.
faiss.omp_set_num_threads(1)

DEFAULT_APPROX_AFTER = 100_000


class OutcomeIndex:
    """Embeddings of served prompts with their arm and reward. dim: embedding size; device:
    where the index lives (default: the process's choice)."""

    def __init__(
        self,
        dim: int,
        arms: Sequence[str],
        k: int,
        approx_after: int = DEFAULT_APPROX_AFTER,
        device: FaissDevice | None = None,
    ) -> None:
        self.dim, self.k, self.approx_after = dim, k, approx_after
        self.device = device if device is not None else faiss_device()
        self.arms = {name: i for i, name in enumerate(arms)}
        self.n_arms = len(arms)
        # Row buffers with spare capacity (doubled when full), so an add copies nothing already
        # held; the first ``size`` rows are the outcomes.
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._arm_idx: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._rewards: FloatArray = np.zeros(0)
        self.approximate = False
        self.index: faiss.Index = self.device.flat(dim)
        self.last_event_id = 0

    def __deepcopy__(self, memo: dict[int, object]) -> OutcomeIndex:
        """An independent copy on the same device (replay forks; a GPU index has no pickle)."""
        twin = copy.copy(self)
        twin.arms = dict(self.arms)
        twin._vectors, twin._arm_idx = self.vectors.copy(), self.arm_idx.copy()
        twin._rewards = self.rewards.copy()
        twin.index = self.device.copy(self.index)
        return twin

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def vectors(self) -> npt.NDArray[np.float32]:
        """The indexed embeddings, shape (size, dim), unit length."""
        return self._vectors[: self.size]

    @property
    def arm_idx(self) -> npt.NDArray[np.int64]:
        """Each indexed outcome's arm, as its position in the router's arms."""
        return self._arm_idx[: self.size]

    @property
    def rewards(self) -> FloatArray:
        return self._rewards[: self.size]

    def add(self, vec: FloatArray, arm: str, reward: float) -> bool:
        """Index one outcome; False (nothing added) for an unknown arm or a zero vector."""
        j = self.arms.get(arm)
        unit = _unit(vec)
        if j is None or unit is None:
            return False
        n = self.size
        if n == len(self._rewards):
            self._vectors, self._arm_idx, self._rewards = (
                _grown(buf, n) for buf in (self._vectors, self._arm_idx, self._rewards)
            )
        self._vectors[n], self._arm_idx[n], self._rewards[n] = unit, j, reward
        if not self.approximate and n + 1 >= self.approx_after:
            self.index, self.approximate = self.device.approximate(self._vectors[: n + 1]), True
        else:
            self.index.add(self._vectors[n : n + 1])
        return True

    def load(
        self, vectors: npt.NDArray[np.float32], arm_idx: npt.NDArray[np.int64], rewards: FloatArray
    ) -> None:
        """Hold exactly these outcomes (unit-length rows; arms by position), in an index of the
        kind adding them one at a time would end with: how the benchmarks fill a large one."""
        self._vectors, self._arm_idx = np.array(vectors, np.float32), np.array(arm_idx, np.int64)
        self._rewards = np.array(rewards, np.float64)
        self.approximate = self.approx_after <= len(vectors)
        if self.approximate:
            self.index = self.device.approximate(self._vectors)
        else:
            self.index = self.device.flat(self.dim)
            self.index.add(self._vectors)

    def features(self, vec: FloatArray) -> FloatArray:
        """Per arm [weighted mean reward, neighbour share], shape (2 * n_arms,)."""
        out = np.zeros(2 * self.n_arms)
        unit = _unit(vec)
        if unit is None or self.size == 0:
            return out
        k = min(self.k, self.size)
        sims, ids = self.index.search(unit[None].astype(np.float32), k)
        keep = ids[0] >= 0
        return neighbour_features(
            np.maximum(sims[0][keep].astype(np.float64), 0.0),
            self.arm_idx[ids[0][keep]],
            self.rewards[ids[0][keep]],
            self.n_arms,
            self.k,
        )


def neighbour_features(
    sims: FloatArray, arm_idx: npt.NDArray[np.int64], rewards: FloatArray, n_arms: int, k: int
) -> FloatArray:
    """The features of a neighbourhood: sims, arm_idx, rewards of shape (m,), m <= k."""
    out = np.zeros(2 * n_arms)
    weight = np.bincount(arm_idx, weights=sims, minlength=n_arms)
    total = np.bincount(arm_idx, weights=sims * rewards, minlength=n_arms)
    count = np.bincount(arm_idx, minlength=n_arms)
    out[0::2] = np.divide(total, weight, out=np.zeros(n_arms), where=weight > 0)
    out[1::2] = count / k
    return out


def _grown(buf: npt.NDArray[Any], n: int) -> npt.NDArray[Any]:
    """buf's first n rows in a buffer of twice the capacity (at least 64 rows)."""
    out = np.zeros((max(2 * n, 64), *buf.shape[1:]), dtype=buf.dtype)
    out[:n] = buf[:n]
    return out


def _unit(vec: FloatArray) -> FloatArray | None:
    norm = float(np.linalg.norm(vec))
    return None if norm == 0.0 or not np.isfinite(norm) else vec / norm
