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
The implementations take turns, ROUNDS = 20 blocks of calls each per operation, so that a change
in the machine's load falls on all of them alike and the ratios between them hold still.
Batch select (scores of every arm for many contexts, then argmax per context) runs at d = 32.
MABWiser and Vowpal Wabbit come from the `bench` extra; when absent they are reported as null.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, TypedDict

import numba
import numpy as np
import numpy.typing as npt
from numba.np.ufunc import threading_layer

from banditd.commands import reporting
from banditd.commands.argtypes import int_at_least, ints_at_least
from banditd.commands.bench.kernel_impls import (
    ALPHA,
    VW_ARGS,
    Impl,
    Workload,
    batch_select,
    compile_kernels,
    factories,
    log,
)

IMPLS = ("banditd", "banditd_ts", "numpy", "mabwiser_linucb", "mabwiser_lints", "vw")
OPS = ("select", "update", "select_update")
OP_LABELS = {"select": "select", "update": "update", "select_update": "select+update"}
BATCHES = (64, 1024)
BATCH_DIM = 32
BUDGET_S = 0.75
MIN_ITERATIONS = 10
WARMUP = 3
ROUNDS = 20

TARGET_SELECT_UPDATE_US = 5.0
TARGET_VS_MABWISER = 50.0
TARGET_VS_VW = 10.0
# Issue 20's goals at d=32, select+update medians: reported next to the earlier targets.
GOAL_VS_MABWISER = 100.0
GOAL_VS_VW = 20.0
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


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


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


def _iterations(op: Callable[[int], object], cfg: Config) -> int:
    """Warm up, then size the run from the warm-up calls and the budget."""
    per_call = max(float(np.median(_time_calls(op, 0, cfg.warmup))), 1.0)
    return int(min(cfg.max_iterations, max(cfg.min_iterations, cfg.budget_s * 1e9 / per_call)))


def _stat(times: npt.NDArray[np.int64]) -> Stat:
    return Stat(
        median=round(float(np.median(times)) / 1e3, 3),
        p99=round(float(np.percentile(times, 99)) / 1e3, 3),
        n=int(times.shape[0]),
    )


def _measure(op: Callable[[int], object], cfg: Config) -> Stat:
    """Warm up, size the run, then time it."""
    return _stat(_time_calls(op, cfg.warmup, _iterations(op, cfg)))


def _measure_turns(ops: dict[str, Callable[[int], object]], cfg: Config) -> dict[str, Stat]:
    """_measure of each op, the ops taking turns in ROUNDS blocks of calls (same load for all)."""
    total = {name: _iterations(op, cfg) for name, op in ops.items()}
    done = dict.fromkeys(ops, 0)
    times: dict[str, list[npt.NDArray[np.int64]]] = {name: [] for name in ops}
    for r in range(ROUNDS):
        for name, op in ops.items():
            block = total[name] // ROUNDS + (r < total[name] % ROUNDS)
            if block:
                times[name].append(_time_calls(op, cfg.warmup + done[name], block))
                done[name] += block
    return {name: _stat(np.concatenate(blocks)) for name, blocks in times.items()}


def _batch_throughput(work: Workload, cfg: Config) -> dict[str, dict[str, float]]:
    """Decisions per second of batch select, from the median call, for banditd and NumPy."""
    out: dict[str, dict[str, float]] = {}
    for name in ("banditd", "numpy"):
        out[name] = {}
        for batch in BATCHES:
            stat = _measure(batch_select(name, work, batch), cfg)
            out[name][str(batch)] = round(batch / (stat["median"] * 1e-6))
            log(f"batch {batch:>5} d={work.dim} {name:<16} {out[name][str(batch)]:>14,.0f}/s")
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
    makers = factories()
    log(f"numba kernels compiled or loaded in {compile_kernels(cfg.n_arms):.1f} s")
    measured: dict[str, dict[str, dict[str, Stat]]] = {op: {} for op in OPS}
    for dim in cfg.dims:
        work = Workload.make(dim, cfg.n_arms, cfg.history)
        impls: dict[str, Impl] = {}
        try:
            for name, factory in makers.items():
                impls[name] = factory(work)
            for op in OPS:
                stats = _measure_turns({n: getattr(i, op) for n, i in impls.items()}, cfg)
                for name, stat in stats.items():
                    measured[op].setdefault(name, {})[str(dim)] = stat
                    log(
                        f"d={dim:<4} {name:<16} {OP_LABELS[op]:<14} median {stat['median']:>12,.2f}"
                        f" us  p99 {stat['p99']:>12,.2f} us  ({stat['n']} calls)"
                    )
        finally:
            for impl in impls.values():
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
            "at_least_100x_mabwiser": _at_least(speedups["speedup_vs_mabwiser"], GOAL_VS_MABWISER),
            "at_least_20x_vw": _at_least(speedups["speedup_vs_vw"], GOAL_VS_VW),
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


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement and return the report (the --json object)."""
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
    return bench_kernels(cfg)


REPORT = reporting.Command(measure, render_text, json_indent=2)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `bench kernels`."""
    p.add_argument(
        "--dims", type=ints_at_least(1), default=(32, 128, 384), help="context sizes (32,128,384)"
    )
    p.add_argument("--arms", type=int_at_least(1), default=11, help="number of arms (11)")
    p.add_argument(
        "--iterations",
        type=int_at_least(1),
        help="most timed calls per measurement (10000; slow ones stop at the time budget)",
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny iteration counts at d=32 only (for tests)"
    )
