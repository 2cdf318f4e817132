"""The posterior is a pure function of prior + events, and snapshots round-trip exactly."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest

from banditd.domain import ArmSpec, FeedbackEvent, RouterSpec
from banditd.policy.priors import LEVEL_WEIGHT
from banditd.state import posterior_snapshot
from banditd.state.posterior import COST_MODEL_MIN_EVENTS, REFACTORISE_EVERY, Posterior
from banditd.state.prior import Prior


def events(n: int, dim: int, seed: int = 0) -> list[FeedbackEvent]:
    rng = np.random.default_rng(seed)
    return [
        FeedbackEvent(
            event_id=i + 1,
            router_id=1,
            decision_id=f"d{i}",
            arm=("a", "b", "c")[i % 3],
            x=np.concatenate([[1.0], rng.normal(size=dim - 1)]),
            reward=float(rng.random()),
            cost_usd=0.001,
            input_tokens=100,
            output_tokens=int(rng.integers(10, 500)),
            latency_ms=None,
            error=False,
            created_at=0.0,
        )
        for i in range(n)
    ]


def test_rank_one_updates_match_direct_solution() -> None:
    dim = 5
    post = Posterior.empty(Prior(dim, quality=1.0), 300)
    log = events(3 * REFACTORISE_EVERY + 10, dim)
    for e in log:
        post.apply(e)
    # Rewards are uniform on [0, 1], half a point under the prior (1, worth 1): the shared level
    # comes down, three arms worth at most 1 each against its own prior's LEVEL_WEIGHT.
    rewards = {arm: np.array([e.reward for e in log if e.arm == arm]) for arm in "abc"}
    assert -0.5 * 3 / (LEVEL_WEIGHT + 3) < post.level < -0.08
    for arm in ("a", "b", "c"):
        xs = np.array([e.x for e in log if e.arm == arm])
        a = np.eye(dim) + xs.T @ xs
        b = xs.T @ rewards[arm] + np.eye(dim)[0]  # the prior: 1, worth 1
        moved = b + post.level * np.eye(dim)[0]  # ... moved by the level
        idx = post.index(arm)
        np.testing.assert_allclose(post.a[idx], a, rtol=1e-12)
        np.testing.assert_allclose(post.a_inv[idx], np.linalg.inv(a), rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(post.b[idx], b, rtol=1e-12)
        np.testing.assert_allclose(post.fit[idx], np.linalg.solve(a, b), rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(post.theta[idx], np.linalg.solve(a, moved), rtol=1e-8)


def test_same_events_same_arrays_and_snapshot_round_trip() -> None:
    log = events(50, 4)
    one, two = Posterior.empty(Prior(4, 1.0), 300), Posterior.empty(Prior(4, 1.0), 300)
    for e in log[:30]:
        one.apply(e)
    restored = posterior_snapshot.load(posterior_snapshot.dump(one))
    for e in log[30:]:
        restored.apply(e)
    for e in log:
        two.apply(e)
    for name in ("a_inv", "theta", "b", "a", "n_updates", "output_tokens_sum", "reward_sum"):
        np.testing.assert_array_equal(getattr(restored, name), getattr(two, name))
    assert restored.last_event_id == two.last_event_id == 50
    assert restored.level == two.level != 0.0
    per_token = ArmSpec("a", 0.0, 1e6)  # a dollar an output token
    assert expected_cost(restored, per_token, 100) == expected_cost(two, per_token, 100)


def test_events_decided_under_an_earlier_context_are_passed_over() -> None:
    """Prior.context_since: an event whose decision came before that router version (or whose
    version is unknown) teaches nothing but is passed in order; a snapshot keeps the version."""
    log = events(20, 4)
    since, fresh = (
        Posterior.empty(Prior(4, 1.0, context_since=3), 300),
        Posterior.empty(Prior(4, 1.0), 300),
    )
    for i, e in enumerate(log):
        decided = (None if i % 2 else 2) if i < 10 else 3 + i % 2
        since.apply(replace(e, decision_version=decided))
    for e in log[10:]:
        fresh.apply(e)
    assert since.arms == fresh.arms and since.last_event_id == 20
    for name in ("a", "b", "theta", "reward_sum", "n_updates"):
        np.testing.assert_array_equal(getattr(since, name), getattr(fresh, name))
    restored = posterior_snapshot.load(posterior_snapshot.dump(since))
    assert restored.prior == since.prior and restored.prior.context_since == 3


def test_out_of_order_event_is_refused() -> None:
    post = Posterior.empty(Prior(4), 300)
    log = events(2, 4)
    post.apply(log[1])
    with pytest.raises(ValueError, match="out of order"):
        post.apply(log[0])


def test_event_of_another_dimension_is_skipped_but_counted() -> None:
    post = Posterior.empty(Prior(4), 300)
    post.apply(events(1, 6)[0])
    assert post.arms == [] and post.last_event_id == 1


def expected_cost(
    post: Posterior, arm: ArmSpec, input_tokens: float, x: np.ndarray | None = None
) -> float:
    """One arm's expected cost (Posterior.expected_costs, row 0)."""
    idx = np.array([post.index(arm.name)], dtype=np.int64)
    return float(
        post.expected_costs(idx, RouterSpec("t", "r", (arm,)).arm_numbers, input_tokens, x)[0, 0]
    )


def test_expected_output_tokens_shrinks_to_prior() -> None:
    post = Posterior.empty(Prior(3), 300)
    per_token = ArmSpec("a", 0.0, 1e6)  # a dollar an output token: the cost counts them
    assert expected_cost(post, per_token, 1000) == 300
    for e in events(3, 3):
        post.apply(replace(e, arm="a", output_tokens=100))
    assert expected_cost(post, per_token, 1000) == pytest.approx((300 + 3 * 100) / 4)


def test_expected_cost_learns_from_reported_costs_until_tokens_arrive() -> None:
    arm = ArmSpec("a", input_price_per_mtok=1.0, output_price_per_mtok=2.0)
    post = Posterior.empty(Prior(3), 300)
    by_price = arm.cost_usd(1000, 300)
    assert expected_cost(post, arm, 1000) == pytest.approx(by_price)
    base = events(4, 3)
    costs = [(0.004, True), (0.002, True), (0.5, False)]  # the last one was only assumed
    for e, (cost, reported) in zip(base, costs, strict=False):
        post.apply(replace(e, arm="a", output_tokens=None, cost_usd=cost, cost_reported=reported))
    assert expected_cost(post, arm, 1000) == pytest.approx(0.003)
    post.apply(replace(base[3], arm="a", output_tokens=100, cost_usd=0.1))
    assert expected_cost(post, arm, 1000) == pytest.approx(arm.cost_usd(1000, 200))


def test_cost_model_prices_an_arm_by_context() -> None:
    """Reported costs without tokens: the arm's cost is regressed on x, so a request kind whose
    answers cost more is priced higher; before COST_MODEL_MIN_EVENTS reports, the mean."""
    dim = 3  # intercept, "long task" one-hot, "short task" one-hot
    long_x, short_x = np.array([1.0, 1.0, 0.0]), np.array([1.0, 0.0, 1.0])
    arm = ArmSpec("a", 1.0, 1.0)
    post = Posterior.empty(Prior(dim), 300)
    log = [
        replace(
            e,
            arm="a",
            x=long_x if i % 2 else short_x,
            cost_usd=0.010 if i % 2 else 0.001,
            output_tokens=None,
        )
        for i, e in enumerate(events(COST_MODEL_MIN_EVENTS + 20, dim))
    ]
    for e in log[: COST_MODEL_MIN_EVENTS - 1]:
        post.apply(e)
    mean = expected_cost(post, arm, 100, long_x)
    assert mean == pytest.approx(expected_cost(post, arm, 100, short_x))  # too few yet
    for e in log[COST_MODEL_MIN_EVENTS - 1 :]:
        post.apply(e)
    assert expected_cost(post, arm, 100, long_x) == pytest.approx(0.010, rel=0.05)
    assert expected_cost(post, arm, 100, short_x) == pytest.approx(0.001, rel=0.3)
    assert expected_cost(post, arm, 100) == pytest.approx(0.0055, rel=0.01)  # no x: mean
    again = posterior_snapshot.load(posterior_snapshot.dump(post))
    assert expected_cost(again, arm, 100, long_x) == expected_cost(post, arm, 100, long_x)


def test_a_snapshot_from_before_the_cost_model_is_refused() -> None:
    post = Posterior.empty(Prior(3), 300)
    post.index("a")
    buf = io.BytesIO()
    with np.load(io.BytesIO(posterior_snapshot.dump(post))) as z:
        np.savez(buf, **{k: z[k] for k in z.files if not k.startswith("cost_")})
    with pytest.raises(ValueError, match="predates the cost model"):
        posterior_snapshot.load(buf.getvalue())


def test_the_order_arms_were_added_in_changes_no_bit() -> None:
    # A replica that added the arms in another order (the router's arms first, or as events
    # came) holds the same level and theta: the level's sums and theta are order-free.
    log = [replace(e, reward=e.reward / 2) for e in events(60, 4)]  # under the prior: a level
    first, later = Posterior.empty(Prior(4, 0.8), 300), Posterior.empty(Prior(4, 0.8), 300)
    for arm in ("c", "b", "a", "d"):
        first.index(arm)
    for e in log:
        first.apply(e)
        later.apply(e)
    later.index("d")
    assert first.level == later.level < 0
    for arm in ("a", "b", "c", "d"):
        np.testing.assert_array_equal(first.theta[first.index(arm)], later.theta[later.index(arm)])


@pytest.mark.parametrize(("gamma", "n"), [(0.5, 2000), (0.9, 7500)])
def test_forgetting_keeps_the_inverse_finite_and_true_after_thousands_of_updates(
    gamma: float, n: int
) -> None:
    """x's last values are never set (a metadata value the arm never sees): forgetting used to
    discount the prior there too, until A^-1 overflowed (NaN theta and scores) and A was too
    singular to refactorise. The prior lost is put back at every refactorisation, so A keeps
    at least weight x gamma^64 of it in every direction and A^-1 stays its true inverse."""
    dim, weight = 6, 30.0
    post = Posterior.empty(Prior(dim, 0.7, weight, forgetting=gamma), 300)
    rng = np.random.default_rng(3)
    for i in range(n):
        x = np.zeros(dim)
        x[0], x[1:3] = 1.0, rng.normal(size=2)
        e = replace(events(1, dim)[0], event_id=i + 1, x=x, reward=float(rng.random()))
        post.apply(replace(e, output_tokens=None, latency_ms=100.0 + 50 * x[1]))
    for name in ("a_inv", "fit", "theta", "cost_a_inv", "cost_theta", "lat_a_inv", "lat_theta"):
        assert np.isfinite(getattr(post, name)).all(), name
    for a, a_inv in ((post.a, post.a_inv), (post.cost_a, post.cost_a_inv)):
        assert np.linalg.eigvalsh(a[0]).min() >= weight * gamma**REFACTORISE_EVERY * (1 - 1e-9)
        np.testing.assert_allclose(a_inv[0], np.linalg.inv(a[0]), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(post.fit[0, 3:], 0.0, atol=1e-12)  # nothing learnt there


def test_a_snapshot_under_forgetting_from_before_the_prior_was_put_back_is_refused() -> None:
    post = Posterior.empty(Prior(3, forgetting=0.9), 300)
    post.index("a")
    assert posterior_snapshot.load(posterior_snapshot.dump(post)).prior == post.prior
    buf = io.BytesIO()
    with np.load(io.BytesIO(posterior_snapshot.dump(post))) as z:
        np.savez(buf, **{k: z[k][:5] if k == "prior" else z[k] for k in z.files})
    with pytest.raises(ValueError, match="predates forgetting"):
        posterior_snapshot.load(buf.getvalue())


def test_events_built_by_other_encoder_weights_are_passed_over() -> None:
    """Prior.weights: an event whose x other encoder weights built teaches nothing but is passed
    in order; one of unknown featurisation (logged before migration 0021) is folded; a
    snapshot keeps the weights."""
    log = events(20, 4)
    ours, fresh = (
        Posterior.empty(Prior(4, 1.0, weights="hashing@aaaa"), 300),
        Posterior.empty(Prior(4, 1.0), 300),
    )
    for i, e in enumerate(log):
        version = "hashing@bbbb:3:w0" if i < 10 else ("hashing@aaaa:3:w0" if i % 2 else None)
        ours.apply(replace(e, context_version=version))
    for e in log[10:]:
        fresh.apply(e)
    assert ours.arms == fresh.arms and ours.last_event_id == 20
    for name in ("a", "b", "theta", "reward_sum", "n_updates"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(fresh, name))
    restored = posterior_snapshot.load(posterior_snapshot.dump(ours))
    assert restored.prior == ours.prior and restored.prior.weights == "hashing@aaaa"
