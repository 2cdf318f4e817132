"""The off-policy estimators on synthetic logs whose true answer is known."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

from banditd.errors import BanditdError, FailedPrecondition, InvalidArgument
from banditd.flows.ope import LoggedFeedback, evaluate, ridge_predictions

ARMS = ("a", "b", "c")


def synthetic(
    n: int, seed: int, *, logging: np.ndarray | None = None, noise: bool = True
) -> tuple[LoggedFeedback, float]:
    """A log of n decisions over 3 arms: per-decision mean rewards mu (n, 3), a logging policy
    (random per decision unless given), a fixed target policy; rewards Bernoulli(mu) (or exactly
    mu without noise). Returns the log (reward_hat = mu, the exact model) and the true value."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.1, 0.9, size=(n, 3))
    if logging is None:
        logging = rng.dirichlet([2.0, 2.0, 2.0], size=n)
    target = np.tile([0.6, 0.3, 0.1], (n, 1))
    chosen = np.array([rng.choice(3, p=p) for p in logging], dtype=np.int64)
    rows = np.arange(n)
    reward = (rng.random(n) < mu[rows, chosen]).astype(float) if noise else mu[rows, chosen]
    cost = np.array([0.001, 0.002, 0.003])[chosen]
    log = LoggedFeedback(
        chosen=chosen,
        propensity=logging[rows, chosen],
        reward=reward,
        cost=cost,
        target=target,
        reward_hat=mu,
        cost_hat=np.tile([0.001, 0.002, 0.003], (n, 1)),
        arms=ARMS,
    )
    return log, float((target * mu).sum(axis=1).mean())


def test_ips_is_unbiased_in_expectation() -> None:
    # Over many independent logs of one fixed problem, IPS averages to the true value.
    n, logs = 100, 300
    rng = np.random.default_rng(7)
    logging = rng.dirichlet([2.0, 2.0, 2.0], size=n)
    values, truths = [], []
    for seed in range(logs):
        log, truth = synthetic(n, 1000, logging=logging)  # one problem (mu), fresh draws below
        draw = np.random.default_rng(seed)
        chosen = np.array([draw.choice(3, p=p) for p in logging], dtype=np.int64)
        mu = log.reward_hat
        rows = np.arange(n)
        log = LoggedFeedback(
            chosen=chosen,
            propensity=logging[rows, chosen],
            reward=(draw.random(n) < mu[rows, chosen]).astype(float),
            cost=log.cost,
            target=log.target,
            reward_hat=mu,
            cost_hat=log.cost_hat,
            arms=ARMS,
        )
        values.append(evaluate(log, replicates=0).get("ips").reward.value)
        truths.append(truth)
    values_arr = np.array(values)
    stderr = values_arr.std(ddof=1) / np.sqrt(logs)
    assert abs(values_arr.mean() - truths[0]) < 4 * stderr
    assert stderr < 0.01  # the check has power: a bias of a few points would fail it


def test_dr_is_exact_when_the_reward_model_is_exact() -> None:
    log, truth = synthetic(500, 3, noise=False)
    result = evaluate(log, replicates=0)
    assert result.get("dr").reward.value == pytest.approx(truth, abs=1e-12)
    assert result.get("dm").reward.value == pytest.approx(truth, abs=1e-12)
    # IPS on the same log is only right in expectation
    assert result.get("ips").reward.value != pytest.approx(truth, abs=1e-6)


def test_on_policy_log_gives_the_logged_mean_and_full_sample_size() -> None:
    n = 400
    log, _ = synthetic(n, 5, logging=np.tile([0.6, 0.3, 0.1], (n, 1)))
    result = evaluate(log, cost_weight=10.0, replicates=200)
    for name in ("ips", "snips"):
        estimate = result.get(name)
        assert estimate.reward.value == pytest.approx(log.reward.mean())
        assert estimate.cost_usd.value == pytest.approx(log.cost.mean())
        assert estimate.utility.value == pytest.approx(log.reward.mean() - 10.0 * log.cost.mean())
    assert result.effective_sample_size == pytest.approx(n)
    assert not result.warnings
    dr = result.get("dr").reward
    assert dr.low is not None and dr.high is not None and dr.value is not None
    assert dr.low < dr.value < dr.high


def test_utility_weighs_each_decision_at_its_own_cost_weight() -> None:
    # Utility = mean over decisions of the estimator's reward term - that decision's weight x
    # its cost term: not the mean weight x the mean cost.
    n = 200
    log, _ = synthetic(n, 6)
    weight = np.where(np.arange(n) % 4 == 0, 500.0, 10.0)
    result = evaluate(log, cost_weight=weight, replicates=100)
    w = log.weights
    ips = result.get("ips")
    assert ips.utility.value == pytest.approx(np.mean(w * (log.reward - weight * log.cost)))
    assert ips.utility.value != pytest.approx(
        ips.reward.value - weight.mean() * ips.cost_usd.value, rel=1e-3
    )
    snips = result.get("snips").utility.value
    assert snips == pytest.approx(np.sum(w * (log.reward - weight * log.cost)) / w.sum())
    assert result.cost_weight == pytest.approx(weight.mean())
    one = evaluate(log, cost_weight=10.0, replicates=0).get("dr").utility.value
    assert one == pytest.approx(
        evaluate(log, cost_weight=np.full(n, 10.0), replicates=0).get("dr").utility.value
    )
    with pytest.raises(InvalidArgument, match=r"cost_weight: shape \(3,\), expected"):
        evaluate(log, cost_weight=np.ones(3))


def test_bootstrap_intervals_cover_the_truth_mostly() -> None:
    covered = 0
    for seed in range(40):
        log, truth = synthetic(300, 100 + seed)
        covered += evaluate(log, replicates=300, seed=seed).get("dr").reward.covers(truth)
    assert covered >= 32  # nominal 95 %: 38 of 40 expected


def test_warnings_fire_for_tiny_propensities_unexplored_arms_and_low_ess() -> None:
    n = 300
    logging = np.tile([0.995, 0.005, 0.0], (n, 1))
    logging[:, 2] = 0.0
    log, _ = synthetic(n, 9, logging=logging / logging.sum(axis=1, keepdims=True))
    result = evaluate(log, replicates=0)
    kinds = {w.split(":")[0] for w in result.warnings}
    assert (log.chosen == 1).sum() == 3  # this seed logs arm b, at propensity 0.005, 3 times
    assert kinds == {"small propensities", "unexplored arms", "low effective sample size"}
    assert any("c (10.0%)" in w for w in result.warnings)  # names the arm and the share


def test_deterministic_log_warns() -> None:
    n = 50
    logging = np.tile([1.0, 0.0, 0.0], (n, 1))
    log, _ = synthetic(n, 2, logging=logging)
    kinds = {w.split(":")[0] for w in evaluate(log, replicates=0).warnings}
    assert "deterministic log" in kinds and "unexplored arms" in kinds


def _bad(**changes: Any) -> LoggedFeedback:
    log, _ = synthetic(20, 1)
    fields = {k: getattr(log, k) for k in log.__dataclass_fields__}
    for key, value in changes.items():
        fields[key] = value(fields[key]) if callable(value) else value
    return LoggedFeedback(**fields)


def _set(index: int, value: float) -> Any:
    def change(arr: np.ndarray) -> np.ndarray:
        out = arr.copy()
        out[index] = value
        return out

    return change


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"propensity": _set(3, 0.0)}, InvalidArgument, "decision 3 has propensity 0"),
        ({"propensity": _set(0, 1.5)}, InvalidArgument, "must be in (0, 1]"),
        ({"reward": _set(2, float("nan"))}, InvalidArgument, "reward: row 2 is not finite"),
        ({"chosen": _set(4, 3)}, InvalidArgument, "decision 4 chose column outside 0..2"),
        ({"target": _set(1, 0.5)}, InvalidArgument, "target: row 1 does not sum to 1"),
        ({"reward_hat": lambda a: a[:, :2]}, InvalidArgument, "reward_hat: shape (20, 2)"),
        (
            {
                "chosen": np.zeros(0, dtype=np.int64),
                "propensity": np.zeros(0),
                "reward": np.zeros(0),
                "cost": np.zeros(0),
                "target": np.zeros((0, 3)),
                "reward_hat": np.zeros((0, 3)),
                "cost_hat": np.zeros((0, 3)),
            },
            FailedPrecondition,
            "no logged decisions with feedback",
        ),
    ],
)
def test_bad_logs_are_refused(
    changes: dict[str, Any], error: type[BanditdError], message: str
) -> None:
    with pytest.raises(error) as err:
        _bad(**changes)
    assert message in err.value.message


def test_ridge_predictions_are_cross_fitted() -> None:
    rng = np.random.default_rng(0)
    xs = np.column_stack([np.ones(400), rng.normal(size=400)])
    chosen = rng.integers(2, size=400)
    y = np.where(chosen == 0, 0.2 + 0.1 * xs[:, 1], 0.7)[:, None]
    hat = ridge_predictions(xs, chosen, y, 3, ridge=1e-6)
    assert np.allclose(hat[:, 0, 0], 0.2 + 0.1 * xs[:, 1], atol=1e-4)
    assert np.allclose(hat[:, 1, 0], 0.7, atol=1e-4)
    assert np.allclose(hat[:, 2, 0], hat[:, 2, 0][0], atol=0.05)  # no data: the overall mean


def test_the_bootstrap_holds_a_bounded_block_of_counts_whatever_the_replicates() -> None:
    """Evaluate allows up to 100,000 replicates: the Poisson counts are drawn in blocks of a
    bounded number of cells, not of replicates x 4096 rows (3.3 GB of float64 at that limit, and
    as much again for the int64 draw, in a serving replica)."""
    log, _ = synthetic(2000, 5)
    replicates = 20_000  # 2000 rows at once: 320 MB of counts, twice
    tracemalloc.start()
    try:
        result = evaluate(log, replicates=replicates)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200e6  # a block's counts and their draw: 32 MB each
    ips = result.get("ips").reward
    assert ips.low is not None and ips.high is not None and ips.low < ips.value < ips.high
