"""Off-policy estimators: the value of a candidate policy from decisions another policy logged.

Pure NumPy, no I/O. The logged record (as in Open Bandit Pipeline) is, per decision i:
the arm chosen a_i with its logging propensity p_i, the observed reward r_i and cost c_i, the
candidate's probability of every arm pi(a | x_i) and, for the model-based estimators, a model's
predicted reward and cost of every arm. With w_i = pi(a_i | x_i) / p_i:

  IPS    mean_i w_i r_i                                  unbiased when p_i > 0 wherever pi > 0
  SNIPS  sum_i w_i r_i / sum_i w_i                       self-normalised: less variance, small bias
  DM     mean_i sum_a pi(a | x_i) r_hat(x_i, a)          the model's answer (biased if it is wrong)
  DR     DM_i + w_i (r_i - r_hat(x_i, a_i)), averaged    unbiased if p_i or r_hat is right

Each is computed for reward, cost and utility = reward - cost_weight * cost - latency_weight *
latency (s) - energy_weight * energy (Wh), with one weight for every decision or each decision's
own (a request may bring its own weights, a budget raises the cost's): every estimator is linear
in its per-decision terms, so the utility's terms are the reward's minus the decision's weights
times the cost's, latency's and energy's. Intervals come from a
Poisson bootstrap over decisions (``banditd.flows.bootstrap``).

Open Bandit Pipeline (obp) defines the same estimators, but installs only as obp 0.4.1 on
Python 3.11 with current NumPy, and pulls in torch and scikit-learn: written small here instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from banditd.domain import FloatArray
from banditd.errors import FailedPrecondition, InvalidArgument
from banditd.flows.bootstrap import poisson_sums
from banditd.flows.stop import NEVER, Stop

IntArray = npt.NDArray[np.int64]
ESTIMATORS = ("ips", "snips", "dm", "dr")
METRICS = ("reward", "cost_usd", "utility")
DEFAULT_BOOTSTRAP = 1000
DEFAULT_LEVEL = 0.95
SMALL_PROPENSITY = 0.01  # below this a logged propensity makes IPS weights explode
LOW_ESS_FRACTION = 0.1  # warn when the effective sample size is under this share of n


@dataclass(frozen=True)
class LoggedFeedback:
    """n logged decisions over k arms (columns), with a candidate policy's probabilities.

    chosen: (n,) int64, the column of the arm the logging policy chose
    propensity: (n,) float64, the logging policy's probability of that choice, in (0, 1]
    reward, cost: (n,) float64, what the chosen arm earned and cost
    target: (n, k) float64, the candidate's probability of each arm (each row sums to 1; 0 for
        arms not eligible at that decision)
    reward_hat, cost_hat: (n, k) float64, a model's prediction per arm (for DM and DR)
    arms: the k arm names, for warnings
    latency_s, energy_wh: (n,) float64, the chosen arm's latency (seconds) and energy, and
    latency_s_hat, energy_wh_hat: (n, k) their predictions (None: 0, not part of the utility)
    """

    chosen: IntArray
    propensity: FloatArray
    reward: FloatArray
    cost: FloatArray
    target: FloatArray
    reward_hat: FloatArray
    cost_hat: FloatArray
    arms: tuple[str, ...]
    latency_s: FloatArray | None = None
    energy_wh: FloatArray | None = None
    latency_s_hat: FloatArray | None = None
    energy_wh_hat: FloatArray | None = None

    def __post_init__(self) -> None:
        n = self.chosen.shape[0]
        if n == 0:
            raise FailedPrecondition("no logged decisions with feedback to evaluate on")
        k = len(self.arms)
        for name, arr, shape in (
            ("propensity", self.propensity, (n,)),
            ("reward", self.reward, (n,)),
            ("cost", self.cost, (n,)),
            ("target", self.target, (n, k)),
            ("reward_hat", self.reward_hat, (n, k)),
            ("cost_hat", self.cost_hat, (n, k)),
            ("latency_s", self.latency_s, (n,)),
            ("energy_wh", self.energy_wh, (n,)),
            ("latency_s_hat", self.latency_s_hat, (n, k)),
            ("energy_wh_hat", self.energy_wh_hat, (n, k)),
        ):
            if arr is None:
                continue
            if arr.shape != shape:
                raise InvalidArgument(name, f"shape {arr.shape}, expected {shape}")
            if not np.all(np.isfinite(arr)):
                raise InvalidArgument(name, f"row {_first(~np.isfinite(arr))} is not finite")
        if np.any((self.chosen < 0) | (self.chosen >= k)):
            bad = _first((self.chosen < 0) | (self.chosen >= k))
            raise InvalidArgument("chosen", f"decision {bad} chose column outside 0..{k - 1}")
        bad_p = (self.propensity <= 0.0) | (self.propensity > 1.0)
        if np.any(bad_p):
            i = _first(bad_p)
            raise InvalidArgument(
                "propensity",
                f"decision {i} has propensity {self.propensity[i]:g}; logged propensities "
                "must be in (0, 1] (0 means the logging policy could not have chosen that arm)",
            )
        if np.any(self.target < 0.0):
            bad = _first(self.target < 0.0)
            raise InvalidArgument("target", f"row {bad} has a probability < 0")
        off = np.abs(self.target.sum(axis=1) - 1.0) > 1e-6
        if np.any(off):
            raise InvalidArgument("target", f"row {_first(off)} does not sum to 1")

    @property
    def n(self) -> int:
        return int(self.chosen.shape[0])

    @property
    def weights(self) -> FloatArray:
        """Importance weights pi(a_i | x_i) / p_i, shape (n,)."""
        picked = self.target[np.arange(self.n), self.chosen]
        return np.asarray(picked / self.propensity, dtype=np.float64)


def _first(mask: npt.NDArray[np.bool_]) -> int:
    return int(np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0])


@dataclass(frozen=True)
class Interval:
    value: float | None
    low: float | None
    high: float | None

    def as_dict(self) -> dict[str, float | None]:
        return {"value": self.value, "low": self.low, "high": self.high}

    def covers(self, truth: float) -> bool:
        return self.low is not None and self.high is not None and self.low <= truth <= self.high


@dataclass(frozen=True)
class Estimate:
    """One estimator's value of reward, cost and utility, with bootstrap intervals."""

    estimator: str
    reward: Interval
    cost_usd: Interval
    utility: Interval

    def as_dict(self) -> dict[str, object]:
        return {
            "estimator": self.estimator,
            **{m: getattr(self, m).as_dict() for m in METRICS},
        }


@dataclass(frozen=True)
class Evaluation:
    """Every estimator's answer for one candidate, the effective sample size and the warnings.

    cost_weight: the utility's weight, its mean over the decisions when each had its own.
    """

    n: int
    cost_weight: float
    estimates: tuple[Estimate, ...]
    effective_sample_size: float
    agreement: float  # mean pi(a_i | x_i): how often the candidate picks what the log picked
    min_propensity: float
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def get(self, estimator: str) -> Estimate:
        return next(e for e in self.estimates if e.estimator == estimator)

    def as_dict(self) -> dict[str, object]:
        return {
            "n": self.n,
            "cost_weight": self.cost_weight,
            "effective_sample_size": self.effective_sample_size,
            "agreement": self.agreement,
            "min_propensity": self.min_propensity,
            "estimates": [e.as_dict() for e in self.estimates],
            "warnings": list(self.warnings),
        }


def row_terms(log: LoggedFeedback, weight: FloatArray) -> dict[str, tuple[FloatArray, FloatArray]]:
    """Per decision, the (numerator, denominator) terms whose sums give each estimator of the
    reward, the cost and the utility: numerators (n, 3) (columns reward, cost, utility),
    denominators (n, 1). weight: (n, 3) float64, each decision's utility weights of cost,
    latency and energy."""
    n, k = log.n, len(log.arms)
    rows = np.arange(n)
    w = log.weights
    zeros, zeros_hat = np.zeros(n), np.zeros((n, k))

    def given(arr: FloatArray | None, zero: FloatArray) -> FloatArray:
        return zero if arr is None else arr

    observed = np.stack(
        [log.reward, log.cost, given(log.latency_s, zeros), given(log.energy_wh, zeros)], axis=1
    )
    hat = np.stack(
        [
            log.reward_hat,
            log.cost_hat,
            given(log.latency_s_hat, zeros_hat),
            given(log.energy_wh_hat, zeros_hat),
        ],
        axis=2,
    )  # (n, k, 4)
    dm = np.einsum("nk,nkm->nm", log.target, hat)
    dr = dm + w[:, None] * (observed - hat[rows, log.chosen])
    ones = np.ones((n, 1))
    terms = {
        "ips": (w[:, None] * observed, ones),
        "snips": (w[:, None] * observed, w[:, None]),
        "dm": (dm, ones),
        "dr": (dr, ones),
    }
    return {
        name: (np.column_stack([num[:, :2], num[:, 0] - (weight * num[:, 1:]).sum(axis=1)]), den)
        for name, (num, den) in terms.items()
    }


def _ratio(num: FloatArray, den: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(num / den, dtype=np.float64)


def evaluate(
    log: LoggedFeedback,
    *,
    cost_weight: float | FloatArray = 0.0,
    latency_weight: float | FloatArray = 0.0,
    energy_weight: float | FloatArray = 0.0,
    replicates: int = DEFAULT_BOOTSTRAP,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    stop: Stop = NEVER,
) -> Evaluation:
    """IPS, SNIPS, DM and DR of reward, cost and utility, with percentile bootstrap intervals
    at ``level`` over ``replicates`` Poisson-bootstrap replicates (0: no intervals).
    cost_weight, latency_weight (per second), energy_weight (per Wh): the utility's weights, one
    for every decision or shape (n,), each decision's. ``stop``: checked as the bootstrap goes."""
    if not 0.0 < level < 1.0:
        raise InvalidArgument("level", "must be in (0, 1)")
    if replicates < 0:
        raise InvalidArgument("bootstrap", "must be >= 0")
    columns = []
    for name, given in (
        ("cost_weight", cost_weight),
        ("latency_weight", latency_weight),
        ("energy_weight", energy_weight),
    ):
        column = np.asarray(given, dtype=np.float64)
        if column.shape not in ((), (log.n,)):
            raise InvalidArgument(name, f"shape {column.shape}, expected () or ({log.n},)")
        columns.append(np.broadcast_to(column, (log.n,)))
    weight = np.stack(columns, axis=1)  # (n, 3)
    terms = row_terms(log, weight)
    boot = poisson_sums(terms, replicates, seed, stop) if replicates else {}
    tail = (1.0 - level) / 2.0
    estimates = []
    for name in ESTIMATORS:
        num, den = terms[name]
        values = _ratio(num.sum(axis=0), den.sum(axis=0)).tolist()  # reward, cost, utility
        lows: list[float | None] = [None] * 3
        highs: list[float | None] = [None] * 3
        if replicates:
            b = _ratio(*boot[name])  # (replicates, 3)
            ok = np.all(np.isfinite(b), axis=1)
            if ok.sum() >= 2:
                lo, hi = np.quantile(b[ok], [tail, 1.0 - tail], axis=0)
                lows, highs = lo.tolist(), hi.tolist()
        cells = [
            Interval(v if np.isfinite(v) else None, lo, hi)
            for v, lo, hi in zip(values, lows, highs, strict=True)
        ]
        estimates.append(Estimate(name, *cells))
    w = log.weights
    ess = float(w.sum() ** 2 / (w**2).sum()) if np.any(w > 0) else 0.0
    agreement = float(log.target[np.arange(log.n), log.chosen].mean())
    return Evaluation(
        n=log.n,
        cost_weight=float(weight[:, 0].mean()),
        estimates=tuple(estimates),
        effective_sample_size=ess,
        agreement=agreement,
        min_propensity=float(log.propensity.min()),
        warnings=tuple(warnings(log, ess)),
    )


def warnings(log: LoggedFeedback, ess: float) -> list[str]:
    """Plain-language reasons not to trust the importance-weighted estimates."""
    out = []
    small = log.propensity < SMALL_PROPENSITY
    if np.any(small):
        out.append(
            f"small propensities: {int(small.sum())} of {log.n} logged decisions had "
            f"propensity < {SMALL_PROPENSITY:g} (min {log.propensity.min():.3g}); "
            "IPS and DR weights reach "
            f"{float(log.weights.max()):.3g}, so their variance is high"
        )
    if ess < LOW_ESS_FRACTION * log.n:
        out.append(
            f"low effective sample size: {ess:.1f} of {log.n} decisions "
            f"({ess / log.n:.1%}); the candidate rarely picks what the log picked, "
            "so IPS/SNIPS/DR rest on few decisions and DM on the reward model"
        )
    logged = np.bincount(log.chosen, minlength=len(log.arms))
    mass = log.target.mean(axis=0)
    unexplored = [
        (arm, float(m)) for arm, m, c in zip(log.arms, mass, logged, strict=True) if c == 0 and m
    ]
    if unexplored:
        share = sum(m for _, m in unexplored)
        names = ", ".join(f"{a} ({m:.1%})" for a, m in unexplored)
        out.append(
            f"unexplored arms: the candidate sends {share:.1%} of decisions to arms the log "
            f"never chose ({names}); no estimator has data on them (DM extrapolates, "
            "IPS/SNIPS/DR count them as zero)"
        )
    deterministic = float(np.mean(log.propensity >= 1.0))
    if deterministic > 0.5:
        out.append(
            f"deterministic log: {deterministic:.0%} of decisions were logged with propensity 1 "
            "(no exploration), so only the arm chosen is ever observed; estimates are only "
            "trustworthy where the candidate agrees with the logging policy"
        )
    return out


def ridge_predictions(
    xs: FloatArray,
    chosen: IntArray,
    targets: FloatArray,
    n_arms: int,
    *,
    folds: int = 2,
    ridge: float = 1.0,
    seed: int = 0,
) -> FloatArray:
    """Cross-fitted per-arm ridge regression of each target column on x: the prediction for
    decision i comes from a model fitted on the other folds. Arms without training data predict
    that fold's overall mean.

    xs: (n, dim) contexts; chosen: (n,) arm column; targets: (n, m) -> predictions (n, n_arms, m).
    """
    n, dim = xs.shape
    m = targets.shape[1]
    out = np.empty((n, n_arms, m))
    fold = np.random.default_rng(seed).permutation(n) % max(1, folds)
    for f in range(max(1, folds)):
        test = fold == f
        train = ~test if folds > 1 else np.ones(n, dtype=bool)
        if not train.any():
            train = np.ones(n, dtype=bool)
        fallback = targets[train].mean(axis=0)
        for arm in range(n_arms):
            rows = train & (chosen == arm)
            if not rows.any():
                out[test, arm] = fallback
                continue
            x, y = xs[rows], targets[rows]
            theta = np.linalg.solve(x.T @ x + ridge * np.eye(dim), x.T @ y)  # (dim, m)
            out[test, arm] = xs[test] @ theta
    return out


def as_columns(names: Sequence[str], arms: Sequence[str]) -> IntArray:
    """Column of each name in ``arms``, shape (len(names),)."""
    index = {a: j for j, a in enumerate(arms)}
    return np.array([index[a] for a in names], dtype=np.int64)
