"""The price-tier prior, its shared level and cost-aware exploration (issue 18): exact values on
hand-made arms."""

from __future__ import annotations

import numpy as np
import pytest

from banditd.domain import ArmSpec, FeedbackEvent, RouterSpec
from banditd.policy import LinUCB, _kernels
from banditd.policy._kernels import shared_level
from banditd.policy.priors import LEVEL_WEIGHT, PRICE_TIER_SPREAD, price_tier_quality
from banditd.state import posterior_snapshot
from banditd.state.posterior import Posterior
from banditd.state.prior import Prior


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


def test_shared_level_weighs_each_arm_up_to_its_prior_weight() -> None:
    sums, counts = np.array([30.0, 2.0, 0.0]), np.array([100.0, 4.0, 0.0])
    means = np.array([0.5, 0.7, 0.9])
    # Arm 0: mean 0.3, 0.2 under its prior, worth 10 x 100 / 110; arm 1: 0.5, 0.2 under too,
    # worth 10 x 4 / 14 (they agree: nothing between them); arm 2 has no feedback and says
    # nothing. The level's own prior is worth 5.
    w0, w1 = 1000 / 110, 40 / 14
    want = (w0 * -0.2 + w1 * -0.2) / (5 + w0 + w1)
    assert shared_level(sums, counts, means, 10.0, 5.0) == pytest.approx(want, rel=1e-12)
    assert shared_level(sums, np.zeros(3), means, 10.0, 5.0) == 0.0  # no feedback: no move
    # However often arm 0 is pulled, it counts for at most its prior's 10.
    many = shared_level(np.array([3e5, 0, 0]), np.array([1e6, 0, 0]), means, 10.0, 5.0)
    assert many == pytest.approx(-0.2 * 10 / 15, rel=1e-4)
    # Arms better than their priors leave it at 0: it only ever comes down.
    assert shared_level(np.array([90.0, 80.0]), np.array([100.0, 100.0]), means[:2], 10, 5) == 0


def test_shared_level_follows_only_what_the_arms_agree_on() -> None:
    # Two arms, 90 rewards each, 0.4 under and 0.2 over their priors: each reading's variance is
    # 1/10 + 1/90 = 1/9 (x 0.25), weight 36. Their spread is far more than that allows: the
    # excess (DerSimonian-Laird) is (36 x 0.3^2 x 2 - 1) / (72 - 36) = 0.1522 (x 0.25: 0.6089),
    # so each reading's variance grows to 0.72 and the level is (-0.2 / 0.72) / (5 + 2 / 0.72)
    # = -1/28, where readings that agreed as closely would have given -0.2 x 9 / 23.
    sums, counts, means = np.array([27.0, 72.0]), np.array([90.0, 90.0]), np.array([0.7, 0.6])
    assert shared_level(sums, counts, means, 10.0, 5.0) == pytest.approx(-1 / 28, rel=1e-9)


def test_what_one_arm_shows_moves_every_arm_s_prior() -> None:
    # The cheap arm answers badly (0.1 against its tier's 0.5): the untried dear arm, and an arm
    # added later, start lower too, by the same shared level.
    post = Posterior.empty(Prior.of(spec({"cheap": 0.1, "dear": 10.0})), 300)
    dear = post.index("dear")
    before = float(post.theta[dear, 0])
    for i in range(200):
        x = np.eye(post.dim)[0]
        reward = float(i % 10 == 0)
        post.apply(FeedbackEvent(i + 1, 1, f"d{i}", "cheap", x, reward, 0.0, 1, 1, None, False, 0))
    assert post.level == pytest.approx(-0.4 * 10 * 200 / 210 / (LEVEL_WEIGHT + 2000 / 210))
    assert post.level < -0.15
    assert post.theta[dear, 0] == pytest.approx(before + post.level, rel=1e-12)
    new = post.index("new")
    assert post.theta[new, 0] == pytest.approx(0.7 + post.level, rel=1e-12)
    restored = posterior_snapshot.load(posterior_snapshot.dump(post))
    assert restored.level == post.level
    np.testing.assert_array_equal(restored.theta, post.theta)
