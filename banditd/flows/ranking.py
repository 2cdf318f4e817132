"""Ranking: eligibility, expected costs and the policy's choice, in arm names (no I/O).

The server's Select, offline replay and the OPE proof all decide through ``rank_arms``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from banditd.budget import pacer
from banditd.budget.pacer import BudgetCheck
from banditd.context import input_tokens_estimate
from banditd.domain import FloatArray, RankedArm, RouterSpec, check_name, record
from banditd.domain.ceilings import (
    HARD_MAX_COST_WEIGHT,
    HARD_MAX_ENERGY_WEIGHT,
    HARD_MAX_LATENCY_WEIGHT,
)
from banditd.errors import FailedPrecondition, NotFound, ResourceExhausted
from banditd.policy import Choice, _kernels, dueling
from banditd.policy.base import IntArray
from banditd.state.fold import RouterState


@record
class Ranked:
    """The policy's answer in arm names: ranking best first, and the choice it came from."""

    ranking: tuple[RankedArm, ...]
    choice: Choice
    candidates: tuple[str, ...]
    budget_price: float = 0.0  # the pacer's price of a dollar, 0 without a budget
    budget_outcome: str = ""  # "", "paced", "fallback" or "over_budget" (see BudgetCheck)
    # The latency and energy weights used (the request's, else the router's defaults).
    latency_weight: float = 0.0
    energy_weight: float = 0.0
    challenger: str | None = None  # with compare: the dueling pick (banditd.policy.dueling)
    forced: str | None = None  # the arm explore_new_arm put first (counted in forced_picks)

    def other_term(self, arms: Sequence[str]) -> FloatArray | None:
        """Utility lost to latency and energy per arm of ``arms`` (in the ranking), or None."""
        if not (self.latency_weight or self.energy_weight):
            return None
        by_arm = {r.arm: r for r in self.ranking}
        return np.array(
            [
                self.latency_weight * by_arm[a].expected_latency_ms / 1000.0
                + self.energy_weight * by_arm[a].expected_energy_wh
                for a in arms
            ]
        )


def effective_cost_weight(default: float, requested: float | None, budget_price: float) -> float:
    """The cost weight a decision ranks by: the request's own (None: ``default``, the router's),
    never less than the budget pacer's price (0 without a budget) and capped, as a pacer's price
    can be inf. Select, shadows and off-policy evaluation all weigh cost through this."""
    weight = default if requested is None else requested
    return min(max(weight, budget_price), HARD_MAX_COST_WEIGHT)


def _enabled(spec: RouterSpec, candidates: Sequence[str]) -> list[int]:
    """Positions in spec.arms of the enabled arms, of ``candidates`` when given."""
    wanted = set(candidates)
    return [
        p for p, a in enumerate(spec.arms) if not a.disabled and (not wanted or a.name in wanted)
    ]


def _expected(
    state: RouterState, positions: list[int], input_tokens: float, x: FloatArray | None
) -> tuple[IntArray, FloatArray]:
    """The posterior's rows of the arms at ``positions`` and their expected cost, latency and
    energy, shape (3, len(positions)) (Posterior.expected_costs)."""
    spec, rows = state.spec, state.arm_rows()
    if len(positions) == len(spec.arms):  # positions are sorted: then they are 0..n-1
        arm_idx, numbers = rows, spec.arm_numbers
    else:
        arm_idx, numbers = rows[positions], spec.arm_numbers[positions]
    return arm_idx, state.posterior.expected_costs(arm_idx, numbers, input_tokens, x)


def request_tokens(state: RouterState, prompt: str | None, given: int | None = None) -> float:
    """The input tokens a request's expected costs count: the caller's (``given``, Select's
    input_tokens), else its prompt's rough count, else the router's mean reported one."""
    if given is not None:
        return float(given)
    return input_tokens_estimate(prompt) or state.posterior.expected_input_tokens()


def priciest(state: RouterState, tokens: float, candidates: Sequence[str], x: FloatArray) -> float:
    """The highest expected cost among the arms a request of ``tokens`` input tokens
    (request_tokens) may get (what a lease must hold), for this request's x as ranking prices it:
    the cost model's prediction may be far above the mean."""
    costs = _expected(state, _enabled(state.spec, candidates), tokens, x)[1][0]
    return float(costs.max()) if costs.size else 0.0


def rank_arms(
    state: RouterState,
    x: FloatArray,
    *,
    prompt: str | None,
    input_tokens: int | None = None,
    candidates: Sequence[str] = (),
    cost_weight: float | None = None,
    max_cost_usd: float | None = None,
    rng: np.random.Generator,
    blocked: Collection[str] = frozenset(),
    budget: BudgetCheck | None = None,
    latency_weight: float | None = None,
    energy_weight: float | None = None,
    max_latency_ms: float | None = None,
    compare: bool = False,
) -> Ranked:
    """Eligibility, expected costs, the policy's choice and the ranking; no I/O.

    The server's Select and offline replay both decide through this function. With a budget,
    the pacer masks arms (unaffordable, or below its threshold on posterior mean quality per
    dollar) and its price is the least cost weight used.
    x: context vector, shape (state.spec.dim,).
    input_tokens: the caller's count of the request's input tokens, which expected costs count
    (None: estimated from ``prompt``, see request_tokens).
    blocked: arms whose circuit breaker is open; skipped unless every eligible arm is (eligible:
    enabled, among ``candidates``, within max_cost_usd and max_latency_ms).
    Latency and energy (issue 21): utility = quality - cost weight x USD - latency_weight x
    expected seconds - energy_weight x expected Wh (None: the router's defaults); an arm whose
    expected latency is over max_latency_ms is not eligible. The budget acts on USD alone.
    compare (pairwise feedback): also pick a challenger among the same eligible arms, by a
    second posterior draw from ``rng`` (None when only one arm is eligible).
    """
    spec, posterior = state.spec, state.posterior
    unknown = [c for c in candidates if spec.arm(c) is None]
    if unknown:
        # A name no arm can have is a bad value, not echoed: a long one in NOT_FOUND's message
        # passed gRPC's metadata limit, and the caller got RESOURCE_EXHAUSTED "Stream removed".
        check_name("candidates", unknown[0])
        raise NotFound(f"router {spec.name!r} has no arm {unknown[0]!r}")
    positions = _enabled(spec, candidates)
    names = [spec.arms[p].name for p in positions]
    tokens = request_tokens(state, prompt, input_tokens)
    arm_idx, (costs, latency, energy) = _expected(state, positions, tokens, x)
    if max_cost_usd is not None:
        keep = costs <= max_cost_usd
        names = [a for a, k in zip(names, keep, strict=True) if k]
        arm_idx, costs, latency, energy = arm_idx[keep], costs[keep], latency[keep], energy[keep]
    if not names:
        raise FailedPrecondition(
            "no eligible arm: every candidate is disabled or over max_cost_usd"
        )
    if max_latency_ms is not None:
        keep = latency <= max_latency_ms
        if not keep.any():
            raise FailedPrecondition(
                f"no eligible arm: every candidate's expected latency (from "
                f"{latency.min():.6g} ms) is over max_latency_ms ({max_latency_ms:g} ms)"
            )
        names = [a for a, k in zip(names, keep, strict=True) if k]
        arm_idx, costs, latency, energy = arm_idx[keep], costs[keep], latency[keep], energy[keep]
    if blocked:  # after the request's limits: the arms they leave are the ones to fail open to
        keep = np.array([a not in blocked for a in names])
        if keep.any():  # every eligible arm failing: still answer (fail open), all of them
            names = [a for a, k in zip(names, keep, strict=True) if k]
            arm_idx, costs = arm_idx[keep], costs[keep]
            latency, energy = latency[keep], energy[keep]
    price, outcome = 0.0, ""
    if budget is not None and budget.pacings:
        mean_quality = _kernels.mean_scores(posterior.theta, arm_idx, x)
        gate = pacer.gate(mean_quality, costs, budget.pacings)
        if gate.exhausted:
            if scope := budget.refusal(float(costs.min())):
                raise ResourceExhausted(
                    f"budget of {scope} is exhausted for this period: no arm's expected "
                    f"cost (from ${costs.min():.6g}) fits what is left"
                )
            keep = np.zeros(len(names), dtype=np.bool_)
            keep[int(np.argmin(costs))] = True
            outcome = "over_budget"
        else:
            keep, price = gate.eligible, gate.price
            outcome = "fallback" if gate.fallback else "paced"
        names = [a for a, k in zip(names, keep, strict=True) if k]
        arm_idx, costs, latency, energy = arm_idx[keep], costs[keep], latency[keep], energy[keep]
    weight = effective_cost_weight(spec.default_cost_weight, cost_weight, price)
    lw = spec.default_latency_weight if latency_weight is None else latency_weight
    ew = spec.default_energy_weight if energy_weight is None else energy_weight
    # Each term is at most 1e9 x 1e9 (weights and heads are bounded): finite by construction.
    lw, ew = min(lw, HARD_MAX_LATENCY_WEIGHT), min(ew, HARD_MAX_ENERGY_WEIGHT)
    other = lw * latency / 1000.0 + ew * energy if lw or ew else None
    choice = state.policy.choose(posterior, arm_idx, x, costs, weight, rng, other_term=other)
    forced = None
    if spec.explore_new_arm:
        choice, forced = _explore_new_arm(state, names, arm_idx, choice)
    utility, quality, cost = choice.utility.tolist(), choice.quality.tolist(), costs.tolist()
    lat, wh = latency.tolist(), energy.tolist()
    ranking = tuple(
        RankedArm(names[i], utility[i], quality[i], cost[i], lat[i], wh[i])
        for i in choice.order.tolist()
    )
    rival = None
    if compare:
        term = weight * costs + (0.0 if other is None else other)
        rival = dueling.challenger(posterior, arm_idx, x, term, choice.chosen, rng, spec.alpha)
    challenger = None if rival is None else names[rival]
    return Ranked(ranking, choice, tuple(names), price, outcome, lw, ew, challenger, forced)


def _explore_new_arm(
    state: RouterState, names: Sequence[str], arm_idx: IntArray, choice: Choice
) -> tuple[Choice, str | None]:
    """Put first the eligible arm with the fewest feedback events, while it has fewer than
    ``explore_new_arm`` of them and this process has not yet forced it that many times; the
    choice, and the arm forced (None for none)."""
    limit = state.spec.explore_new_arm
    events = state.posterior.n_updates[arm_idx]
    short = [
        (int(events[i]), i)
        for i, name in enumerate(names)
        if events[i] < limit and state.forced_picks.get(name, 0) < limit
    ]
    if not short:
        return choice, None
    position = min(short)[1]
    name = names[position]
    state.forced_picks[name] = state.forced_picks.get(name, 0) + 1
    return choice.forced(position), name
