"""Seeded exact behaviour of each policy behind the shared interface."""

from __future__ import annotations

import numpy as np
import pytest

from banditd import domain
from banditd.domain import FeedbackEvent
from banditd.policy import POLICIES, EpsilonGreedy, LinUCB, Thompson
from banditd.state.posterior import Posterior
from banditd.state.prior import Prior


def trained(dim: int = 3) -> tuple[Posterior, np.ndarray]:
    post = Posterior.empty(Prior(dim), 100)
    idx = np.array([post.index(a) for a in ("a", "b", "c")], dtype=np.int64)
    rng = np.random.default_rng(3)
    for i in range(300):
        arm = ("a", "b", "c")[i % 3]
        x = np.concatenate([[1.0], rng.normal(size=dim - 1)])
        reward = {"a": 0.2, "b": 0.8, "c": 0.5}[arm]
        post.apply(
            FeedbackEvent(i + 1, 1, f"d{i}", arm, x, reward, 0.0, None, None, None, False, 0.0)
        )
    return post, idx


def test_linucb_is_mean_plus_bonus_and_deterministic() -> None:
    post, idx = trained()
    x = np.array([1.0, 0.3, -0.2])
    policy = LinUCB(0.5)
    got = policy.quality_scores(post, idx, x, np.random.default_rng(0))
    want = [post.theta[i] @ x + 0.5 * np.sqrt(x @ post.a_inv[i] @ x) for i in idx]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    choice = policy.choose(post, idx, x, np.zeros(3), 0.0, np.random.default_rng(1))
    assert choice.chosen == 1 and choice.propensity == 1.0 and not choice.explored


def test_cost_weight_moves_choice_to_cheaper_arm() -> None:
    post, idx = trained()
    x = np.array([1.0, 0.0, 0.0])
    costs = np.array([0.0001, 0.01, 0.0002])
    free = LinUCB(0.1).choose(post, idx, x, costs, 0.0, np.random.default_rng(0))
    priced = LinUCB(0.1).choose(post, idx, x, costs, 100.0, np.random.default_rng(0))
    assert free.chosen == 1
    assert priced.chosen == 2  # b's 0.3 quality edge over c is not worth $0.0098 at 100/$
    np.testing.assert_allclose(priced.utility, priced.quality - 100.0 * costs)
    assert list(priced.order) == list(np.argsort(-priced.utility, kind="stable"))


def test_untrained_ties_break_by_configured_order() -> None:
    post = Posterior.empty(Prior(3), 100)
    idx = np.array([post.index(a) for a in ("z", "y", "x")], dtype=np.int64)
    choice = LinUCB(1.0).choose(post, idx, np.ones(3), np.zeros(3), 0.0, np.random.default_rng(0))
    assert list(choice.order) == [0, 1, 2]


def test_thompson_is_seeded_and_propensity_tracks_win_rate() -> None:
    post, idx = trained()
    x = np.array([1.0, 0.1, 0.1])
    policy = Thompson(0.5)
    a = policy.choose(post, idx, x, np.zeros(3), 0.0, np.random.default_rng(42))
    b = policy.choose(post, idx, x, np.zeros(3), 0.0, np.random.default_rng(42))
    assert a.chosen == b.chosen and a.propensity == b.propensity
    wins = np.mean(
        [
            policy.choose(post, idx, x, np.zeros(3), 0.0, np.random.default_rng(s)).chosen == 1
            for s in range(400)
        ]
    )
    assert a.chosen == 1
    assert a.propensity == pytest.approx(wins, abs=0.08)
    assert 0.0 < a.propensity <= 1.0


def test_thompson_explores_an_uncertain_arm() -> None:
    post, idx = trained()
    fresh = np.append(idx, post.index("new"))
    x = np.array([1.0, 0.0, 0.0])
    picks = {
        Thompson(0.5).choose(post, fresh, x, np.zeros(4), 0.0, np.random.default_rng(s)).chosen
        for s in range(200)
    }
    assert 3 in picks and 1 in picks


def test_registry_matches_the_names_configs_accept() -> None:
    # Routers run every registered policy but knn (replay only: banditd.policy.knn).
    assert set(POLICIES) - {"knn"} == set(domain.ROUTER_POLICIES)
    assert set(domain.ROUTER_POLICIES) == set(domain.DEFAULT_EXPLORATION)


def test_epsilon_greedy_propensity_is_exact() -> None:
    post, idx = trained()
    x = np.array([1.0, 0.0, 0.0])
    policy = EpsilonGreedy(0.3)
    picks = [
        policy.choose(post, idx, x, np.zeros(3), 0.0, np.random.default_rng(s)) for s in range(3000)
    ]
    for arm in range(3):
        share = np.mean([c.chosen == arm for c in picks])
        stated = {c.propensity for c in picks if c.chosen == arm}
        assert len(stated) == 1
        assert share == pytest.approx(stated.pop(), abs=0.03)
    assert {c.chosen for c in picks if not c.explored} == {1}
