"""gain_vs_zero_router on hand-made (cost, quality) points whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from banditd.evaluation.replay.zero_router import (
    GRID_POINTS,
    cost_grid,
    gain_vs_zero_router,
    group_routing_points,
    hull_quality,
    routing_ceiling,
    share_of_ceiling,
)

# Two single models: the zero router's hull is the line from (1, 0.5) to (10, 1.0).
SINGLES = [(1.0, 0.5), (10.0, 1.0)]


def test_a_policy_equal_to_the_single_models_gains_nothing() -> None:
    gain = gain_vs_zero_router(SINGLES, SINGLES)
    assert gain == {"mean": 0.0, "min": 0.0, "coverage": 1.0}


def test_a_policy_mixing_the_single_models_gains_nothing() -> None:
    # Points on the segment between the models are what the zero router reaches anyway.
    policy = [(1.0, 0.5), (5.5, 0.75), (10.0, 1.0)]
    gain = gain_vs_zero_router(policy, SINGLES)
    assert gain["mean"] == pytest.approx(0.0, abs=1e-12)
    assert gain["min"] == pytest.approx(0.0, abs=1e-12)


def test_a_policy_above_by_a_tenth_gains_ten_points() -> None:
    # 0.1 of quality over the hull at every cost, the best single model's quality being 1.0.
    gain = gain_vs_zero_router([(1.0, 0.6), (10.0, 1.1)], SINGLES)
    assert gain["mean"] == pytest.approx(10.0)
    assert gain["min"] == pytest.approx(10.0)
    assert gain["coverage"] == 1.0


def test_points_are_in_points_of_the_best_single_models_quality() -> None:
    singles = [(1.0, 0.25), (10.0, 0.5)]
    gain = gain_vs_zero_router([(1.0, 0.3), (10.0, 0.55)], singles)
    assert gain["mean"] == pytest.approx(10.0)  # 0.05 of 0.5


def test_a_policy_below_the_hull_loses() -> None:
    gain = gain_vs_zero_router([(1.0, 0.45), (10.0, 0.95)], SINGLES)
    assert gain["mean"] == pytest.approx(-5.0)
    assert gain["min"] == pytest.approx(-5.0)


def test_points_under_the_policys_own_hull_do_not_count() -> None:
    # (5.5, 0.6) is below the policy's line from (1, 0.5) to (10, 1.0): mixing beats it.
    gain = gain_vs_zero_router([(1.0, 0.5), (5.5, 0.6), (10.0, 1.0)], SINGLES)
    assert gain["min"] == pytest.approx(0.0, abs=1e-12)


def test_a_flat_policy_keeps_its_quality_past_its_priciest_point() -> None:
    # One point (1, 0.9): 0.4 over the hull at cost 1, 0.1 under it at cost 10 (its min).
    gain = gain_vs_zero_router([(1.0, 0.9)], SINGLES)
    grid = np.geomspace(1.0, 10.0, GRID_POINTS)
    expected = (0.9 - (0.5 + (grid - 1.0) / 9.0 * 0.5)) * 100.0
    assert gain["min"] == pytest.approx(-10.0)
    assert gain["mean"] == pytest.approx(float(expected.mean()))
    assert gain["coverage"] == 1.0


def test_coverage_is_the_share_of_the_grid_the_policy_reaches() -> None:
    # A grid from 1 to 100 (log): a policy whose cheapest point costs 10 reaches its upper half.
    singles = [(1.0, 0.5), (100.0, 1.0)]
    gain = gain_vs_zero_router([(10.0, 0.9), (100.0, 1.0)], singles)
    assert gain["coverage"] == 0.5
    # Over the reached half the zero router's hull runs from 0.5 + 9/99 x 0.5 up to 1.0.
    assert gain["min"] == pytest.approx(0.0, abs=1e-12)
    assert gain["mean"] is not None and gain["mean"] > 0


def test_a_policy_that_never_gets_cheap_enough_has_no_gain() -> None:
    gain = gain_vs_zero_router([(20.0, 1.0)], SINGLES)
    assert gain == {"mean": None, "min": None, "coverage": 0.0}


def test_the_grid_runs_from_the_cheapest_to_the_best_single_model() -> None:
    # The best model (highest quality) is not the priciest one here.
    singles = [(2.0, 0.5), (5.0, 0.9), (20.0, 0.8)]
    grid = cost_grid(singles)
    assert grid.shape == (GRID_POINTS,)
    assert grid[0] == pytest.approx(2.0)
    assert grid[-1] == pytest.approx(5.0)
    assert np.allclose(np.diff(np.log(grid)), np.log(2.5) / (GRID_POINTS - 1))


def test_ties_on_quality_take_the_cheapest_as_the_best() -> None:
    assert cost_grid([(1.0, 0.5), (4.0, 0.9), (8.0, 0.9)])[-1] == pytest.approx(4.0)


def test_a_free_model_starts_the_grid_just_above_zero() -> None:
    grid = cost_grid([(0.0, 0.5), (10.0, 1.0)])
    assert grid[0] > 0 and grid[-1] == pytest.approx(10.0)


def test_hull_quality_is_nan_below_the_cheapest_point() -> None:
    quality = hull_quality([(2.0, 0.5), (4.0, 0.7)], np.array([1.0, 2.0, 3.0, 8.0]))
    assert np.isnan(quality[0])
    assert quality[1:].tolist() == pytest.approx([0.5, 0.6, 0.7])


@pytest.mark.parametrize(
    ("policy", "singles"), [([], SINGLES), ([(1.0, 0.5)], [])], ids=["no policy", "no singles"]
)
def test_empty_inputs_are_refused(
    policy: list[tuple[float, float]], singles: list[tuple[float, float]]
) -> None:
    with pytest.raises(ValueError, match="no "):
        gain_vs_zero_router(policy, singles)


# Two groups of two prompts, two arms (cost 1 and 10): group "easy" gets quality 1 from both,
# "hard" 0 from the cheap arm and 1 from the pricey one.
CEILING_QUALITY = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
CEILING_COST = np.array([[1.0, 10.0]] * 4)
CEILING_SINGLES = [(1.0, 0.5), (10.0, 1.0)]
CEILING_METADATA = [{"task": "easy"}, {"task": "easy"}, {"task": "hard"}, {"task": "hard"}]


def test_group_routing_in_hindsight_takes_each_groups_best_arm_by_quality_per_dollar() -> None:
    points = group_routing_points(CEILING_QUALITY, CEILING_COST, ["e", "e", "h", "h"])
    # Everything cheap, then the hard half on the pricey arm (cost +4.5 for quality +0.5);
    # the easy half never moves (the pricey arm buys it nothing).
    assert points == [(1.0, 0.5), (5.5, 1.0)]


def test_routing_ceiling_is_the_gain_of_the_hindsight_group_router() -> None:
    ceiling = routing_ceiling(
        CEILING_QUALITY, CEILING_COST, CEILING_METADATA, ["task"], CEILING_SINGLES
    )
    grid = cost_grid(CEILING_SINGLES)
    by_group = np.interp(grid, [1.0, 5.5], [0.5, 1.0])  # flat at 1.0 past 5.5
    zero = np.interp(grid, [1.0, 10.0], [0.5, 1.0])
    assert ceiling["keys"] == ["task"]
    assert ceiling["groups"] == 2
    assert ceiling["coverage"] == 1.0
    assert ceiling["mean"] == pytest.approx(100 * float(np.mean(by_group - zero)))
    assert ceiling["min"] == pytest.approx(0.0, abs=1e-12)  # level at both ends
    assert ceiling["frontier"] == [
        {"mean_cost_usd": 1.0, "mean_quality": 0.5},
        {"mean_cost_usd": 5.5, "mean_quality": 1.0},
    ]


def test_without_metadata_keys_the_ceiling_is_the_zero_router_itself() -> None:
    ceiling = routing_ceiling(CEILING_QUALITY, CEILING_COST, [], [], CEILING_SINGLES)
    assert ceiling["groups"] == 1
    assert ceiling["mean"] == pytest.approx(0.0, abs=1e-12)
    assert ceiling["min"] == pytest.approx(0.0, abs=1e-12)
    # A key the records do not have puts every prompt in one group too.
    absent = routing_ceiling(
        CEILING_QUALITY, CEILING_COST, CEILING_METADATA, ["app"], CEILING_SINGLES
    )
    assert absent["groups"] == 1 and absent["mean"] == pytest.approx(0.0, abs=1e-12)


def test_share_of_ceiling_is_the_gain_over_the_ceilings_gain() -> None:
    assert share_of_ceiling(1.5, 3.0) == pytest.approx(0.5)
    assert share_of_ceiling(4.5, 3.0) == pytest.approx(1.5)  # the prompt's features gain more
    assert share_of_ceiling(-1.5, 3.0) == pytest.approx(-0.5)
    # No ceiling to share (no keys: gain 0; a gainless one) or no policy gain: none.
    assert share_of_ceiling(1.0, 0.0) is None
    assert share_of_ceiling(1.0, 1e-12) is None  # the rounding of a keyless ceiling
    assert share_of_ceiling(None, 3.0) is None
    assert share_of_ceiling(1.0, None) is None
