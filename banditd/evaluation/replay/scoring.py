"""Scoring runs: the summary of a run's picks, the single models, the concave hull of
(cost, quality) points, RouterBench's AIQ, the grids a sweep runs over and the summary of its
frontier."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from banditd.domain import FloatArray
from banditd.evaluation.replay.data import Outcomes
from banditd.evaluation.replay.engine import REFUSED, oracle_picks
from banditd.evaluation.replay.options import (
    BUDGET_SWEEP_POINTS,
    QUALITY_FRACTIONS,
    SWEEP_POINTS,
    SWEEP_SPAN_HIGH,
    SWEEP_SPAN_LOW,
)
from banditd.evaluation.replay.trade_off import measures, model_measures
from banditd.policy.base import IntArray

REGRET_CURVE_POINTS = 100


def _served(outcomes: Outcomes, picks: IntArray) -> tuple[FloatArray, FloatArray]:
    """Quality and cost of each prompt's pick, shapes (n,) (REFUSED: quality 0, no cost)."""
    served = picks != REFUSED
    rows, cols = np.arange(outcomes.n), np.where(served, picks, 0)
    quality = np.where(served, outcomes.quality[rows, cols], 0.0)
    cost = np.where(served, outcomes.cost[rows, cols], 0.0)
    return quality, cost


def _oracle_utility(outcomes: Outcomes, cost_weight: float) -> FloatArray:
    """The oracle's quality - cost_weight x cost at each prompt, shape (n,)."""
    return np.asarray((outcomes.quality - cost_weight * outcomes.cost).max(axis=1))


def score(outcomes: Outcomes, picks: IntArray, cost_weight: float) -> dict[str, float]:
    """Summary of one run from its picks (shape (n,), REFUSED: quality 0, no cost)."""
    quality, cost = _served(outcomes, picks)
    best = _oracle_utility(outcomes, cost_weight)
    return {
        "mean_quality": float(quality.mean()),
        "mean_cost_usd": float(cost.mean()),
        "total_cost_usd": float(cost.sum()),
        "refused": int(np.count_nonzero(picks == REFUSED)),
        "cumulative_regret": float((best - (quality - cost_weight * cost)).sum()),
        **measures(outcomes, picks),
    }


def regret_over_time(outcomes: Outcomes, picks: IntArray, cost_weight: float) -> FloatArray:
    """Cumulative regret against the oracle after each prompt of a run, shape (n,)."""
    quality, cost = _served(outcomes, picks)
    best = _oracle_utility(outcomes, cost_weight)
    return np.cumsum(best - (quality - cost_weight * cost))


def curve_steps(n: int) -> IntArray:
    """The prompt counts (1..n) a regret curve is reported at: at most REGRET_CURVE_POINTS,
    evenly spaced, the last n; shape (m,)."""
    steps = np.linspace(1, n, min(n, REGRET_CURVE_POINTS)).round().astype(np.int64)
    return np.asarray(np.unique(steps), dtype=np.int64)


def _model(outcomes: Outcomes, j: int) -> dict[str, Any]:
    return {
        "model": outcomes.arms[j],
        "mean_quality": float(outcomes.quality[:, j].mean()),
        "mean_cost_usd": float(outcomes.cost[:, j].mean()),
        **model_measures(outcomes, j),
    }


def upper_hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-decreasing concave hull of (cost, quality) points, by increasing cost."""
    pareto: list[tuple[float, float]] = []
    for cost, quality in sorted(points, key=lambda p: (p[0], -p[1])):
        if not pareto or quality > pareto[-1][1]:
            pareto.append((cost, quality))
    hull: list[tuple[float, float]] = []
    for p in pareto:
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            if (x1 - x0) * (p[1] - y0) - (y1 - y0) * (p[0] - x0) < 0:
                break
            hull.pop()
        hull.append(p)
    return hull


def aiq(points: Sequence[tuple[float, float]], low: float, high: float) -> float | None:
    """RouterBench's AIQ of (cost, quality) points over costs [low, high]: the mean of the hull's
    quality over that range, 0 below its cheapest point; None for an empty range."""
    if not high > low:
        return None
    hull = np.array(upper_hull(points))
    start = max(low, float(hull[0, 0]))
    if start >= high:
        return 0.0
    knots = np.unique(np.clip(np.concatenate([[start, high], hull[:, 0]]), start, high))
    area = np.trapezoid(np.interp(knots, hull[:, 0], hull[:, 1]), knots)
    return float(area) / (high - low)


def cost_at_quality(points: Sequence[tuple[float, float]], target: float) -> float | None:
    """The least mean cost at which the hull of (cost, quality) points reaches ``target``."""
    hull = upper_hull(points)
    if hull[0][1] >= target:
        return hull[0][0]
    for (c0, q0), (c1, q1) in itertools.pairwise(hull):
        if q1 >= target:
            return c0 + (c1 - c0) * (target - q0) / (q1 - q0)
    return None


def weight_grid(outcomes: Outcomes) -> tuple[float, ...]:
    """0 and a log grid of cost weights scaled to the arms' price span (the priciest model's
    mean cost less the cheapest's): from the weight at which that span is worth
    SWEEP_SPAN_LOW of quality to the one at which it is worth SWEEP_SPAN_HIGH, so one grid fits
    any arm set and its top reaches the cheapest model."""
    cost = outcomes.cost.mean(axis=0)
    span = max(float(cost.max() - cost.min()), 1e-12)
    grid = np.geomspace(SWEEP_SPAN_LOW / span, SWEEP_SPAN_HIGH / span, SWEEP_POINTS - 1)
    return (0.0, *(float(f"{w:.3g}") for w in grid))


def budget_grid(outcomes: Outcomes) -> tuple[float, ...]:
    """Budgets from every prompt on the cheapest model to every prompt on the priciest (a log
    grid: from 1e-9 where the cheapest is free, and all at 1e-9 where every model is)."""
    total = outcomes.cost.mean(axis=0) * outcomes.n
    low = max(float(total.min()), 1e-9)
    grid = np.geomspace(low, max(float(total.max()), low), BUDGET_SWEEP_POINTS)
    return tuple(float(f"{b:.3g}") for b in grid)


def ratio(value: float | None, reference: float) -> float | None:
    return value / reference if reference and value is not None else None


def xy(rows: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    """(mean cost, mean quality) of each summary."""
    return [(r["mean_cost_usd"], r["mean_quality"]) for r in rows]


def frontier_summary(
    outcomes: Outcomes,
    frontier: list[dict[str, Any]],
    singles: Sequence[dict[str, Any]],
    best: dict[str, Any],
) -> dict[str, Any]:
    """A cost-weight frontier (a summary per weight) with its AIQ, the oracle's at the same
    weights and the single models' (their summaries, ``_model``), and the cost of fractions of
    the best single model's quality read off the frontier's hull."""
    weights = [p["cost_weight"] for p in frontier]
    oracle = [{"cost_weight": w, **score(outcomes, oracle_picks(outcomes, w), w)} for w in weights]
    points = xy(frontier)
    low = min(m["mean_cost_usd"] for m in singles)
    high = max(m["mean_cost_usd"] for m in singles)
    at_quality = []
    for fraction in QUALITY_FRACTIONS:
        cost = cost_at_quality(points, fraction * best["mean_quality"])
        at_quality.append(
            {
                "fraction_of_best_single": fraction,
                "quality": fraction * best["mean_quality"],
                "mean_cost_usd": cost,
                "cost_vs_best_single": ratio(cost, best["mean_cost_usd"]),
            }
        )
    return {
        "frontier": frontier,
        "aiq": aiq(points, low, high),
        "aiq_single_models": aiq(xy(singles), low, high),
        "aiq_oracle": aiq(xy(oracle), low, high),
        "oracle_frontier": [
            {k: o[k] for k in ("cost_weight", "mean_quality", "mean_cost_usd")} for o in oracle
        ],
        "cost_at_quality": at_quality,
    }
