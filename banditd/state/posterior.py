"""Per-router posterior: a pure function of the prior and the feedback events applied, in id order.

Any process that has applied the same events holds the same arrays, bit for bit, which is what
lets a restart (snapshot + replay of the tail) pick exactly what the first process would have.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from banditd.domain import FeedbackEvent, FloatArray
from banditd.domain.ceilings import (
    HARD_MAX_CALL_USD,
    HARD_MAX_CALL_WH,
    HARD_MAX_LATENCY_MS,
    event_problem,
)
from banditd.policy import _kernels
from banditd.policy.priors import LEVEL_WEIGHT
from banditd.state import expected_costs
from banditd.state.heads import HEAD_RIDGE, HEADS, empty_heads
from banditd.state.prior import PRIOR_INPUT_TOKENS, Prior

REFACTORISE_EVERY = 64  # full inverse after this many rank-1 updates of one arm
# The cost model (reported costs regressed on x) prices an arm once it has this many reports;
# its prediction is kept within [COST_FLOOR, COST_CEILING] x the arm's mean reported cost.
COST_MODEL_MIN_EVENTS = 20
COST_FLOOR, COST_CEILING = 0.05, 20.0


# What the estimates are kept within (banditd.state.expected_costs's ``limits``).
_LIMITS = np.array(
    [
        HARD_MAX_CALL_USD,
        HARD_MAX_LATENCY_MS,
        HARD_MAX_CALL_WH,
        COST_FLOOR,
        COST_CEILING,
        COST_MODEL_MIN_EVENTS,
    ]
)


@dataclass
class Posterior:
    """Statistics of every arm ever configured or rewarded, by name.

    a, a_inv: (n_arms, dim, dim); b, fit, theta: (n_arms, dim); counters: (n_arms,).
    fit = A^-1 b, the ridge fit; theta, what policies score with, is fit + weight x level x
    A^-1 e0 (the prior moved by the shared level), always derived afresh: the same bits anywhere.
    cost_*: the same shapes, a ridge regression of reported cost (USD) on x over the events that
    report a cost and no tokens: an arm's price where it depends on the request (a task whose
    answers run long), learned separately from quality so one posterior serves every cost weight.
    """

    prior: Prior
    prior_output_tokens: float
    arms: list[str]
    a: FloatArray
    a_inv: FloatArray
    b: FloatArray
    fit: FloatArray
    n_updates: npt.NDArray[np.int64]
    output_tokens_sum: FloatArray
    output_tokens_n: npt.NDArray[np.int64]
    observed_cost_sum: FloatArray
    observed_cost_n: npt.NDArray[np.int64]
    cost_a: FloatArray
    cost_a_inv: FloatArray
    cost_b: FloatArray
    cost_theta: FloatArray
    lat_a: FloatArray = dataclasses.field(default_factory=lambda: np.zeros((0, 0, 0)))
    lat_a_inv: FloatArray = dataclasses.field(default_factory=lambda: np.zeros((0, 0, 0)))
    lat_b: FloatArray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    lat_theta: FloatArray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    lat_sum: FloatArray = dataclasses.field(default_factory=lambda: np.zeros(0))
    lat_n: npt.NDArray[np.int64] = dataclasses.field(
        default_factory=lambda: np.zeros(0, dtype=np.int64)
    )
    energy_a: FloatArray = dataclasses.field(default_factory=lambda: np.zeros((0, 0, 0)))
    energy_a_inv: FloatArray = dataclasses.field(default_factory=lambda: np.zeros((0, 0, 0)))
    energy_b: FloatArray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    energy_theta: FloatArray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    energy_sum: FloatArray = dataclasses.field(default_factory=lambda: np.zeros(0))
    energy_n: npt.NDArray[np.int64] = dataclasses.field(
        default_factory=lambda: np.zeros(0, dtype=np.int64)
    )
    # The shared level (banditd.policy._kernels.shared_level): every arm's prior mean moves by
    # ``level`` (<= 0), learnt from each arm's rewards (sum and count, discounted as b is).
    reward_sum: FloatArray = dataclasses.field(default_factory=lambda: np.zeros(0))
    reward_n: FloatArray = dataclasses.field(default_factory=lambda: np.zeros(0))
    input_tokens_sum: float = 0.0
    input_tokens_n: int = 0
    last_event_id: int = 0
    level: float = dataclasses.field(init=False, default=0.0)
    theta: FloatArray = dataclasses.field(init=False)
    prior_mean: FloatArray = dataclasses.field(init=False)  # per arm, once, not on every event

    def __post_init__(self) -> None:
        self.theta = np.empty_like(self.fit)
        self.prior_mean = self.prior.quality_of(self.arms)
        self._relevel()

    @classmethod
    def empty(cls, prior: Prior, prior_output_tokens: float) -> Posterior:
        dim = prior.dim
        return cls(
            prior=prior,
            prior_output_tokens=prior_output_tokens,
            arms=[],
            a=np.zeros((0, dim, dim)),
            a_inv=np.zeros((0, dim, dim)),
            b=np.zeros((0, dim)),
            fit=np.zeros((0, dim)),
            n_updates=np.zeros(0, dtype=np.int64),
            output_tokens_sum=np.zeros(0),
            output_tokens_n=np.zeros(0, dtype=np.int64),
            observed_cost_sum=np.zeros(0),
            observed_cost_n=np.zeros(0, dtype=np.int64),
            cost_a=np.zeros((0, dim, dim)),
            cost_a_inv=np.zeros((0, dim, dim)),
            cost_b=np.zeros((0, dim)),
            cost_theta=np.zeros((0, dim)),
            **empty_heads(dim),
        )

    def index(self, arm: str) -> int:
        """Index of an arm, adding it with the prior if it is new."""
        try:
            return self.arms.index(arm)
        except ValueError:
            pass
        eye = np.eye(self.dim)[None]
        weight = self.prior.weight
        theta0 = np.zeros((1, self.dim))
        theta0[0, 0] = self.prior.quality_of([arm])[0]
        self.prior_mean = np.append(self.prior_mean, theta0[0, 0])
        self.arms.append(arm)
        self.a = np.concatenate([self.a, weight * eye])
        self.a_inv = np.concatenate([self.a_inv, eye / weight])
        self.b = np.concatenate([self.b, weight * theta0])
        self.fit = np.concatenate([self.fit, theta0])
        self.theta = np.concatenate([self.theta, theta0])
        self.n_updates = np.append(self.n_updates, 0)
        self.reward_sum = np.append(self.reward_sum, 0.0)
        self.reward_n = np.append(self.reward_n, 0.0)
        self.output_tokens_sum = np.append(self.output_tokens_sum, 0.0)
        self.output_tokens_n = np.append(self.output_tokens_n, 0)
        self.observed_cost_sum = np.append(self.observed_cost_sum, 0.0)
        self.observed_cost_n = np.append(self.observed_cost_n, 0)
        self.cost_a = np.concatenate([self.cost_a, weight * eye])
        self.cost_a_inv = np.concatenate([self.cost_a_inv, eye / weight])
        self.cost_b = np.concatenate([self.cost_b, np.zeros((1, self.dim))])
        self.cost_theta = np.concatenate([self.cost_theta, np.zeros((1, self.dim))])
        for head in HEADS:
            for name, new in (
                ("a", HEAD_RIDGE * eye),
                ("a_inv", eye / HEAD_RIDGE),
                ("b", np.zeros((1, self.dim))),
                ("theta", np.zeros((1, self.dim))),
            ):
                setattr(
                    self, f"{head}_{name}", np.concatenate([getattr(self, f"{head}_{name}"), new])
                )
            setattr(self, f"{head}_sum", np.append(getattr(self, f"{head}_sum"), 0.0))
            setattr(self, f"{head}_n", np.append(getattr(self, f"{head}_n"), 0))
        self._relevel()  # the new arm's theta: its prior moved by the level
        return len(self.arms) - 1

    def apply(self, event: FeedbackEvent) -> str | None:
        """Fold one event in. Events must come in increasing id order. Returns why the event
        was skipped when it holds a non-finite or absurd number (logged before banditd bounded
        them): every replica skips it alike, so the posterior stays finite and deterministic."""
        if event.event_id <= self.last_event_id:
            raise ValueError(f"event {event.event_id} after {self.last_event_id}: out of order")
        self.last_event_id = event.event_id
        prior = self.prior
        if (
            event.x.shape != (self.dim,)
            or not event.decided_since(prior.context_since)
            or not event.built_with(prior.weights)
        ):
            return None  # x built under an earlier context or other weights: not this posterior's
        problem = event_problem(event)
        if problem is not None:
            return problem
        idx = self.index(event.arm)
        if event.challenger is not None:
            return self._duel(idx, event)
        if event.reward_delta is not None:
            # A later signal for a decision already counted: move its reward, not its weight.
            self.b[idx] += event.reward_delta * event.x
            self.fit[idx] = self.a_inv[idx] @ self.b[idx]
            self.reward_sum[idx] += event.reward_delta
            self._relevel()
            return None
        self._reward(idx, event.x, event.reward)
        self._relevel()
        if event.output_tokens is not None:
            self.output_tokens_sum[idx] += event.output_tokens
            self.output_tokens_n[idx] += 1
        elif event.cost_reported:
            self.observed_cost_sum[idx] += event.cost_usd
            self.observed_cost_n[idx] += 1
            _kernels.sherman_morrison_update(
                self.cost_a,
                self.cost_a_inv,
                self.cost_b,
                self.cost_theta,
                idx,
                event.x,
                event.cost_usd,
                self.prior.forgetting,
            )
            if self.observed_cost_n[idx] % REFACTORISE_EVERY == 0:
                lost = (1.0 - self.prior.forgetting**REFACTORISE_EVERY) * self.prior.weight
                _kernels.refactorise(
                    self.cost_a, self.cost_a_inv, self.cost_b, self.cost_theta, idx, lost
                )
        if event.input_tokens is not None:
            self.input_tokens_sum += event.input_tokens
            self.input_tokens_n += 1
        if event.latency_ms is not None and event.latency_ms >= 0:
            self._learn("lat", idx, event.x, event.latency_ms)
        if event.energy_wh is not None and event.energy_wh >= 0:
            self._learn("energy", idx, event.x, event.energy_wh)
        return None

    def _reward(self, idx: int, x: FloatArray, reward: float) -> None:
        """One reward into arm idx's quality model; the caller relevels."""
        _kernels.sherman_morrison_update(
            self.a, self.a_inv, self.b, self.fit, idx, x, reward, self.prior.forgetting
        )
        self.n_updates[idx] += 1
        if self.n_updates[idx] % REFACTORISE_EVERY == 0:
            lost = (1.0 - self.prior.forgetting**REFACTORISE_EVERY) * self.prior.weight
            _kernels.refactorise(
                self.a, self.a_inv, self.b, self.fit, idx, lost, lost * self.prior_mean[idx]
            )
        gamma = self.prior.forgetting
        self.reward_sum[idx] = gamma * self.reward_sum[idx] + reward
        self.reward_n[idx] = gamma * self.reward_n[idx] + 1.0

    @property
    def prior_level(self) -> float:
        """Where the arms' priors are centred now: prior quality plus the shared level (GetStats's
        prior_level, a replay's level_at_end)."""
        return self.prior.quality + self.level

    def _relevel(self) -> None:
        """The shared level the rewards now show, and theta from it (elementwise: same bits)."""
        weight = self.prior.weight
        level = _kernels.shared_level(
            self.reward_sum, self.reward_n, self.prior_mean, weight, LEVEL_WEIGHT
        )
        np.add(self.fit, (weight * level) * self.a_inv[:, 0, :], out=self.theta)
        self.level = level

    def _duel(self, idx: int, event: FeedbackEvent) -> str | None:
        """A preference between a decision's arm and its challenger: each arm learns its own
        reward at the decision's x (winner 1, loser 0, tie 0.5). The cost, token, latency and
        energy heads learn nothing: a preference carries no per-arm measurement."""
        other = event.challenger_reward
        if other is None or not 0.0 <= other <= 1.0 or event.challenger == event.arm:
            return f"preference event with challenger reward {other!r}"
        assert event.challenger is not None
        self._reward(idx, event.x, event.reward)
        self._reward(self.index(event.challenger), event.x, other)
        self._relevel()  # once, for both arms
        return None

    def _learn(self, head: str, idx: int, x: FloatArray, value: float) -> None:
        """One report into a latency or energy head: as the cost model learns a cost."""
        a, a_inv = getattr(self, f"{head}_a"), getattr(self, f"{head}_a_inv")
        b, theta = getattr(self, f"{head}_b"), getattr(self, f"{head}_theta")
        getattr(self, f"{head}_sum")[idx] += value
        n = getattr(self, f"{head}_n")
        n[idx] += 1
        _kernels.sherman_morrison_update(a, a_inv, b, theta, idx, x, value, self.prior.forgetting)
        if n[idx] % REFACTORISE_EVERY == 0:
            lost = (1.0 - self.prior.forgetting**REFACTORISE_EVERY) * HEAD_RIDGE
            _kernels.refactorise(a, a_inv, b, theta, idx, lost)

    def reported_means(self, arm: str) -> tuple[float, int, float, int]:
        """(mean reported latency_ms, reports, mean reported energy_wh, reports) of an arm;
        0 means for an arm without reports (or unknown to this posterior)."""
        if arm not in self.arms:
            return (0.0, 0, 0.0, 0)
        idx = self.arms.index(arm)
        out: list[float | int] = []
        for head in HEADS:
            n = int(getattr(self, f"{head}_n")[idx])
            out += [float(getattr(self, f"{head}_sum")[idx]) / n if n else 0.0, n]
        return (float(out[0]), int(out[1]), float(out[2]), int(out[3]))

    @property
    def dim(self) -> int:
        return self.prior.dim

    def expected_costs(
        self,
        idx: npt.NDArray[np.int64],
        numbers: FloatArray,
        input_tokens: float,
        x: FloatArray | None = None,
    ) -> FloatArray:
        """Expected cost (USD), latency (ms) and energy (Wh) of the arms at rows ``idx`` (int64),
        shape (3, len(idx)); ``numbers``: their rows of RouterSpec.arm_numbers (prices, energy
        per token, prior latency). A kernel works them out (banditd.state.expected_costs):

        - Output tokens: the mean reported, shrunk toward the router's prior by one pseudo-count.
        - Cost: price x tokens once the arm reports output tokens (or before it reports
          anything). When it reports costs without tokens: the cost model's prediction for x
          (once it has COST_MODEL_MIN_EVENTS reports), else its mean reported cost per call.
        - Latency and energy (the heads): the arm's prior_latency_ms, or its per-token energy x
          expected tokens, before reports; then the mean report shrunk toward a positive prior
          by one pseudo-count; from COST_MODEL_MIN_EVENTS reports, the regression for x.
        - A regression's prediction is kept within [COST_FLOOR, COST_CEILING] x that mean (the
          mean for one that is not a number); the rest within [0, HARD_MAX_CALL_USD],
          [0, HARD_MAX_LATENCY_MS] and [0, HARD_MAX_CALL_WH], a number that is not one taken as
          the most expensive. Finite by construction.
        """
        dots = np.zeros((len(idx), 3))
        model = x is not None and x.shape == (self.dim,)
        if x is not None and model:
            thetas = (self.cost_theta, self.lat_theta, self.energy_theta)
            pairs = expected_costs.fitted(
                idx, self.observed_cost_n, self.lat_n, self.energy_n, COST_MODEL_MIN_EVENTS
            )
            for j, head in pairs.tolist():  # np.dot, as ever: BLAS's order of the sum
                dots[j, head] = np.dot(thetas[head][idx[j]], x)
        out = np.empty((3, len(idx)))
        expected_costs.expected_costs(
            idx,
            numbers,
            float(input_tokens),
            float(self.prior_output_tokens),
            self.output_tokens_sum,
            self.output_tokens_n,
            self.observed_cost_sum,
            self.observed_cost_n,
            self.lat_sum,
            self.lat_n,
            self.energy_sum,
            self.energy_n,
            dots,
            model,
            _LIMITS,
            out,
        )
        return out

    def expected_input_tokens(self) -> float:
        """Mean reported input tokens (for requests that carry an embedding, not a prompt)."""
        return (PRIOR_INPUT_TOKENS + self.input_tokens_sum) / (1 + self.input_tokens_n)
