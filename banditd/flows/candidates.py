"""Off-policy evaluation of candidate router configurations on a router's decision log.

A candidate is a router configuration (policy, exploration, cost weight, prior, arms). Its
probability of each arm at a logged decision comes from the candidate's own policy code
(``Policy.probabilities``) on the logged context x, over the arms that were eligible then, priced
as the log priced them, with the posterior the candidate would have held: its prior plus every
feedback event logged before that decision (the posterior is a function of prior and events,
whatever policy made the decisions, so that is what the router would have known had the candidate
been live). It weighs cost as Select would have for that request (``effective_cost_weight``):
the request's own cost weight, else the candidate's default, never less than the budget pacer's
price logged with the decision; latency and energy likewise (the request's weights, else the
candidate's defaults, times the expected latency and energy the decision was ranked with). The
utility weighs each decision the same way with the defaults of the router version it was made
under (``banditd.flows.ope_log``), unless the caller gives one weight (of cost, latency or
energy) for all. The
estimators themselves are in ``banditd.flows.ope``.

Not simulated: ``explore_new_arm`` forcing (warned); how the candidate's own spending would have
moved the pacer's price (the logged price applies). A candidate must score the same features:
its context settings must build x as the router's do (``RouterSpec.changes_x``), as only x, not
the prompt, is logged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from banditd import progress
from banditd.domain import FloatArray, RouterSpec
from banditd.errors import FailedPrecondition, InvalidArgument
from banditd.flows.ope import DEFAULT_BOOTSTRAP, Evaluation, LoggedFeedback, as_columns, evaluate
from banditd.flows.ope import ridge_predictions as ridge
from banditd.flows.ope_log import DecisionLog, Weights
from banditd.flows.stop import NEVER, Stop
from banditd.state.fold import RouterState, fold

BoolArray = npt.NDArray[np.bool_]
DEFAULT_LIMIT = 100_000  # most recent decisions with feedback evaluated on
STOP_EVERY = 256  # decisions replayed between checks of the stop signal


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
    spec: RouterSpec, log: DecisionLog, arms: Sequence[str], seed: int, stop: Stop = NEVER
) -> tuple[FloatArray, BoolArray]:
    """The candidate's probability of each arm at each logged decision, shape (n, len(arms)),
    and whether it had an eligible arm there, shape (n,) (where not, the row stays 0). ``stop``
    is checked every STOP_EVERY decisions."""
    # The logged x and candidates hold the context and the breakers' verdicts: the candidate
    # needs no pipeline, and its arm health goes unread.
    state = RouterState.fresh(spec)
    posterior, policy, own = state.posterior, state.policy, Weights.defaults(spec)
    enabled = {a.name for a in spec.arms if not a.disabled}
    rng = np.random.default_rng(seed)
    column = {a: j for j, a in enumerate(arms)}
    target = np.zeros((len(log.decisions), len(arms)))
    covered = np.ones(len(log.decisions), dtype=bool)
    events, e = log.events, 0
    for i, d in enumerate(log.decisions):
        if i % STOP_EVERY == 0:
            stop.check("replay", i, len(log.decisions))
        start = e
        while e < len(events) and events[e].created_at <= d.created_at:
            e += 1
        fold(state, events[start:e])
        eligible = [j for j, a in enumerate(d.candidates) if a in enabled]
        if not eligible:
            covered[i] = False
            continue
        names = [d.candidates[j] for j in eligible]
        arm_idx = np.array([posterior.index(a) for a in names], dtype=np.int64)
        costs = np.array([d.expected_costs[j] for j in eligible])
        w = d.weights(own)
        other = d.other_term(w, eligible)
        p = policy.probabilities(posterior, arm_idx, d.x, costs, w.cost, rng, other_term=other)
        target[i, [column[a] for a in names]] = p
    return target, covered


def logged_feedback(
    spec: RouterSpec,
    log: DecisionLog,
    *,
    seed: int = 0,
    stop: Stop = NEVER,
    name: str = "the candidate",
) -> tuple[LoggedFeedback, list[str], BoolArray]:
    """The estimators' input for a candidate (called ``name`` in messages) on the logged
    decisions at which it had an eligible arm (the others tell nothing about it), with warnings
    about the candidate, and which decisions those were, shape (n,)."""
    if not log.decisions:
        raise FailedPrecondition(
            "no logged decisions with feedback to evaluate on (decisions need a context x and "
            "a feedback event)"
        )
    target, covered = candidate_probabilities(spec, log, log.arms, seed, stop)
    kept = DecisionLog(tuple(d for d, c in zip(log.decisions, covered, strict=True) if c), ())
    n, skipped = len(log.decisions), len(log.decisions) - len(kept.decisions)
    if not kept.decisions:
        raise FailedPrecondition(
            f"{name}: none of its arms ({', '.join(a.name for a in spec.arms if not a.disabled)}) "
            f"was eligible at any of the {n} logged decisions (they offered "
            f"{', '.join(log.arms)}), so no decision is left to evaluate it on; decisions logged "
            "on its arms will be"
        )
    arms = kept.arms  # the skipped decisions' other arms have no mass: their columns go
    target = target[covered][:, as_columns(arms, log.arms)]
    chosen = as_columns([d.arm for d in kept.decisions], arms)
    reward = np.array([d.reward for d in kept.decisions])
    cost = np.array([d.cost_usd for d in kept.decisions])
    latency = np.array([d.latency_ms for d in kept.decisions]) / 1000.0  # seconds
    energy = np.array([d.energy_wh for d in kept.decisions])
    xs = np.stack([d.x for d in kept.decisions])
    observed = np.column_stack([reward, cost, latency, energy])
    hat = ridge(xs, chosen, observed, len(arms), seed=seed)
    feedback = LoggedFeedback(
        chosen=chosen,
        propensity=np.array([d.propensity for d in kept.decisions]),
        reward=reward,
        cost=cost,
        target=target,
        reward_hat=np.clip(hat[:, :, 0], 0.0, 1.0),
        cost_hat=np.maximum(hat[:, :, 1], 0.0),
        arms=arms,
        latency_s=latency,
        energy_wh=energy,
        latency_s_hat=np.maximum(hat[:, :, 2], 0.0),
        energy_wh_hat=np.maximum(hat[:, :, 3], 0.0),
    )
    notes = []
    if skipped:
        notes.append(
            f"skipped decisions: {skipped} of {n} logged decisions had none of its arms eligible "
            "(as when they were made before the router's arms were replaced), so they tell "
            f"nothing about it; its estimates rest on the other {n - skipped}"
        )
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
    return feedback, notes, covered


def utility_weights(log: DecisionLog, live: Weights) -> FloatArray:
    """Each decision's weights of cost, latency and energy as Select formed them, with its
    version's defaults (else ``live``, the live router's): shape (n, 3)."""
    rows = [dataclasses.astuple(d.weights(d.utility_defaults(live))) for d in log.decisions]
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def evaluate_candidate(
    spec: RouterSpec,
    log: DecisionLog,
    *,
    cost_weight: float | FloatArray,
    latency_weight: float | FloatArray = 0.0,
    energy_weight: float | FloatArray = 0.0,
    replicates: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    stop: Stop = NEVER,
    name: str = "the candidate",
) -> Evaluation:
    """Every estimator's value of the candidate (``name`` in messages) on the log, utility at
    the weights (each one for every decision, or shape (n,): each decision's), over the
    decisions at which it had an eligible arm."""
    feedback, notes, covered = logged_feedback(spec, log, seed=seed, stop=stop, name=name)

    def kept(weight: float | FloatArray) -> float | FloatArray:
        """The weights of the decisions evaluated on (a wrong shape goes on to be refused)."""
        each = np.asarray(weight, dtype=np.float64)
        return each[covered] if each.shape == covered.shape else weight

    weights = kept(cost_weight), kept(latency_weight), kept(energy_weight)
    result = evaluate(
        feedback,
        cost_weight=weights[0],
        latency_weight=weights[1],
        energy_weight=weights[2],
        replicates=replicates,
        seed=seed,
        stop=stop,
    )
    if not covered.all():  # the live policy on the same decisions, to compare like with like
        decisions = tuple(d for d, c in zip(log.decisions, covered, strict=True) if c)
        n = len(decisions)
        live = logged_value(
            DecisionLog(decisions, ()), np.column_stack([np.broadcast_to(w, n) for w in weights])
        )
        notes.append(
            f"on the {n} decisions kept the live policy earned utility "
            f"{live['utility']:.4f} (reward {live['reward']:.4f}, cost "
            f"${live['cost_usd']:.6f}); the report's logged values cover all {covered.size}"
        )
    return dataclasses.replace(result, warnings=(*result.warnings, *notes))


def logged_value(log: DecisionLog, weights: FloatArray) -> dict[str, float]:
    """What the logging (live) policy earned: mean reward, cost and utility (weights: shape
    (n, 3), each decision's of cost, latency and energy)."""
    if not log.decisions:
        return {"reward": 0.0, "cost_usd": 0.0, "utility": 0.0}
    reward = np.array([d.reward for d in log.decisions])
    prices = np.array([(d.cost_usd, d.latency_ms / 1000.0, d.energy_wh) for d in log.decisions])
    return {
        "reward": float(reward.mean()),
        "cost_usd": float(prices[:, 0].mean()),
        "utility": float((reward - (weights * prices).sum(axis=1)).mean()),
    }


def report(
    router: str,
    live: RouterSpec,
    log: DecisionLog,
    candidates: Sequence[tuple[str, RouterSpec]],
    *,
    cost_weight: float | None = None,
    latency_weight: float | None = None,
    energy_weight: float | None = None,
    replicates: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    stop: Stop = NEVER,
) -> dict[str, Any]:
    """Evaluate each named candidate against the log (the --json object of `banditd evaluate`).

    cost_weight, latency_weight, energy_weight: the utility's weight for every decision; None:
    each decision's own, as Select formed it with its router version's default (``cost_weight``
    in the report is then the live router's default). The candidates' choices keep each
    decision's own weights. ``stop``: checked as the work goes (``banditd.flows.stop``).
    """
    base, defaults = live.default_cost_weight, Weights.defaults(live)
    weights = utility_weights(log, defaults)  # (n, 3)
    for column, given in enumerate((cost_weight, latency_weight, energy_weight)):
        if given is not None:
            weights[:, column] = given
    cost, latency, energy = weights.T
    rows: list[dict[str, Any]] = []
    progress.update("candidates evaluated", 0, len(candidates))
    for name, spec in candidates:
        stop.check("candidates", len(rows), len(candidates))
        check_candidate(live, spec)
        result = evaluate_candidate(
            spec,
            log,
            cost_weight=cost,
            latency_weight=latency,
            energy_weight=energy,
            replicates=replicates,
            seed=seed,
            stop=stop,
            name=name,
        )
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
        "mean_cost_weight": _mean(cost, base),
        "request_cost_weights": sum(d.cost_weight is not None for d in log.decisions),
        "budget_raised_cost_weights": sum(
            d.budget_price > d.weights(d.utility_defaults(defaults), budget=False).cost
            for d in log.decisions
        ),
        "unversioned_decisions": sum(d.defaults is None for d in log.decisions),
        "mean_latency_weight": _mean(latency, defaults.latency),
        "mean_energy_weight": _mean(energy, defaults.energy),
        "request_latency_weights": sum(d.latency_weight is not None for d in log.decisions),
        "request_energy_weights": sum(d.energy_weight is not None for d in log.decisions),
        "logged": logged_value(log, weights),
        "candidates": rows,
    }


def _mean(weights: FloatArray, empty: float) -> float:
    """The mean of the decisions' weights (``empty`` for none): exactly the weight when one
    applies to all, as a float sum over n can miss it by an ulp and the header compares them."""
    if not weights.size:
        return empty
    return float(weights[0]) if np.all(weights == weights[0]) else float(weights.mean())


def render_text(r: dict[str, Any]) -> str:
    """The report as a table for people."""
    logged = r["logged"]
    lines = [
        f"banditd evaluate {r['router']} (version {r['version']}): {r['decisions']} logged "
        f"decisions with feedback; utility = reward - {_weighs(r)} x cost{_other_terms(r)}",
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
    unversioned = r["unversioned_decisions"]
    history = f", {unversioned} at the live default (version not in history)" if unversioned else ""
    return (
        f"the decision's cost weight (mean {r['mean_cost_weight']:g}; the live router's default "
        f"{r['cost_weight']:g}, {r['request_cost_weights']} requests' own, "
        f"{r['budget_raised_cost_weights']} raised by a budget{history})"
    )


def _other_terms(r: dict[str, Any]) -> str:
    """The utility's latency and energy terms, at their mean weights, where not 0."""
    terms = ((r["mean_latency_weight"], "latency (s)"), (r["mean_energy_weight"], "energy (Wh)"))
    return "".join(f" - {weight:g} x {what}" for weight, what in terms if weight)


def _cell(i: dict[str, float | None], fmt: str) -> str:
    value, low, high = i["value"], i["low"], i["high"]
    if value is None:
        return "n/a"
    if low is None or high is None:
        return format(value, fmt)
    return f"{value:{fmt}} [{low:{fmt}}, {high:{fmt}}]"
