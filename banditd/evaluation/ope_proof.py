"""`banditd evaluate --replay-proof DATA`: estimators against the truth on full-information data.

1. Log: replay an exploring policy (epsilon-greedy, epsilon 0.3 by default) over the outcome file
   through the serving engine (``rank_arms``, posterior updates), keeping what a router logs: x,
   eligible arms with their expected costs, the arm chosen, its propensity, the reward (quality)
   and the real cost of that arm only.
2. Estimate each candidate from that log alone, with exactly the code `banditd evaluate` runs on
   a database's log (``evaluation.evaluate_candidate``).
3. Truth, from the full-information file, which the log never shows:
   ``truth``: the candidate's exact value on these prompts: sum over arms of its probability
   times that arm's real quality (and cost), with the posterior the log gives it at each prompt,
   which is what the estimators estimate; ``online``: `banditd replay` of the candidate, learning
   from its own picks (the value it would have had live from the start; it differs from
   ``truth`` by how much its own picks would have changed what it learned).

Repeated over seeds (each a new log), it reports each estimator's mean error against ``truth``
and how often its 95 % bootstrap interval covered it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from banditd import progress
from banditd.domain import FeedbackEvent, RouterSpec
from banditd.evaluation import replay
from banditd.flows.candidates import candidate_probabilities
from banditd.flows.candidates import evaluate_candidate as estimate
from banditd.flows.ope import ESTIMATORS
from banditd.flows.ope_log import DecisionLog, LoggedDecision
from banditd.flows.ranking import rank_arms
from banditd.state.fold import RouterState, fold

LOGGING_EPSILON = 0.3
COST_WEIGHT = 100.0  # USD -> quality for the cost-aware candidates and the utility column


def candidates(logging: RouterSpec) -> list[tuple[str, RouterSpec]]:
    """Candidates from close to the logging policy to far from it."""

    def variant(**changes: Any) -> RouterSpec:
        return dataclasses.replace(logging, **changes)

    return [
        ("logging policy itself", logging),
        ("epsilon-greedy 0.1", variant(exploration=0.1)),
        ("epsilon-greedy 0.5", variant(exploration=0.5)),
        ("linucb alpha 0.5", variant(policy="linucb", exploration=0.5)),
        ("thompson 0.5", variant(policy="thompson", exploration=0.5)),
        ("eps-greedy 0.1, cost weight 100", variant(exploration=0.1, default_cost_weight=100.0)),
        ("linucb, cost weight 1000", variant(policy="linucb", default_cost_weight=1000.0)),
        (
            "linucb, prior 0, cost weight 5000",
            variant(policy="linucb", prior_quality=0.0, default_cost_weight=5000.0),
        ),
    ]


def log_decisions(
    spec: RouterSpec, outcomes: replay.Outcomes, xs: np.ndarray[Any, Any], seed: int
) -> DecisionLog:
    """Replay ``spec`` over the outcomes, keeping the decision log a router would keep."""
    state = RouterState.fresh(spec)  # x is given: no context pipeline (xs hold no kNN part)
    rng = np.random.default_rng(seed)
    column = {arm: j for j, arm in enumerate(outcomes.arms)}
    decisions: list[LoggedDecision] = []
    events: list[FeedbackEvent] = []
    for t, prompt in enumerate(outcomes.prompts):
        ranked = rank_arms(state, xs[t], prompt=prompt, rng=rng)
        arm = ranked.ranking[0].arm
        priced = {r.arm: r.expected_cost_usd for r in ranked.ranking}
        j = column[arm]
        quality, cost = float(outcomes.quality[t, j]), float(outcomes.cost[t, j])
        decisions.append(
            LoggedDecision(
                created_at=float(t),
                x=xs[t],
                candidates=ranked.candidates,
                expected_costs=tuple(priced[a] for a in ranked.candidates),
                arm=arm,
                propensity=ranked.choice.propensity,
                reward=quality,
                cost_usd=cost,
            )
        )
        event = replay._event(t + 1, arm, xs[t], quality, cost)  # created_at t + 1: after it
        fold(state, [event])
        events.append(event)
    return DecisionLog(tuple(decisions), tuple(events))


def truth(
    spec: RouterSpec, log: DecisionLog, outcomes: replay.Outcomes, seed: int
) -> tuple[float, float]:
    """The candidate's exact mean quality and cost on the log's prompts (full information)."""
    target, _ = candidate_probabilities(spec, log, outcomes.arms, seed)
    return (
        float((target * outcomes.quality).sum(axis=1).mean()),
        float((target * outcomes.cost).sum(axis=1).mean()),
    )


def online(
    spec: RouterSpec, outcomes: replay.Outcomes, raw: np.ndarray[Any, Any], seed: int
) -> tuple[float, float]:
    """`banditd replay` of the candidate: mean quality and cost, learning from its own picks.
    raw: the encoder's embedding of each prompt."""
    state = RouterState.fresh(spec, context=replay.pipeline_of(spec, replay.MAX_PROMPT_CHARS))
    picks = replay.learn_online(
        state,
        outcomes,
        raw,
        seed=seed,
        feedback="score",
        budget_usd=None,
        progress=lambda done: None,
    )
    scored = replay.score(outcomes, picks, 0.0)
    return scored["mean_quality"], scored["mean_cost_usd"]


def proof(
    data: Path,
    *,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    limit: int | None = None,
    replicates: int = 500,
    logging_epsilon: float = LOGGING_EPSILON,
) -> dict[str, Any]:
    """Estimator-vs-truth rows per candidate and estimator, over ``seeds`` logs."""
    started = time.perf_counter()
    outcomes = replay.load_outcomes(data, limit=limit)
    opts = replay.Options(data=data, policy="epsilon-greedy", exploration=logging_epsilon)
    logging = replay.router_spec(outcomes.arms, opts, 0.0)
    pipeline = replay.pipeline_of(logging, replay.MAX_PROMPT_CHARS)
    raw = replay.embeddings(pipeline, outcomes.prompts, "encoding prompts", replay.Progress())
    xs = replay.contexts(pipeline, outcomes, raw)
    named = candidates(logging)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in named}
    logged = []
    label, total = "OPE proof: candidates x logs", len(named) * len(seeds)
    progress.update(label, 0, total)
    for seed in seeds:
        log = log_decisions(logging, outcomes, xs, seed)
        logged.append(np.mean([d.reward for d in log.decisions]))
        for name, spec in named:
            result = estimate(spec, log, cost_weight=COST_WEIGHT, replicates=replicates, seed=seed)
            q, c = truth(spec, log, outcomes, seed)
            runs[name].append(
                {
                    "seed": seed,
                    "truth": {"reward": q, "cost_usd": c, "utility": q - COST_WEIGHT * c},
                    "online": online(spec, outcomes, raw, seed),
                    **result.as_dict(),
                }
            )
            progress.update(label, sum(map(len, runs.values())), total)
    rows = []
    for name, spec in named:
        rows.append(_summary(name, spec, runs[name]))
    return {
        "data": str(data),
        "n": outcomes.n,
        "arms": list(outcomes.arms),
        "logging_policy": f"epsilon-greedy, epsilon {logging_epsilon:g}",
        "logged_mean_reward": float(np.mean(logged)),
        "seeds": list(seeds),
        "bootstrap_replicates": replicates,
        "cost_weight": COST_WEIGHT,
        "candidates": rows,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def _summary(name: str, spec: RouterSpec, runs: list[dict[str, Any]]) -> dict[str, Any]:
    truth_reward = np.array([r["truth"]["reward"] for r in runs])
    out: dict[str, Any] = {
        "name": name,
        "policy": spec.policy,
        "truth_reward": float(truth_reward.mean()),
        "truth_cost_usd": float(np.mean([r["truth"]["cost_usd"] for r in runs])),
        "online_reward": float(np.mean([r["online"][0] for r in runs])),
        "online_cost_usd": float(np.mean([r["online"][1] for r in runs])),
        "effective_sample_size": float(np.mean([r["effective_sample_size"] for r in runs])),
        "warnings": sorted({w.split(":")[0] for r in runs for w in r["warnings"]}),
        "estimators": {},
    }
    for k, estimator in enumerate(ESTIMATORS):
        cells = [r["estimates"][k]["reward"] for r in runs]
        values = np.array([np.nan if c["value"] is None else c["value"] for c in cells])
        covered = [
            c["low"] is not None and c["low"] <= t <= c["high"]
            for c, t in zip(cells, truth_reward, strict=True)
        ]
        widths = [c["high"] - c["low"] for c in cells if c["low"] is not None]
        out["estimators"][estimator] = {
            "estimate": float(np.nanmean(values)),
            "mean_abs_error": float(np.nanmean(np.abs(values - truth_reward))),
            "coverage": float(np.mean(covered)),
            "mean_ci_width": float(np.mean(widths)) if widths else None,
        }
    return out


def render_text(r: dict[str, Any]) -> str:
    lines = [
        f"OPE proof on {r['data']}: {r['n']} prompts, {len(r['arms'])} models; log by "
        f"{r['logging_policy']} (mean reward {r['logged_mean_reward']:.4f}); "
        f"{len(r['seeds'])} logs (seeds {r['seeds'][0]}..{r['seeds'][-1]}), 95% intervals from "
        f"{r['bootstrap_replicates']} bootstrap replicates",
        "mean reward (quality); error = mean |estimate - truth| over the logs; coverage = share "
        "of logs whose interval held the truth",
        "",
        f"{'candidate':<34}{'truth':>7}{'online':>8}{'ESS':>7}  "
        + "".join(f"{e.upper() + ' est/err/cov':>22}" for e in ESTIMATORS),
    ]
    for c in r["candidates"]:
        cells = "".join(
            f"{e['estimate']:>8.4f}/{e['mean_abs_error']:.4f}/{e['coverage']:>4.0%}"
            for e in c["estimators"].values()
        )
        lines.append(
            f"{c['name']:<34}{c['truth_reward']:>7.4f}{c['online_reward']:>8.4f}"
            f"{c['effective_sample_size']:>7.0f}  {cells}"
        )
        if c["warnings"]:
            lines.append(f"{'':<34}warnings: {', '.join(c['warnings'])}")
    lines.append(f"wall time {r['wall_s']} s")
    return "\n".join(lines)
