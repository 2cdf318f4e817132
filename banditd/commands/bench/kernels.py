"""`banditd bench kernels`: per-call latency of the policy kernels against baselines, one run.

Every implementation starts from the same history (same contexts, arms and rewards, same d and
number of arms) and is then driven by the same stream of contexts and rewards:

  banditd            Numba LinUCB kernels (linucb_scores + argmax, sherman_morrison_update)
  banditd_ts         Numba Thompson kernel (thompson_scores + argmax), same update
  numpy              the same LinUCB maths in plain NumPy (matmul scores, np.outer update)
  mabwiser_linucb    MABWiser LinUCB: predict / partial_fit of one context
  mabwiser_lints     MABWiser LinTS: predict / partial_fit of one context
  vw                 Vowpal Wabbit --cb_explore_adf -q sa: predict / learn of one ADF example

"select" scores every arm for one context and takes the argmax, "update" is one rank-1 update of
one arm, "select_update" is both. Each call is timed alone with time.perf_counter_ns (garbage
collection paused), after warm-up calls and after the Numba kernels are compiled or loaded. A
measurement runs until --iterations calls or about BUDGET_S = 0.75 s, whichever comes first, but
at least MIN_ITERATIONS = 10 calls: the slow baselines at large d get fewer calls, never none.
Batch select (scores of every arm for many contexts, then argmax per context) runs at d = 32.
MABWiser and Vowpal Wabbit come from the `bench` extra; when absent they are reported as null.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import json
import math
import os
import platform
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, TypedDict

import numba
import numpy as np
import numpy.typing as npt
from numba.np.ufunc import threading_layer

from banditd.commands.argtypes import int_at_least, ints_at_least
from banditd.domain import FloatArray
from banditd.policy import _kernels

IMPLS = ("banditd", "banditd_ts", "numpy", "mabwiser_linucb", "mabwiser_lints", "vw")
OPS = ("select", "update", "select_update")
OP_LABELS = {"select": "select", "update": "update", "select_update": "select+update"}
BATCHES = (64, 1024)
BATCH_DIM = 32
ALPHA = 1.0  # LinUCB exploration and Thompson scale, for banditd and MABWiser alike
VW_ARGS = "--cb_explore_adf -q sa --quiet"
STREAM = 1024  # distinct timed contexts, cycled; also the contexts of the largest batch
SEED = 20_240
BUDGET_S = 0.75
MIN_ITERATIONS = 10
WARMUP = 3

TARGET_SELECT_UPDATE_US = 5.0
TARGET_VS_MABWISER = 50.0
TARGET_VS_VW = 10.0
TARGET_BATCH_PER_S = 1e6


class Stat(TypedDict):
    """Per-call wall time in microseconds over n timed calls."""

    median: float
    p99: float
    n: int


OpResults = dict[str, dict[str, Stat] | None]  # impl -> str(d) -> stat; None: not installed


@dataclass(frozen=True)
class Config:
    """What one run measures and how long it may spend on each measurement."""

    dims: tuple[int, ...]
    n_arms: int
    history: int
    max_iterations: int
    min_iterations: int
    warmup: int
    budget_s: float


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


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _optional(module: str, dist: str) -> Any | None:
    """Import a baseline library, or None with a note on stderr when the extra is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError:
        _log(f"{dist} is not installed (pip install 'banditd[bench]'): reported as null")
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _factories() -> dict[str, Callable[[Workload], Impl]]:
    """The implementations that can run here, by name; baselines only when installed."""
    factories: dict[str, Callable[[Workload], Impl]] = {
        "banditd": BanditdLinUCB,
        "banditd_ts": BanditdThompson,
        "numpy": NumpyLinUCB,
    }
    if (mab := _optional("mabwiser.mab", "mabwiser")) is not None:
        factories["mabwiser_linucb"] = functools.partial(MabWiser, mab=mab, policy="linucb")
        factories["mabwiser_lints"] = functools.partial(MabWiser, mab=mab, policy="lints")
    if (vw := _optional("vowpalwabbit", "vowpalwabbit")) is not None:
        factories["vw"] = functools.partial(VowpalWabbit, vw=vw)
    return factories


def _compile_kernels(n_arms: int) -> float:
    """Compile (or load from Numba's cache) every kernel the bench calls; seconds taken."""
    started = time.perf_counter()
    impl = BanditdThompson(Workload.make(2, n_arms, 4))
    impl.select_update(0)
    impl.update(1)
    _kernels.linucb_scores(impl.a_inv, impl.theta, impl.arm_idx, impl.xs[0], ALPHA)
    _kernels.batch_linucb_scores(impl.a_inv, impl.theta, impl.arm_idx, np.stack(impl.xs[:2]), ALPHA)
    return time.perf_counter() - started


def _time_calls(op: Callable[[int], object], start: int, n: int) -> npt.NDArray[np.int64]:
    """Wall time in ns of each of op(start), ..., op(start + n - 1), garbage collection paused."""
    out = np.empty(n, dtype=np.int64)
    clock = time.perf_counter_ns
    enabled = gc.isenabled()
    gc.disable()
    try:
        for k in range(n):
            t0 = clock()
            op(start + k)
            out[k] = clock() - t0
    finally:
        if enabled:
            gc.enable()
    return out


def _measure(op: Callable[[int], object], cfg: Config) -> Stat:
    """Warm up, size the run from the warm-up calls and the budget, then time it."""
    per_call = max(float(np.median(_time_calls(op, 0, cfg.warmup))), 1.0)
    n = int(min(cfg.max_iterations, max(cfg.min_iterations, cfg.budget_s * 1e9 / per_call)))
    times = _time_calls(op, cfg.warmup, n)
    return Stat(
        median=round(float(np.median(times)) / 1e3, 3),
        p99=round(float(np.percentile(times, 99)) / 1e3, 3),
        n=n,
    )


def _numpy_batch_scores(
    a_inv: FloatArray, theta: FloatArray, xs: FloatArray, alpha: float
) -> FloatArray:
    """LinUCB scores of every arm for many contexts in NumPy; xs (n, d) -> (n, n_arms)."""
    quad: FloatArray = np.einsum("knd,nd->nk", xs @ a_inv, xs)
    return xs @ theta.T + alpha * np.sqrt(np.maximum(quad, 0.0))


def _batch_select(name: str, work: Workload, batch: int) -> Callable[[int], object]:
    """One batch select (scores, then argmax per context) of the first `batch` stream contexts."""
    _, a_inv, _, theta = work.state()
    arm_idx = np.arange(work.n_arms, dtype=np.int64)
    xs = np.ascontiguousarray(work.xs[:batch])
    if name == "banditd":
        return lambda _: _kernels.batch_linucb_scores(a_inv, theta, arm_idx, xs, ALPHA).argmax(1)
    return lambda _: _numpy_batch_scores(a_inv, theta, xs, ALPHA).argmax(1)


def _batch_throughput(work: Workload, cfg: Config) -> dict[str, dict[str, float]]:
    """Decisions per second of batch select, from the median call, for banditd and NumPy."""
    out: dict[str, dict[str, float]] = {}
    for name in ("banditd", "numpy"):
        out[name] = {}
        for batch in BATCHES:
            stat = _measure(_batch_select(name, work, batch), cfg)
            out[name][str(batch)] = round(batch / (stat["median"] * 1e-6))
            _log(f"batch {batch:>5} d={work.dim} {name:<16} {out[name][str(batch)]:>14,.0f}/s")
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ratio(results: OpResults, baseline: str, ours: str) -> float | None:
    base, mine = results[baseline], results[ours]
    if base is None or mine is None or "32" not in base or "32" not in mine:
        return None
    return round(base["32"]["median"] / mine["32"]["median"], 2)


def _at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def bench_kernels(cfg: Config) -> dict[str, Any]:
    """Run every measurement and return the report (the --json object)."""
    started = time.perf_counter()
    load_average = [round(load, 2) for load in os.getloadavg()]
    factories = _factories()
    _log(f"numba kernels compiled or loaded in {_compile_kernels(cfg.n_arms):.1f} s")
    measured: dict[str, dict[str, dict[str, Stat]]] = {op: {} for op in OPS}
    for dim in cfg.dims:
        work = Workload.make(dim, cfg.n_arms, cfg.history)
        for name, factory in factories.items():
            impl = factory(work)
            try:
                for op in OPS:
                    stat = _measure(getattr(impl, op), cfg)
                    measured[op].setdefault(name, {})[str(dim)] = stat
                    _log(
                        f"d={dim:<4} {name:<16} {OP_LABELS[op]:<14} median {stat['median']:>12,.2f}"
                        f" us  p99 {stat['p99']:>12,.2f} us  ({stat['n']} calls)"
                    )
            finally:
                impl.close()
    batch = _batch_throughput(Workload.make(BATCH_DIM, cfg.n_arms, cfg.history), cfg)
    results: dict[str, OpResults] = {
        op: {impl: measured[op].get(impl) for impl in IMPLS} for op in OPS
    }
    select_update = results["select_update"]
    speedups = {
        "speedup_vs_numpy": _ratio(select_update, "numpy", "banditd"),
        "speedup_vs_mabwiser": _ratio(select_update, "mabwiser_linucb", "banditd"),
        "speedup_vs_mabwiser_lints": _ratio(select_update, "mabwiser_lints", "banditd_ts"),
        "speedup_vs_vw": _ratio(select_update, "vw", "banditd"),
    }
    ours = select_update["banditd"]
    su32 = ours["32"]["median"] if ours is not None and "32" in ours else None
    return {
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "load_average_at_start": load_average,  # other work on the machine skews timings
            "python": platform.python_version(),
            "numba": numba.__version__,
            "numba_threads": numba.get_num_threads(),
            "numba_threading_layer": threading_layer(),
            "numpy": np.__version__,
            "mabwiser": _version("mabwiser"),
            "vowpalwabbit": _version("vowpalwabbit"),
        },
        "config": {
            "dims": list(cfg.dims),
            "arms": cfg.n_arms,
            "history": cfg.history,
            "batch_dim": BATCH_DIM,
            "max_iterations": cfg.max_iterations,
            "budget_s": cfg.budget_s,
            "alpha": ALPHA,
            "vw_args": VW_ARGS,
        },
        "select_us": results["select"],
        "update_us": results["update"],
        "select_update_us": select_update,
        "batch_decisions_per_s": batch,
        **speedups,
        "targets": {
            "select_update_d32_under_5us": None if su32 is None else su32 < TARGET_SELECT_UPDATE_US,
            "at_least_50x_mabwiser": _at_least(speedups["speedup_vs_mabwiser"], TARGET_VS_MABWISER),
            "at_least_10x_vw": _at_least(speedups["speedup_vs_vw"], TARGET_VS_VW),
            "batch_1024_d32_over_1m_per_s": batch["banditd"]["1024"] > TARGET_BATCH_PER_S,
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}x"


def _fmt_target(value: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "n/a"}[value]


def render_text(report: dict[str, Any]) -> str:
    """The report as a table for people."""
    m, c = report["machine"], report["config"]
    lines = [
        f"banditd bench kernels on {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
        f"numba {m['numba']} ({m['numba_threading_layer']}, {m['numba_threads']} threads)",
        f"{c['arms']} arms, {c['history']} warm-up observations; per call, us: median / p99",
        "",
        f"{'implementation':<16} {'d':>4}" + "".join(f"{OP_LABELS[op]:>28}" for op in OPS),
    ]
    for impl in IMPLS:
        for dim in c["dims"]:
            cells = []
            for op in OPS:
                per_impl = report[f"{op}_us"][impl]
                if per_impl is None:
                    cells.append(f"{'not installed':>28}")
                    continue
                s = per_impl[str(dim)]
                cells.append(f" {s['median']:>13,.2f} / {s['p99']:>11,.2f}")
            lines.append(f"{impl:<16} {dim:>4}" + "".join(cells))
    lines += ["", f"batch select at d={BATCH_DIM}, decisions/s:"]
    for impl, per_batch in report["batch_decisions_per_s"].items():
        row = "".join(f"  batch {b:>5}: {v:>13,.0f}" for b, v in per_batch.items())
        lines.append(f"{impl:<16}{row}")
    lines += [
        "",
        "banditd speedup, select+update median at d=32: "
        f"vs numpy {_fmt_ratio(report['speedup_vs_numpy'])}, "
        f"vs MABWiser LinUCB {_fmt_ratio(report['speedup_vs_mabwiser'])}, "
        f"vs MABWiser LinTS (banditd_ts) {_fmt_ratio(report['speedup_vs_mabwiser_lints'])}, "
        f"vs Vowpal Wabbit {_fmt_ratio(report['speedup_vs_vw'])}",
        "targets: "
        + ", ".join(f"{name} {_fmt_target(ok)}" for name, ok in report["targets"].items()),
        f"wall time {report['wall_s']} s",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """`banditd bench kernels`: print the report (a table, or one JSON object with --json)."""
    if args.quick:
        cfg = Config(
            dims=(BATCH_DIM,),
            n_arms=args.arms,
            history=50,
            max_iterations=args.iterations or 30,
            min_iterations=3,
            warmup=2,
            budget_s=0.02,
        )
    else:
        cfg = Config(
            dims=args.dims,
            n_arms=args.arms,
            history=1000,
            max_iterations=args.iterations or 10_000,
            min_iterations=MIN_ITERATIONS,
            warmup=WARMUP,
            budget_s=BUDGET_S,
        )
    report = bench_kernels(cfg)
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    return 0


def add_parser(bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `kernels` to the `bench` subcommands; the parsed args carry func=run."""
    p_kernels = bench_sub.add_parser(
        "kernels",
        help="select/update latency and batch throughput vs NumPy, MABWiser and Vowpal Wabbit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_kernels.add_argument(
        "--dims", type=ints_at_least(1), default=(32, 128, 384), help="context sizes (32,128,384)"
    )
    p_kernels.add_argument("--arms", type=int_at_least(1), default=11, help="number of arms (11)")
    p_kernels.add_argument(
        "--iterations",
        type=int_at_least(1),
        help="most timed calls per measurement (10000; slow ones stop at the time budget)",
    )
    p_kernels.add_argument(
        "--quick", action="store_true", help="tiny iteration counts at d=32 only (for tests)"
    )
    p_kernels.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p_kernels.set_defaults(func=run)
