"""Extra Select work for shadow policies: rank_arms alone vs rank_arms + shadow_picks.

    .venv/bin/python bench/shadow_overhead.py

11 arms, embedding_dim 16 (x of 17), a posterior with 200 events; the best of 5 rounds of 3,000
decisions each. Prints microseconds per decision and the ratio to rank_arms alone.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from banditd.domain import ArmSpec, RouterSpec, ShadowSpec
from banditd.evaluation import replay
from banditd.flows.ranking import rank_arms
from banditd.flows.shadow import shadow_picks
from banditd.state.fold import RouterState, fold

ARMS = tuple(ArmSpec(f"m{i}", 0.1 * (i + 1), 0.4 * (i + 1)) for i in range(11))
LIVE = RouterSpec("bench", "shadows", ARMS, policy="linucb", embedding_dim=16)
SHADOWS = (
    ShadowSpec("ucb", "linucb", 0.5),
    ShadowSpec("ts", "thompson"),
    ShadowSpec("eps", "epsilon-greedy"),
    ShadowSpec("cheap", "linucb", 2.0, 50.0),
)
N = 3000


def per_decision_us(spec: RouterSpec, xs: np.ndarray) -> float:
    state = RouterState.fresh(spec)
    rng = np.random.default_rng(0)
    fold(
        state,
        [replay._event(t + 1, f"m{t % 11}", xs[t], float(rng.random()), 1e-3) for t in range(200)],
    )
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for i in range(N):
            ranked = rank_arms(state, xs[i], prompt="a prompt of some words " * 10, rng=rng)
            shadow_picks(state, ranked, xs[i], None, i)
        best = min(best, (time.perf_counter() - started) / N * 1e6)
    return best


def main() -> None:
    rng = np.random.default_rng(1)
    xs = np.column_stack([np.ones(N), rng.normal(size=(N, 16))])
    base = per_decision_us(LIVE, xs)
    print(f"rank_arms alone: {base:.1f} us per decision")
    for label, shadows in (
        ("1 LinUCB shadow", SHADOWS[:1]),
        ("1 Thompson shadow", SHADOWS[1:2]),
        ("4 shadows", SHADOWS),
    ):
        us = per_decision_us(dataclasses.replace(LIVE, shadows=shadows), xs)
        print(f"+ {label}: {us:.1f} us ({us / base:.2f}x, +{us - base:.1f} us)")


if __name__ == "__main__":
    main()
