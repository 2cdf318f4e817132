"""Simulated environments: regret, drift and cost weight, through the real posterior and policy."""

from __future__ import annotations

import numpy as np
import pytest

from banditd.domain import FeedbackEvent
from banditd.policy import EpsilonGreedy, LinUCB, Policy, Thompson
from banditd.state.posterior import Posterior
from banditd.state.prior import Prior

DIM, ARMS, ROUNDS = 6, 5, 3000


def simulate(policy: Policy, seed: int) -> np.ndarray:
    """Per-round regret of ``policy`` on a linear-Bernoulli environment, shape (ROUNDS,)."""
    env = np.random.default_rng(1000 + seed)
    weights = env.normal(scale=0.35, size=(ARMS, DIM))
    weights[:, 0] = 0.5
    post = Posterior.empty(Prior(DIM, quality=1.0), 100)
    idx = np.array([post.index(f"arm{i}") for i in range(ARMS)], dtype=np.int64)
    rng = np.random.default_rng(seed)
    regret = np.empty(ROUNDS)
    for t in range(ROUNDS):
        x = np.concatenate([[1.0], env.normal(size=DIM - 1) / np.sqrt(DIM - 1)])
        p = np.clip(weights @ x, 0.0, 1.0)
        choice = policy.choose(post, idx, x, np.zeros(ARMS), 0.0, rng)
        regret[t] = p.max() - p[choice.chosen]
        reward = float(env.random() < p[choice.chosen])
        post.apply(
            FeedbackEvent(
                t + 1, 1, str(t), f"arm{choice.chosen}", x, reward, 0, None, None, None, False, 0
            )
        )
    return regret


@pytest.mark.parametrize("seed", [0, 1])
def test_linear_bandits_have_sublinear_regret_and_beat_epsilon_greedy(seed: int) -> None:
    totals = {}
    for policy in (LinUCB(0.5), Thompson(0.3), EpsilonGreedy(0.1)):
        regret = simulate(policy, seed)
        first, last = regret[: ROUNDS // 3].sum(), regret[-ROUNDS // 3 :].sum()
        if not isinstance(policy, EpsilonGreedy):
            assert last < 0.5 * first, f"{policy.name}: regret is not flattening"
        totals[policy.name] = regret.sum()
    assert totals["linucb"] < totals["epsilon-greedy"]
    assert totals["thompson"] < totals["epsilon-greedy"]


def test_forgetting_relearns_after_drift() -> None:
    """An arm that was poor and became good: with forgetting, its estimate follows within 100."""
    x = np.array([1.0, 0.0, 0.0])

    def estimate(forgetting: float) -> float:
        post = Posterior.empty(Prior(3, quality=0.0, forgetting=forgetting), 100)
        rewards = [0.2] * 500 + [0.9] * 100
        for t, r in enumerate(rewards):
            post.apply(FeedbackEvent(t + 1, 1, str(t), "a", x, r, 0, None, None, None, False, 0))
        return float(post.theta[post.index("a")] @ x)

    assert estimate(1.0) < 0.35
    assert estimate(0.95) > 0.85


def test_raising_cost_weight_never_picks_a_costlier_arm() -> None:
    post = Posterior.empty(Prior(3, quality=0.0), 100)
    rng = np.random.default_rng(5)
    arms = [post.index(f"m{i}") for i in range(6)]
    quality = np.linspace(0.3, 0.9, 6)
    for t in range(600):
        a = t % 6
        xt = np.concatenate([[1.0], rng.normal(size=2)])
        post.apply(
            FeedbackEvent(
                t + 1, 1, str(t), f"m{a}", xt, float(quality[a]), 0, None, None, None, False, 0
            )
        )
    idx = np.array(arms, dtype=np.int64)
    cost = np.array([0.0001, 0.0003, 0.0009, 0.002, 0.006, 0.02])
    for _ in range(20):
        x = np.concatenate([[1.0], rng.normal(size=2)])
        picked = [
            cost[LinUCB(0.2).choose(post, idx, x, cost, w, rng).chosen]
            for w in (0, 1, 3, 10, 30, 100, 300, 1000, 1e4)
        ]
        assert picked == sorted(picked, reverse=True)
        assert picked[0] == cost[-1] and picked[-1] == cost[0]
