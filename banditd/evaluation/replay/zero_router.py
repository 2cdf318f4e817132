"""Gain over the zero router (RouterBench, Hu et al. 2024): how much quality a routing policy
adds, at each cost, over a fixed random mix of single models.

The zero router's best quality at a mean cost c is the upper concave hull of the single models'
(mean cost, mean quality) points at c; the policy's is the same hull of its sweep points (a mix of
two cost weights is reachable by choosing between them at random). Both hulls are
non-decreasing: at a cost past a hull's priciest point it keeps that point's quality, as spending
less than allowed is always possible. Pure functions of (cost, quality) points.

``routing_ceiling`` is the same gain for a router that knows, in hindsight, each metadata
group's mean quality and cost per arm: the most that routing on the request's metadata alone
could add on the data replayed (a policy that also reads the prompt may do better).
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from banditd.domain import FloatArray
from banditd.evaluation.replay.scoring import upper_hull

GRID_POINTS = 50
# A point counts as reaching a grid cost within this relative slack: the cheapest single model's
# own mean, recomputed from the same numbers in another order, may differ in the last bits.
COST_SLACK = 1e-9
# The grid's lowest low end, relative to its high end: where the cheapest model is free (a log
# grid cannot start at 0), or costs less than that.
FREE_FLOOR = 1e-6

Points = Sequence[tuple[float, float]]


def cost_grid(singles: Points, points: int = GRID_POINTS) -> FloatArray:
    """``points`` log-spaced costs from the cheapest single model's mean cost to the best single
    model's (best: highest mean quality, the cheapest on ties), shape (points,).

    singles: (mean cost, mean quality) per single model, at least one.
    """
    if not singles:
        raise ValueError("no single models")
    low = min(cost for cost, _ in singles)
    best = min(singles, key=lambda p: (-p[1], p[0]))
    high = max(best[0], low)
    if high <= 0.0:
        return np.zeros(points)
    return np.geomspace(max(low, high * FREE_FLOOR), high, points)


def hull_quality(points: Points, costs: FloatArray) -> FloatArray:
    """The quality of the points' upper concave hull at each cost, NaN below its cheapest point
    (not reachable), its top quality past its priciest; costs (m,) -> (m,)."""
    hull = np.array(upper_hull(points))
    quality = np.interp(costs, hull[:, 0], hull[:, 1])
    reached = costs * (1.0 + COST_SLACK) >= hull[0, 0]
    return np.where(reached, quality, np.nan)


def gain_vs_zero_router(policy: Points, singles: Points) -> dict[str, float | None]:
    """The policy's gain over the zero router on the cost grid (``cost_grid``).

    At each grid cost c the policy's hull reaches (a sweep point at cost <= c): its quality
    minus the single models' hull's, in points (hundredths) of the best single model's mean
    quality. ``mean`` and ``min`` are over those costs (None when it reaches none),
    ``coverage`` is their share of the grid.

    policy: (mean cost, mean quality) per sweep point; singles: the same per single model.
    """
    if not policy:
        raise ValueError("no policy points")
    grid = cost_grid(singles)
    best_quality = max(quality for _, quality in singles)
    scale = 100.0 / best_quality if best_quality > 0 else 100.0
    gain = (hull_quality(policy, grid) - hull_quality(singles, grid)) * scale
    reached = gain[~np.isnan(gain)]
    if reached.size == 0:
        return {"mean": None, "min": None, "coverage": 0.0}
    return {
        "mean": float(reached.mean()),
        "min": float(reached.min()),
        "coverage": reached.size / grid.size,
    }


def gain_with_runs(
    points: Sequence[Points], singles: Points, seeds: Sequence[int]
) -> dict[str, Any]:
    """The gain of a frontier whose every point (one per cost weight) is given as its mean over
    the seeds then each seed's own point; with several seeds, each seed's own gain too ("runs":
    one run's hull picks its luckiest points, so it reads higher than the mean frontier's)."""
    gain: dict[str, Any] = dict(gain_vs_zero_router([p[0] for p in points], singles))
    if len(seeds) > 1:
        gain["runs"] = [
            {"seed": seed, **gain_vs_zero_router([p[1 + i] for p in points], singles)}
            for i, seed in enumerate(seeds)
        ]
    return gain


NO_GAIN = 1e-6  # points: a gain below it is none


def share_of_ceiling(gain: float | None, ceiling: float | None) -> float | None:
    """The policy's mean gain as a share of the metadata routing ceiling's mean gain: how much
    of what routing by the metadata in hindsight would gain the policy gets (above 1 where the
    prompt's own features, or learning, gain more). None where either is missing or the
    ceiling gains nothing (no keys, or the metadata does not tell the arms apart: below
    NO_GAIN points, where the hulls' rounding is)."""
    if gain is None or ceiling is None or ceiling < NO_GAIN:
        return None
    return gain / ceiling


def group_routing_points(
    quality: FloatArray, cost: FloatArray, groups: Sequence[Hashable]
) -> Points:
    """The vertices of the best (mean cost, mean quality) frontier of routing each group's
    prompts to arms chosen per group, knowing each group's mean quality and cost per arm.

    quality, cost: shape (n, k); groups: one label per prompt, length n. Each group's own hull
    (``upper_hull`` of its arms' means) contributes its edges, weighted by the group's share of
    the prompts; the frontier starts from every group on its cheapest hull point and takes the
    edges by decreasing quality per dollar (the cost weights of a sweep, all of them at once).
    """
    rows: dict[Hashable, list[int]] = {}
    for i, group in enumerate(groups):
        rows.setdefault(group, []).append(i)
    n = len(groups)
    start_cost = start_quality = 0.0
    edges: list[tuple[float, float, float]] = []  # (quality per dollar, cost, quality) added
    for members in rows.values():
        share = len(members) / n
        means = (cost[members].mean(axis=0).tolist(), quality[members].mean(axis=0).tolist())
        hull = upper_hull(list(zip(*means, strict=True)))
        start_cost += share * hull[0][0]
        start_quality += share * hull[0][1]
        edges += [
            ((q1 - q0) / (c1 - c0), share * (c1 - c0), share * (q1 - q0))
            for (c0, q0), (c1, q1) in itertools.pairwise(hull)
        ]
    points = [(start_cost, start_quality)]
    for _, added_cost, added_quality in sorted(edges, key=lambda e: -e[0]):
        points.append((points[-1][0] + added_cost, points[-1][1] + added_quality))
    return points


def routing_ceiling(
    quality: FloatArray,
    cost: FloatArray,
    metadata: Sequence[dict[str, str]],
    keys: Sequence[str],
    singles: Points,
) -> dict[str, Any]:
    """``gain_vs_zero_router`` of routing by the metadata ``keys`` in hindsight
    (``group_routing_points``; a group per combination of their values, one group without
    keys, whose gain is 0 everywhere), with the keys and how many groups the data has."""
    groups = [tuple(m.get(key) for key in keys) for m in metadata] or [()] * len(quality)
    points = group_routing_points(quality, cost, groups)
    return {
        "keys": list(keys),
        "groups": len(set(groups)),
        **gain_vs_zero_router(points, singles),
        "frontier": [{"mean_cost_usd": c, "mean_quality": q} for c, q in points],
    }
