"""The implementations `banditd bench kernels` times, on one shared workload.

banditd's Numba kernels (LinUCB and Thompson), the same LinUCB maths in plain NumPy, MABWiser
(LinUCB, LinTS) and Vowpal Wabbit; each is driven by an index into the workload's stream. The
baselines come from the `bench` extra and are left out (with a note on stderr) when absent.
"""

from __future__ import annotations

import functools
import importlib
import math
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from banditd.domain import FloatArray
from banditd.policy import _kernels

ALPHA = 1.0  # LinUCB exploration and Thompson scale, for banditd and MABWiser alike
VW_ARGS = "--cb_explore_adf -q sa --quiet"
STREAM = 1024  # distinct timed contexts, cycled; also the contexts of the largest batch
SEED = 20_240


@dataclass(frozen=True)
class Workload:
    """One d's shared history and timed stream; contexts carry an intercept in x[0]."""

    dim: int
    n_arms: int
    hist_x: FloatArray  # (history, dim)
    hist_arm: npt.NDArray[np.int64]  # (history,)
    hist_r: FloatArray  # (history,)
    xs: FloatArray  # (STREAM, dim)
    rs: list[float]  # (STREAM,)

    @classmethod
    def make(cls, dim: int, n_arms: int, history: int) -> Workload:
        rng = np.random.default_rng(SEED + dim)

        def contexts(n: int) -> FloatArray:
            x = rng.standard_normal((n, dim)) / math.sqrt(dim)
            x[:, 0] = 1.0
            return x

        return cls(
            dim=dim,
            n_arms=n_arms,
            hist_x=contexts(history),
            hist_arm=rng.integers(0, n_arms, history),
            hist_r=rng.random(history),
            xs=contexts(STREAM),
            rs=rng.random(STREAM).tolist(),
        )

    def state(self) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """Fresh (A, A^-1, b, theta) per arm after the history: A = I + sum x x^T, b = sum r x.

        The same ridge statistics MABWiser's fit computes with l2_lambda = 1.
        """
        a = np.repeat(np.eye(self.dim)[None], self.n_arms, axis=0)
        b = np.zeros((self.n_arms, self.dim))
        for arm in range(self.n_arms):
            mask = self.hist_arm == arm
            a[arm] += self.hist_x[mask].T @ self.hist_x[mask]
            b[arm] = self.hist_x[mask].T @ self.hist_r[mask]
        a_inv = np.asarray(np.linalg.inv(a), dtype=np.float64)
        theta = np.ascontiguousarray(np.einsum("kij,kj->ki", a_inv, b), dtype=np.float64)
        return a, a_inv, b, theta


class Impl(ABC):
    """One implementation's bandit state, driven by an index into the workload's stream."""

    def __init__(self, work: Workload) -> None:
        self.n_arms = work.n_arms
        self.rs = work.rs

    @abstractmethod
    def select(self, i: int) -> int:
        """Score every arm for context i and return the best arm."""

    @abstractmethod
    def learn(self, i: int, arm: int, prob: float) -> None:
        """Update arm with context i and its reward; prob: the arm's selection probability."""

    def update(self, i: int) -> None:
        """One update, arms in turn, as if chosen uniformly."""
        self.learn(i, i % self.n_arms, 1.0 / self.n_arms)

    def select_update(self, i: int) -> None:
        """Select an arm for context i, then learn its reward."""
        self.learn(i, self.select(i), 1.0)

    def close(self) -> None:  # noqa: B027 - a hook: only Vowpal Wabbit holds native state
        """Release what the implementation holds outside Python."""


class BanditdLinUCB(Impl):
    """The banditd Numba kernels, LinUCB scores."""

    def __init__(self, work: Workload) -> None:
        super().__init__(work)
        self.a, self.a_inv, self.b, self.theta = work.state()
        self.arm_idx = np.arange(work.n_arms, dtype=np.int64)
        self.xs = list(work.xs)

    def select(self, i: int) -> int:
        x = self.xs[i % STREAM]
        return int(_kernels.linucb_scores(self.a_inv, self.theta, self.arm_idx, x, ALPHA).argmax())

    def learn(self, i: int, arm: int, prob: float) -> None:
        _kernels.sherman_morrison_update(
            self.a,
            self.a_inv,
            self.b,
            self.theta,
            arm,
            self.xs[i % STREAM],
            self.rs[i % STREAM],
            1.0,
        )


class BanditdThompson(BanditdLinUCB):
    """The banditd Numba kernels, one Thompson sample per arm."""

    def __init__(self, work: Workload) -> None:
        super().__init__(work)
        self.rng = np.random.default_rng(SEED)

    def select(self, i: int) -> int:
        normals = self.rng.standard_normal(self.n_arms)
        x = self.xs[i % STREAM]
        scores = _kernels.thompson_scores(self.a_inv, self.theta, self.arm_idx, x, ALPHA, normals)
        return int(scores.argmax())


class NumpyLinUCB(BanditdLinUCB):
    """The reference: LinUCB and the Sherman-Morrison update written in plain NumPy."""

    def select(self, i: int) -> int:
        x = self.xs[i % STREAM]
        quad = np.maximum((self.a_inv @ x) @ x, 0.0)
        return int((self.theta @ x + ALPHA * np.sqrt(quad)).argmax())

    def learn(self, i: int, arm: int, prob: float) -> None:
        x, reward = self.xs[i % STREAM], self.rs[i % STREAM]
        u = self.a_inv[arm] @ x
        self.a[arm] += np.outer(x, x)
        self.b[arm] += reward * x
        self.a_inv[arm] -= np.outer(u, u) / (1.0 + x @ u)
        self.theta[arm] = self.a_inv[arm] @ self.b[arm]


class MabWiser(Impl):
    """MABWiser's MAB with LinUCB or LinTS, fitted on the history; arms are 0..n_arms-1."""

    def __init__(self, work: Workload, mab: Any, policy: str) -> None:
        super().__init__(work)
        lp = mab.LearningPolicy
        learning = lp.LinUCB(alpha=ALPHA) if policy == "linucb" else lp.LinTS(alpha=ALPHA)
        self.mab = mab.MAB(list(range(work.n_arms)), learning, seed=SEED)
        self.mab.fit(work.hist_arm, work.hist_r, work.hist_x)
        self.contexts = [work.xs[k : k + 1] for k in range(STREAM)]

    def select(self, i: int) -> int:
        return int(self.mab.predict(self.contexts[i % STREAM]))

    def learn(self, i: int, arm: int, prob: float) -> None:
        self.mab.partial_fit([arm], [self.rs[i % STREAM]], self.contexts[i % STREAM])


class VowpalWabbit(Impl):
    """A Vowpal Wabbit workspace fed ADF text examples: `shared |s` d features, one `|a` per arm.

    Contexts are formatted to text beforehand; predict and learn include VW's own parsing. The
    history is learnt as logged by a uniform policy (cost = -reward, probability 1/n_arms).
    """

    def __init__(self, work: Workload, vw: Any) -> None:
        super().__init__(work)
        self.ws = vw.Workspace(VW_ARGS)
        self.actions = [f"|a arm=arm{k}" for k in range(work.n_arms)]
        self.shared = [self._shared(x) for x in work.xs]
        self.pmf: list[float] = []
        for x, arm, reward in zip(work.hist_x, work.hist_arm, work.hist_r, strict=True):
            self.ws.learn(self._labelled(self._shared(x), int(arm), -reward, 1.0 / work.n_arms))

    @staticmethod
    def _shared(x: FloatArray) -> str:
        return "shared |s " + " ".join(f"{j}:{v:.9g}" for j, v in enumerate(x.tolist()))

    def _labelled(self, shared: str, arm: int, cost: float, prob: float) -> list[str]:
        lines = [shared, *self.actions]
        lines[1 + arm] = f"0:{cost!r}:{prob!r} {self.actions[arm]}"
        return lines

    def select(self, i: int) -> int:
        self.pmf = self.ws.predict([self.shared[i % STREAM], *self.actions])
        return self.pmf.index(max(self.pmf))

    def learn(self, i: int, arm: int, prob: float) -> None:
        cost = -self.rs[i % STREAM]
        self.ws.learn(self._labelled(self.shared[i % STREAM], arm, cost, prob))

    def select_update(self, i: int) -> None:
        arm = self.select(i)
        self.learn(i, arm, self.pmf[arm])

    def close(self) -> None:
        self.ws.finish()


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def optional(module: str, dist: str) -> Any | None:
    """Import a baseline library, or None with a note on stderr when the extra is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError:
        log(f"{dist} is not installed (pip install 'banditd[bench]'): reported as null")
        return None


def factories() -> dict[str, Callable[[Workload], Impl]]:
    """The implementations that can run here, by name; baselines only when installed."""
    factories: dict[str, Callable[[Workload], Impl]] = {
        "banditd": BanditdLinUCB,
        "banditd_ts": BanditdThompson,
        "numpy": NumpyLinUCB,
    }
    if (mab := optional("mabwiser.mab", "mabwiser")) is not None:
        factories["mabwiser_linucb"] = functools.partial(MabWiser, mab=mab, policy="linucb")
        factories["mabwiser_lints"] = functools.partial(MabWiser, mab=mab, policy="lints")
    if (vw := optional("vowpalwabbit", "vowpalwabbit")) is not None:
        factories["vw"] = functools.partial(VowpalWabbit, vw=vw)
    return factories


def compile_kernels(n_arms: int) -> float:
    """Compile (or load from Numba's cache) every kernel the bench calls; seconds taken."""
    started = time.perf_counter()
    impl = BanditdThompson(Workload.make(2, n_arms, 4))
    impl.select_update(0)
    impl.update(1)
    _kernels.linucb_scores(impl.a_inv, impl.theta, impl.arm_idx, impl.xs[0], ALPHA)
    _kernels.batch_linucb_scores(impl.a_inv, impl.theta, impl.arm_idx, np.stack(impl.xs[:2]), ALPHA)
    return time.perf_counter() - started


def numpy_batch_scores(
    a_inv: FloatArray, theta: FloatArray, xs: FloatArray, alpha: float
) -> FloatArray:
    """LinUCB scores of every arm for many contexts in NumPy; xs (n, d) -> (n, n_arms)."""
    quad: FloatArray = np.einsum("knd,nd->nk", xs @ a_inv, xs)
    return xs @ theta.T + alpha * np.sqrt(np.maximum(quad, 0.0))


def batch_select(name: str, work: Workload, batch: int) -> Callable[[int], object]:
    """One batch select (scores, then argmax per context) of the first `batch` stream contexts."""
    _, a_inv, _, theta = work.state()
    arm_idx = np.arange(work.n_arms, dtype=np.int64)
    xs = np.ascontiguousarray(work.xs[:batch])
    if name == "banditd":
        return lambda _: _kernels.batch_linucb_scores(a_inv, theta, arm_idx, xs, ALPHA).argmax(1)
    return lambda _: numpy_batch_scores(a_inv, theta, xs, ALPHA).argmax(1)
