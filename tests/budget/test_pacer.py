"""The knapsack threshold and time pacing on synthetic streams (pure maths, no I/O)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from banditd.budget.pacer import Pacing, efficiency_bounds, gate, pace, psi

# Three arms: quality and USD per call (cheap and decent, middling, strong and dear).
QUALITY = np.array([0.60, 0.72, 0.88])
COST = np.array([0.0001, 0.0006, 0.005])


def test_psi_runs_from_l_over_e_to_u() -> None:
    lower, upper = 100.0, 6000.0
    assert psi(0.0, lower, upper) == pytest.approx(lower / math.e)
    assert psi(1.0, lower, upper) == pytest.approx(upper)
    values = [psi(z, lower, upper) for z in np.linspace(0, 1, 11)]
    assert all(b > a for a, b in itertools.pairwise(values))
    assert psi(2.0, lower, upper) == psi(1.0, lower, upper)  # never above U
    assert 0.0 < psi(-1.0, lower, upper) < lower / math.e  # below the curve: toward 0
    assert psi(-math.inf, lower, upper) == 0.0


def test_efficiency_bounds_ignore_free_arms() -> None:
    assert efficiency_bounds(QUALITY, COST) == pytest.approx((0.88 / 0.005, 0.60 / 0.0001))
    assert efficiency_bounds(np.array([0.5]), np.array([0.0])) is None


def test_gate_masks_unaffordable_arms_and_reports_exhaustion() -> None:
    roomy = gate(QUALITY, COST, [Pacing(1.0, 0.0, 1.0, available_usd=0.001)])
    assert roomy.eligible.tolist() == [True, True, False]  # the strong arm costs more than held
    assert not roomy.exhausted
    dry = gate(QUALITY, COST, [Pacing(1.0, 1.0, 1.0, available_usd=0.00005)])
    assert dry.exhausted and not dry.eligible.any()
    # Far ahead of the clock: the price is U, only the most efficient arm passes.
    tight = gate(QUALITY, COST, [Pacing(1.0, 1.0, 0.5, available_usd=1.0)])
    assert tight.eligible.tolist() == [True, False, False]
    # On the clock the price is the middle of the curve: the strong arm is masked ...
    lower, upper = 0.88 / 0.005, 0.60 / 0.0001
    on_clock = gate(QUALITY, COST, [Pacing(1.0, 0.5, 0.5, available_usd=1.0)])
    assert on_clock.price == pytest.approx(psi(0.5, lower, upper))
    assert on_clock.eligible.tolist() == [True, True, False]
    # ... slack / 2 behind it the price is the floor L / e, where every arm passes ...
    floor = gate(QUALITY, COST, [Pacing(1.0, 0.475, 0.5, available_usd=1.0)])
    assert floor.price == pytest.approx(lower / math.e) and floor.eligible.all()
    # ... and with nothing spent late in the period, money is nearly free.
    free = gate(QUALITY, COST, [Pacing(1.0, 0.0, 1.0, available_usd=1.0)])
    assert free.eligible.all() and free.price < 1e-6


def test_pace_is_measured_against_the_clock() -> None:
    assert pace(0.5, 1.0, elapsed=0.5) == pytest.approx(0.5)  # on the clock: the middle
    assert pace(0.525, 1.0, elapsed=0.5) == pytest.approx(1.0)  # slack / 2 ahead: U
    assert pace(0.9, 1.0, elapsed=0.5) == 1.0  # never past U
    assert pace(0.475, 1.0, elapsed=0.5) == pytest.approx(0.0)  # slack / 2 behind: L / e
    assert pace(0.4, 1.0, elapsed=0.95) == pytest.approx(0.5 - 0.55 / 0.05)  # far behind
    assert pace(20.0, 100.0, elapsed=0.2, slack=0.1) == pytest.approx(0.5)  # in shares of limit
    assert pace(0.0, 0.0, elapsed=0.5) == 1.0  # a zero limit
    assert pace(0.51, 1.0, elapsed=0.5, slack=0.0) == 1.0  # no slack: U ahead ...
    assert pace(0.5, 1.0, elapsed=0.5, slack=0.0) == -math.inf  # ... free on the clock


def test_a_period_begins_at_the_floor_with_every_arm_eligible() -> None:
    """The first request of a period (nothing spent, elapsed about 0) is on the clock, whose
    middle price masked the least efficient arm of a budget however loose until slack / 2 of
    the period had passed (hours of a month): the clock allows slack / 2 of the limit from
    the start, so it is priced at L / e; past slack / 2 of the period nothing changes."""
    lower = 0.88 / 0.005  # the strong arm's quality per dollar: L
    loose = 1000.0  # some 200,000 calls to the strong arm
    for elapsed in (0.0, 1e-6, 0.01):
        first = gate(QUALITY, COST, [Pacing(loose, 0.0, elapsed, available_usd=loose)])
        assert first.eligible.all() and first.price <= lower / math.e
    assert pace(0.0, 1.0, elapsed=0.0) == pytest.approx(0.0)
    assert pace(0.025, 1.0, elapsed=0.0) == pytest.approx(0.5)  # slack / 2 spent: the middle
    assert pace(0.05, 1.0, elapsed=0.01) == pytest.approx(1.0)  # slack spent at once: U
    assert pace(0.0, 1.0, elapsed=0.025) == pytest.approx(0.0)
    assert pace(0.0, 1.0, elapsed=0.03) == pytest.approx(0.5 - 0.03 / 0.05)
    assert gate(QUALITY, COST, [Pacing(1.0, 0.05, 0.0, 1.0)]).eligible.tolist() == [
        True,
        False,
        False,
    ]


def run_stream(
    budget: float, arrivals: np.ndarray, seed: int = 0, clock: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Route a stream (arrival times in [0, 1) of one period) through the gate, each request
    taking the eligible arm of best quality - price x cost; per request its time and the spend
    committed after it. Without the clock the whole period counts as passed from the start."""
    rng = np.random.default_rng(seed)
    committed, spend = 0.0, []
    for t in arrivals:
        quality = np.clip(QUALITY + rng.normal(0, 0.05, size=3), 0, 1)
        elapsed = float(t) if clock else 1.0
        g = gate(quality, COST, [Pacing(budget, committed, elapsed, budget - committed)])
        if g.exhausted:
            spend.append(committed)
            continue
        utility = np.where(g.eligible, quality - g.price * COST, -np.inf)
        committed += float(COST[int(np.argmax(utility))])
        spend.append(committed)
    return arrivals, np.array(spend)


@pytest.mark.parametrize("share", [0.1, 0.4])
def test_steady_traffic_spends_the_budget_along_the_period(share: float) -> None:
    """At 10 % of what the strong arm alone would cost the price that balances spend lies on
    the knapsack's curve (between the cheap and the middling arm); at 40 % it lies below the
    curve's floor L / e (between the middling and the strong arm), where the knapsack's rule
    spent about 55 % of the budget."""
    n = 4000
    budget = share * n * COST[2]  # below what the strong arm alone would cost
    times, spend = run_stream(budget, np.arange(n) / n)
    assert spend[-1] <= budget  # never over
    assert spend[-1] >= 0.95 * budget  # and not left unused
    for fraction in (0.25, 0.5, 0.75):  # spend tracks the clock (within slack / 2 + one call)
        at = spend[np.searchsorted(times, fraction) - 1]
        assert at <= budget * (fraction + 0.025) + COST.max()
        assert at >= budget * (fraction - 0.05)


def test_a_quiet_spell_leaves_money_for_later() -> None:
    n = 4000
    budget = 0.04 * n * COST[2]
    busy_half = 0.5 + np.arange(n // 2) / n  # nothing arrives in the first half of the period
    _, spend = run_stream(budget, busy_half)
    assert spend[-1] <= budget
    assert spend[-1] >= 0.95 * budget  # the first half's share is spent in the second


def test_without_time_pacing_an_early_burst_would_spend_everything() -> None:
    """Control: the same steady stream with the whole limit usable at once front-loads spend."""
    n = 4000
    budget = 0.04 * n * COST[2]
    _, spend = run_stream(budget, np.arange(n) / n, clock=False)
    _, paced = run_stream(budget, np.arange(n) / n)
    quarter = n // 4 - 1
    assert paced[quarter] <= budget * 0.3 + COST.max()
    assert spend[quarter] > paced[quarter] * 2


def test_at_the_top_price_the_most_efficient_arm_still_passes() -> None:
    """psi(1) is U exactly, never a rounding above it: the arm at quality per dollar U passes
    the threshold, so a budget far ahead of the clock serves its most efficient arm, not the
    cheapest affordable one as a fallback."""
    rng = np.random.default_rng(0)
    for _ in range(500):
        quality = rng.uniform(0.05, 1.0, size=3)
        cost = rng.uniform(1e-5, 1e-2, size=3)
        lower, upper = efficiency_bounds(quality, cost) or (0.0, 0.0)
        assert psi(1.0, lower, upper) <= upper
        ahead = Pacing(limit_usd=1.0, committed_usd=1.0, elapsed=0.0, available_usd=1.0)
        decided = gate(quality, cost, [ahead])
        assert not decided.fallback
        assert decided.eligible[int(np.argmax(quality / cost))]
