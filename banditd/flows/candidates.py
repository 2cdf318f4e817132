"""Off-policy evaluation of candidate router configurations on a router's decision log.

A candidate is a router configuration (policy, exploration, cost weight, prior, arms). Its
probability of each arm at a logged decision comes from the candidate's own policy code
(``Policy.probabilities``) on the logged context x, over the arms that were eligible then, priced
as the log priced them, with the posterior the candidate would have held: its prior plus every
feedback event logged before that decision (the posterior is a function of prior and events,
whatever policy made the decisions, so that is what the router would have known had the candidate
been live). It weighs cost as Select would have for that request (``effective_cost_weight``):
the request's own cost weight, else the candidate's default, never less than the budget pacer's
price logged with the decision. The utility weighs each decision the same way with the live
router's default, unless the caller gives one weight for all. The estimators themselves are in
``banditd.flows.ope``.

Not simulated: ``explore_new_arm`` forcing (warned); how the candidate's own spending would have
moved the pacer's price (the logged price applies). A candidate must score the same features:
its context settings must build x as the router's do (``RouterSpec.changes_x``), as only x, not
the prompt, is logged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from banditd import progress
from banditd.domain import Decision, FeedbackEvent, FloatArray, RouterSpec, built_with
from banditd.errors import FailedPrecondition, InvalidArgument
from banditd.flows.ope import DEFAULT_BOOTSTRAP, Evaluation, LoggedFeedback, as_columns, evaluate
from banditd.flows.ope import ridge_predictions as ridge
from banditd.flows.ranking import effective_cost_weight
from banditd.state.fold import RouterState, fold
from banditd.store import Store

DEFAULT_LIMIT = 100_000  # most recent decisions with feedback evaluated on


@dataclass(frozen=True)
class LoggedDecision:
    """One logged decision with the feedback it got.

    x: (dim,) the context scored; expected_costs: USD per arm in ``candidates`` (as priced then).
    cost_weight: the request's own (None: the router's default applied); budget_price: the
    pacer's price of a dollar then (0: no budget).
    """

    created_at: float
    x: FloatArray
    candidates: tuple[str, ...]
    expected_costs: tuple[float, ...]
    arm: str
    propensity: float
    reward: float
    cost_usd: float
    cost_weight: float | None = None
    budget_price: float = 0.0

    def weight(self, default: float) -> float:
        """The cost weight Select used for this decision, ``default`` being the router's."""
        return effective_cost_weight(default, self.cost_weight, self.budget_price)

    @classmethod
    def of(cls, d: Decision, reward: float, cost_usd: float) -> LoggedDecision:
        if d.x is None:
            raise InvalidArgument("decision", f"{d.decision_id} was logged without its context")
        priced = {r.arm: r.expected_cost_usd for r in d.ranking}
        candidates = tuple(a for a in d.candidates if a in priced)
        return cls(
            created_at=d.created_at,
            x=d.x,
            candidates=candidates,
            expected_costs=tuple(priced[a] for a in candidates),
            arm=d.arm,
            propensity=d.propensity,
            reward=reward,
            cost_usd=cost_usd,
            cost_weight=d.cost_weight,
            budget_price=d.budget_price,
        )


@dataclass(frozen=True)
class DecisionLog:
    """A router's logged decisions (by time) and its whole feedback log (by id).

    events: every event, offline ones included, to rebuild the posterior at each decision.
    """

    decisions: tuple[LoggedDecision, ...]
    events: tuple[FeedbackEvent, ...]

    @property
    def arms(self) -> tuple[str, ...]:
        """Every arm eligible at some decision, in first-seen order (the estimators' columns)."""
        seen: dict[str, None] = {}
        for d in self.decisions:
            seen.update(dict.fromkeys(d.candidates))
            seen[d.arm] = None
        return tuple(seen)


async def load_log(
    store: Store,
    router_id: int,
    limit: int = DEFAULT_LIMIT,
    context_since: int = 0,
    weights: str = "",
) -> DecisionLog:
    """A router's newest ``limit`` decisions with feedback and its whole event log, both from
    router version ``context_since`` on (StoredRouter's: what came before built x otherwise)
    and built by the encoder ``weights`` (ContextPipeline.weights; "": any), as the posterior
    folds them."""
    rows = await store.reports.decisions_with_feedback(router_id, limit)
    events: list[FeedbackEvent] = []
    while batch := await store.events.after(router_id, events[-1].event_id if events else 0):
        events += batch
    return DecisionLog(
        tuple(
            LoggedDecision.of(d, reward, cost)
            for d, reward, cost in rows
            if d.router_version >= context_since and built_with(d.context_version, weights)
        ),
        tuple(e for e in events if e.decided_since(context_since) and e.built_with(weights)),
    )


def check_candidate(live: RouterSpec, candidate: RouterSpec) -> RouterSpec:
    """The candidate as evaluated: it must build x as the router does (``changes_x``), as its
    posterior and scores read the logged x."""
    if candidate.embedding_dim != live.embedding_dim:
        raise InvalidArgument(
            "candidate.embedding_dim",
            f"{candidate.embedding_dim} differs from the router's {live.embedding_dim}: the log "
            "holds contexts of the router's size only (the prompts are not logged)",
        )
    if live.changes_x(candidate):
        ours, theirs = live.context_fields, candidate.context_fields
        differ = [k for k in {**ours, **theirs} if ours.get(k) != theirs.get(k)]
        raise InvalidArgument(
            f"candidate.{differ[0] if differ else 'context'}",
            f"builds x otherwise than the router ({', '.join(differ) or 'its size'} differ; "
            f"{candidate.dim} values against {live.dim}): the log holds the router's x only "
            "(the prompts are not logged), so a candidate keeps the router's context settings",
        )
    return candidate


def candidate_probabilities(
    spec: RouterSpec, log: DecisionLog, arms: Sequence[str], seed: int
) -> tuple[FloatArray, int]:
    """The candidate's probability of each arm at each logged decision, shape (n, len(arms)),
    and the number of decisions at which it had no eligible arm (their rows stay 0)."""
    # The logged x and candidates hold the context and the breakers' verdicts: the candidate
    # needs no pipeline, and its arm health goes unread.
    state = RouterState.fresh(spec)
    posterior, policy = state.posterior, state.policy
    enabled = {a.name for a in spec.arms if not a.disabled}
    rng = np.random.default_rng(seed)
    column = {a: j for j, a in enumerate(arms)}
    target = np.zeros((len(log.decisions), len(arms)))
    events, e, uncovered = log.events, 0, 0
    for i, d in enumerate(log.decisions):
        start = e
        while e < len(events) and events[e].created_at <= d.created_at:
            e += 1
        fold(state, events[start:e])
        eligible = [j for j, a in enumerate(d.candidates) if a in enabled]
        if not eligible:
            uncovered += 1
            continue
        names = [d.candidates[j] for j in eligible]
        arm_idx = np.array([posterior.index(a) for a in names], dtype=np.int64)
        costs = np.array([d.expected_costs[j] for j in eligible])
        weight = d.weight(spec.default_cost_weight)
        p = policy.probabilities(posterior, arm_idx, d.x, costs, weight, rng)
        target[i, [column[a] for a in names]] = p
    return target, uncovered


def logged_feedback(
    spec: RouterSpec, log: DecisionLog, *, seed: int = 0
) -> tuple[LoggedFeedback, list[str]]:
    """The estimators' input for a candidate on the log, with warnings about the candidate."""
    if not log.decisions:
        raise FailedPrecondition(
            "no logged decisions with feedback to evaluate on (decisions need a context x and "
            "a feedback event)"
        )
    arms = log.arms
    target, uncovered = candidate_probabilities(spec, log, arms, seed)
    if uncovered:
        raise InvalidArgument(
            "candidate.arms",
            f"the candidate has none of the arms that were eligible at {uncovered} of "
            f"{len(log.decisions)} logged decisions (it must keep at least one enabled arm of "
            "each decision's candidates)",
        )
    chosen = as_columns([d.arm for d in log.decisions], arms)
    reward = np.array([d.reward for d in log.decisions])
    cost = np.array([d.cost_usd for d in log.decisions])
    xs = np.stack([d.x for d in log.decisions])
    hat = ridge(xs, chosen, np.column_stack([reward, cost]), len(arms), seed=seed)
    feedback = LoggedFeedback(
        chosen=chosen,
        propensity=np.array([d.propensity for d in log.decisions]),
        reward=reward,
        cost=cost,
        target=target,
        reward_hat=np.clip(hat[:, :, 0], 0.0, 1.0),
        cost_hat=np.maximum(hat[:, :, 1], 0.0),
        arms=arms,
    )
    notes = []
    new = [a.name for a in spec.arms if not a.disabled and a.name not in arms]
    if new:
        notes.append(
            f"new arms: {', '.join(new)} never eligible at a logged decision, so the candidate is "
            "evaluated without them (the log cannot tell how they would do)"
        )
    if spec.explore_new_arm:
        notes.append(
            "explore_new_arm is not simulated: the candidate is evaluated without forced picks"
        )
    return feedback, notes


def utility_weights(log: DecisionLog, default: float) -> FloatArray:
    """Each decision's cost weight as Select formed it, ``default`` being the router's: shape
    (n,)."""
    return np.array([d.weight(default) for d in log.decisions], dtype=np.float64)


def evaluate_candidate(
    spec: RouterSpec,
    log: DecisionLog,
    *,
    cost_weight: float | FloatArray,
    replicates: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> Evaluation:
    """Every estimator's value of the candidate on the log, utility at ``cost_weight`` (one for
    every decision, or shape (n,): each decision's)."""
    feedback, notes = logged_feedback(spec, log, seed=seed)
    result = evaluate(feedback, cost_weight=cost_weight, replicates=replicates, seed=seed)
    return dataclasses.replace(result, warnings=(*result.warnings, *notes))


def logged_value(log: DecisionLog, cost_weight: float | FloatArray) -> dict[str, float]:
    """What the logging (live) policy earned: mean reward, cost and utility (cost_weight: one
    for every decision, or shape (n,): each decision's)."""
    if not log.decisions:
        return {"reward": 0.0, "cost_usd": 0.0, "utility": 0.0}
    reward = np.array([d.reward for d in log.decisions])
    cost = np.array([d.cost_usd for d in log.decisions])
    return {
        "reward": float(reward.mean()),
        "cost_usd": float(cost.mean()),
        "utility": float((reward - cost_weight * cost).mean()),
    }


def report(
    router: str,
    live: RouterSpec,
    log: DecisionLog,
    candidates: Sequence[tuple[str, RouterSpec]],
    *,
    cost_weight: float | None = None,
    replicates: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate each named candidate against the log (the --json object of `banditd evaluate`).

    cost_weight: the utility's weight for every decision; None: each decision's own, as Select
    formed it with the live router's default (``cost_weight`` in the report is then that default).
    """
    base = live.default_cost_weight
    per_decision = utility_weights(log, base)
    weight: float | FloatArray = per_decision if cost_weight is None else cost_weight
    rows = []
    progress.update("candidates evaluated", 0, len(candidates))
    for name, spec in candidates:
        check_candidate(live, spec)
        result = evaluate_candidate(spec, log, cost_weight=weight, replicates=replicates, seed=seed)
        rows.append(
            {
                "name": name,
                "policy": spec.policy,
                "exploration": spec.alpha,
                "default_cost_weight": spec.default_cost_weight,
                **result.as_dict(),
            }
        )
        progress.update("candidates evaluated", len(rows), len(candidates))
    return {
        "router": router,
        "version": live.version,
        "decisions": len(log.decisions),
        "cost_weight": base if cost_weight is None else cost_weight,
        "mean_cost_weight": float(np.mean(weight)) if log.decisions else base,
        "request_cost_weights": sum(d.cost_weight is not None for d in log.decisions),
        "budget_raised_cost_weights": sum(
            d.budget_price > (base if d.cost_weight is None else d.cost_weight)
            for d in log.decisions
        ),
        "logged": logged_value(log, weight),
        "candidates": rows,
    }


def render_text(r: dict[str, Any]) -> str:
    """The report as a table for people."""
    logged = r["logged"]
    lines = [
        f"banditd evaluate {r['router']} (version {r['version']}): {r['decisions']} logged "
        f"decisions with feedback; utility = reward - {_weighs(r)} x cost",
        f"live policy (logged): reward {logged['reward']:.4f}, cost ${logged['cost_usd']:.6f}, "
        f"utility {logged['utility']:.4f}",
    ]
    for c in r["candidates"]:
        lines += [
            "",
            f"{c['name']}: {c['policy']} (exploration {c['exploration']:g}, "
            f"cost weight {c['default_cost_weight']:g}); effective sample size "
            f"{c['effective_sample_size']:.1f}, agrees with the log on {c['agreement']:.1%}",
            f"{'':>8}{'reward [95% CI]':>30}{'cost $ [95% CI]':>36}{'utility [95% CI]':>30}",
        ]
        for e in c["estimates"]:
            cells = [_cell(e["reward"], ".4f"), _cell(e["cost_usd"], ".6f")]
            lines.append(
                f"{e['estimator']:>8}{cells[0]:>30}{cells[1]:>36}{_cell(e['utility'], '.4f'):>30}"
            )
        lines += [f"  warning: {w}" for w in c["warnings"]]
    return "\n".join(lines)


def _weighs(r: dict[str, Any]) -> str:
    """The utility's cost weight, in words: one number, or each decision's own and their mean."""
    if r["mean_cost_weight"] == r["cost_weight"]:
        return f"{r['cost_weight']:g}"
    return (
        f"the decision's cost weight (mean {r['mean_cost_weight']:g}; the router's default "
        f"{r['cost_weight']:g}, {r['request_cost_weights']} requests' own, "
        f"{r['budget_raised_cost_weights']} raised by a budget)"
    )


def _cell(i: dict[str, float | None], fmt: str) -> str:
    value, low, high = i["value"], i["low"], i["high"]
    if value is None:
        return "n/a"
    if low is None or high is None:
        return format(value, fmt)
    return f"{value:{fmt}} [{low:{fmt}}, {high:{fmt}}]"
