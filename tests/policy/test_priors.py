"""The price-tier prior and cost-aware exploration (issue 18): exact values on hand-made arms."""

from __future__ import annotations

import numpy as np
import pytest

from banditd.domain import ArmSpec, RouterSpec
from banditd.policy import LinUCB, _kernels
from banditd.policy.priors import PRICE_TIER_SPREAD, price_tier_quality
from banditd.state import posterior_snapshot
from banditd.state.posterior import Posterior, Prior


@pytest.mark.parametrize(
    ("prices", "want"),
    [
        ([1.0, 10.0, 100.0], [0.5, 0.7, 0.9]),  # linear in log price over the span
        ([100.0, 1.0], [0.9, 0.5]),  # by price, not by order
        ([2.0, 2.0, 2.0], [0.7, 0.7, 0.7]),  # priced alike: no tiers
        ([0.0, 0.0], [0.7, 0.7]),  # all free (replay's unpriced arms): no tiers
        ([0.0, 1e-4, 1.0], [0.5, 0.5, 0.9]),  # free counts as the floor, 1e-4 of the top
    ],
)
def test_price_tier_quality(prices: list[float], want: list[float]) -> None:
    got = price_tier_quality(np.array(prices), center=0.7, spread=0.4)
    np.testing.assert_allclose(got, want, atol=1e-12)


def spec(prices: dict[str, float]) -> RouterSpec:
    arms = tuple(ArmSpec(name, price, price) for name, price in prices.items())
    return RouterSpec(tenant="t", name="r", arms=arms, embedding_dim=2, prior_weight=10.0)


def test_a_router_s_arms_start_at_their_price_tier() -> None:
    prior = Prior.of(spec({"cheap": 0.1, "mid": 1.0, "dear": 10.0}))
    post = Posterior.empty(prior, 300)
    rows = {arm: post.index(arm) for arm in ("cheap", "mid", "dear")}
    theta0 = {arm: post.theta[row, 0] for arm, row in rows.items()}
    half = PRICE_TIER_SPREAD / 2
    assert theta0 == pytest.approx({"cheap": 0.7 - half, "mid": 0.7, "dear": 0.7 + half})
    assert post.index("added later") == 3  # not in the router's prices: the center
    assert post.theta[3, 0] == 0.7
    np.testing.assert_array_equal(post.a[0], 10.0 * np.eye(3))  # worth prior_weight events


def test_the_price_tier_survives_a_snapshot() -> None:
    post = Posterior.empty(Prior.of(spec({"cheap": 0.1, "dear": 10.0})), 300)
    restored = posterior_snapshot.load(posterior_snapshot.dump(post))
    assert restored.prior == post.prior and len(post.prior.arm_quality) == 2


def test_cost_aware_bonus_shrinks_with_the_cost_term() -> None:
    rng = np.random.default_rng(0)
    m = rng.normal(size=(3, 4, 4))
    a_inv = np.ascontiguousarray(np.einsum("kij,klj->kil", m, m) + np.eye(4))
    theta = rng.normal(size=(3, 4))
    idx, x = np.arange(3, dtype=np.int64), rng.normal(size=4)
    plain = _kernels.linucb_scores(a_inv, theta, idx, x, 0.5)
    mean = _kernels.mean_scores(theta, idx, x)
    free = _kernels.cost_aware_linucb_scores(a_inv, theta, idx, x, 0.5, np.zeros(3))
    priced = _kernels.cost_aware_linucb_scores(a_inv, theta, idx, x, 0.5, np.array([0, 1, 3.0]))
    np.testing.assert_array_equal(free, plain)  # no cost weight: plain LinUCB, bit for bit
    np.testing.assert_allclose(priced - mean, (plain - mean) / np.array([1, 2, 4.0]), rtol=1e-12)


def test_an_expensive_arm_must_promise_more_to_be_explored() -> None:
    # Two untried arms at the same prior; "dear" costs 0.5 of quality more at this cost weight.
    # Its bonus (0.3 x 1 = 0.3 plain) would still win by 0.1 with plain LinUCB ...
    post = Posterior.empty(Prior(1, quality=0.5), 300)
    idx = np.array([post.index("cheap"), post.index("dear")], dtype=np.int64)
    post.theta[1, 0], post.b[1, 0] = 1.1, 1.1  # ... as dear's mean is 0.6 above cheap's
    x, costs, weight = np.ones(1), np.array([0.0, 0.5]), 1.0
    choice = LinUCB(0.3).choose(post, idx, x, costs, weight, np.random.default_rng(0))
    # Cost-aware: dear's bonus is 0.3 / (1 + 0.5) = 0.2, so 1.1 + 0.2 - 0.5 = 0.8 = cheap's
    # 0.5 + 0.3; the tie goes to the configured order.
    np.testing.assert_allclose(choice.utility, [0.8, 0.8])
    assert choice.chosen == 0
    plain = _kernels.linucb_scores(post.a_inv, post.theta, idx, x, 0.3) - weight * costs
    assert int(np.argmax(plain)) == 1
