"""Posterior.expected_costs (one kernel call for every arm) gives, bit for bit, what the per-arm
Python it replaced gave: ``reference`` below is that Python, kept here as the oracle."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from banditd.domain import ArmSpec, FeedbackEvent, FloatArray, RouterSpec
from banditd.domain.ceilings import HARD_MAX_CALL_USD, HARD_MAX_CALL_WH, HARD_MAX_LATENCY_MS
from banditd.state.posterior import (
    COST_CEILING,
    COST_FLOOR,
    COST_MODEL_MIN_EVENTS,
    Posterior,
)
from banditd.state.prior import Prior

DIM = 4


def _clamp(value: float, low: float, high: float, *, nan: float) -> float:
    if math.isnan(value):
        return nan
    return min(max(value, low), high)


def reference(
    post: Posterior, idx: int, arm: ArmSpec, input_tokens: float, x: FloatArray | None
) -> tuple[float, float, float]:
    """(cost, latency, energy) of one arm, as expected_cost_usd, expected_latency_ms and
    expected_energy_wh computed them (banditd 7 December 2026, before vectorising)."""

    def usd(value: float) -> float:
        return _clamp(value, 0.0, HARD_MAX_CALL_USD, nan=HARD_MAX_CALL_USD)

    def output_tokens() -> float:
        total = post.prior_output_tokens + post.output_tokens_sum[idx]
        return float(total / (1 + post.output_tokens_n[idx]))

    def predict(head: str, prior: float) -> float:
        n = int(getattr(post, f"{head}_n")[idx])
        if n == 0:
            return prior
        total = float(getattr(post, f"{head}_sum")[idx])
        mean = (prior + total) / (1 + n) if prior > 0 else total / n
        if x is None or n < COST_MODEL_MIN_EVENTS or x.shape != (post.dim,):
            return mean
        predicted = float(np.dot(getattr(post, f"{head}_theta")[idx], x))
        return _clamp(predicted, COST_FLOOR * mean, COST_CEILING * mean, nan=mean)

    def cost() -> float:
        n = post.observed_cost_n[idx]
        if post.output_tokens_n[idx] == 0 and n > 0:
            mean = usd(float(post.observed_cost_sum[idx] / n))
            if x is None or n < COST_MODEL_MIN_EVENTS or x.shape != (post.dim,):
                return mean
            predicted = float(np.dot(post.cost_theta[idx], x))
            return _clamp(predicted, COST_FLOOR * mean, COST_CEILING * mean, nan=mean)
        return usd(arm.cost_usd(input_tokens, output_tokens()))

    latency = predict("lat", arm.prior_latency_ms)
    latency = _clamp(latency, 0.0, HARD_MAX_LATENCY_MS, nan=HARD_MAX_LATENCY_MS)
    prior = arm.energy_wh(input_tokens, output_tokens())
    prior = _clamp(prior, 0.0, HARD_MAX_CALL_WH, nan=HARD_MAX_CALL_WH)
    energy = _clamp(predict("energy", prior), 0.0, HARD_MAX_CALL_WH, nan=HARD_MAX_CALL_WH)
    return cost(), latency, energy


def references(
    post: Posterior, arms: tuple[ArmSpec, ...], input_tokens: float, x: FloatArray | None
) -> FloatArray:
    """``reference`` of each arm, shaped as expected_costs answers: (3, len(arms))."""
    rows = [reference(post, post.index(a.name), a, input_tokens, x) for a in arms]
    return np.array(rows).T


def _arms() -> tuple[ArmSpec, ...]:
    """Arms with and without latency and energy priors, one priced out of any ceiling."""
    return (
        ArmSpec("fresh", 0.3, 1.2),
        ArmSpec("tokens", 1.0, 4.0, prior_latency_ms=800.0, output_energy_wh_per_mtok=90.0),
        ArmSpec("costs", 0.2, 0.8, prior_latency_ms=300.0, input_energy_wh_per_mtok=7.0),
        ArmSpec("few-costs", 5.0, 15.0),
        ArmSpec("latency", 0.1, 0.4, prior_latency_ms=1500.0),
        ArmSpec("few-latency", 0.1, 0.4, prior_latency_ms=250.0, input_energy_wh_per_mtok=3.0),
        ArmSpec("energy", 2.0, 6.0, input_energy_wh_per_mtok=1e6, output_energy_wh_per_mtok=1e6),
        ArmSpec("wild", 1e6, 1e6, prior_latency_ms=1e12, output_energy_wh_per_mtok=1e9),
        ArmSpec("zero", 0.0, -0.0, prior_latency_ms=-0.0),
    )


def _event(event_id: int, arm: str, x: FloatArray, rng: np.random.Generator) -> FeedbackEvent:
    return FeedbackEvent(
        event_id, 1, f"d{event_id}", arm, x, float(rng.random()), 0.0, None, None, None, False, 0.0
    )


def _posterior(rng: np.random.Generator) -> Posterior:
    """A mix: no reports; output tokens; costs without tokens (past and short of the cost
    model's threshold); latency and energy reports (past and short of it); reports that push a
    regression past its band."""
    post = Posterior.empty(Prior(DIM, 0.5, 2.0), 250)
    for arm in _arms():
        post.index(arm.name)
    plan = (
        ("tokens", {"output_tokens": 300, "cost_usd": 0.002}, 30),
        ("costs", {"cost_usd": 0.004}, COST_MODEL_MIN_EVENTS + 7),
        ("few-costs", {"cost_usd": 0.05}, COST_MODEL_MIN_EVENTS - 1),
        ("latency", {"latency_ms": 900.0, "energy_wh": 0.02}, COST_MODEL_MIN_EVENTS + 3),
        ("few-latency", {"latency_ms": 120.0, "energy_wh": 0.5}, 5),
        ("energy", {"energy_wh": 3.0, "cost_usd": 0.01}, COST_MODEL_MIN_EVENTS),
        ("wild", {"latency_ms": 9e9, "energy_wh": 1e8}, COST_MODEL_MIN_EVENTS + 1),
    )
    event_id = 0
    for arm, fields, count in plan:
        for _ in range(count):
            event_id += 1
            x = np.concatenate([[1.0], rng.normal(size=DIM - 1)])
            spread = {
                k: v * float(rng.uniform(0.2, 3.0)) if isinstance(v, float) else v
                for k, v in fields.items()
            }
            base = _event(event_id, arm, x, rng)
            reported = "cost_usd" in fields  # else the call's cost is not known
            assert post.apply(replace(base, cost_reported=reported, **spread)) is None
    return post


@pytest.mark.parametrize("seed", range(4))
def test_every_arm_as_the_per_arm_python_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    post = _posterior(rng)
    arms = _arms()
    spec = RouterSpec("t", "r", arms, embedding_dim=DIM - 1)
    idx = np.array([post.index(a.name) for a in arms], dtype=np.int64)
    far = np.concatenate([[1.0], 40.0 * rng.normal(size=DIM - 1)])  # past the models' bands
    contexts = (None, np.concatenate([[1.0], rng.normal(size=DIM - 1)]), far, np.ones(DIM + 2))
    for x in contexts:
        for tokens in (500.0, 1.0, 1234.5, 2.0**40):
            got = post.expected_costs(idx, spec.arm_numbers, tokens, x)
            want = references(post, arms, tokens, x)
            assert got.tobytes() == want.tobytes(), (x, tokens, got, want)
    # A subset, in another order: each row is its arm's.
    order = np.array([6, 0, 3], dtype=np.int64)
    x = contexts[1]
    got = post.expected_costs(idx[order], spec.arm_numbers[order], 700.0, x)
    want = references(post, tuple(arms[k] for k in order), 700.0, x)
    assert got.tobytes() == want.tobytes()


def test_non_numbers_are_taken_as_the_most_expensive() -> None:
    """A regression whose theta is not a number (never from the log: the events are bounded)
    falls back to its mean, as the clamps did."""
    rng = np.random.default_rng(9)
    post = _posterior(rng)
    arms = _arms()
    for name in ("cost_theta", "lat_theta", "energy_theta"):
        getattr(post, name)[:] = np.nan
    idx = np.array([post.index(a.name) for a in arms], dtype=np.int64)
    x = np.concatenate([[1.0], rng.normal(size=DIM - 1)])
    got = post.expected_costs(idx, RouterSpec("t", "r", arms).arm_numbers, 500.0, x)
    want = references(post, arms, 500.0, x)
    assert got.tobytes() == want.tobytes()
    assert np.all(np.isfinite(got))


def test_no_arms() -> None:
    post = Posterior.empty(Prior(DIM), 300)
    got = post.expected_costs(np.zeros(0, dtype=np.int64), np.zeros((0, 5)), 500.0, None)
    assert got.shape == (3, 0)
