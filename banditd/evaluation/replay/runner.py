"""The Replay runner: one invocation's outcomes, context and warm start, its runs over seeds,
cost weights and budgets, and the report they add up to (the --json object)."""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

import numpy as np

from banditd.domain import FloatArray
from banditd.errors import InvalidArgument
from banditd.evaluation.replay.data import Outcomes, load_outcomes, split_point
from banditd.evaluation.replay.engine import (
    REFUSED,
    SHUFFLE_STREAM,
    best_single,
    gate,
    learn_online,
    oracle_picks,
    reference_picks,
)
from banditd.evaluation.replay.features import (
    arm_heads,
    arm_prices,
    embeddings,
    pipeline_of,
    router_spec,
    warm_start,
)
from banditd.evaluation.replay.options import (
    SUMMARY_KEYS,
    Options,
)
from banditd.evaluation.replay.remote import check_remote, learn_remote, router_name
from banditd.evaluation.replay.scoring import (
    _model,
    budget_grid,
    curve_steps,
    frontier_summary,
    ratio,
    regret_over_time,
    score,
    weight_grid,
    xy,
)
from banditd.evaluation.replay.trade_off import MEASURE_KEYS, check_trade_off
from banditd.evaluation.replay.zero_router import (
    gain_with_runs,
    routing_ceiling,
    share_of_ceiling,
)
from banditd.evaluation.warm_start import WarmStartReport
from banditd.policy import POLICIES
from banditd.policy.base import IntArray
from banditd.progress import Progress
from banditd.state.fold import RouterState

# Policies whose regret over time the report shows beside the policy's (the oracle's is 0).
REGRET_REFERENCES = ("best-single", "random")


class Replay:
    """One invocation: the outcomes, the contexts and warm start (for a learning policy), and
    the runs of each (cost weight, budget) over the seeds."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.progress = Progress()
        if opts.warm_start_head and (opts.split is None or opts.warm_start is not None):
            raise InvalidArgument("warm_start_head", "needs --split and no --warm-start file")
        self.head = 0 if opts.split is None else split_point(opts.data, opts.split)
        if opts.warm_start_head and not self.head:
            problem = f"{opts.data}: no records before the split at {opts.split:g} to warm-start on"
            raise InvalidArgument("split", problem)
        self.outcomes = load_outcomes(
            opts.data, opts.arms, opts.limit, opts.metadata_from, skip=self.head
        )
        # The swept cost weights and budgets: None without the flag, a grid for AUTO.
        self.weights = None if opts.sweep is None else opts.sweep or weight_grid(self.outcomes)
        self.budgets = (
            None if opts.sweep_budgets is None else opts.sweep_budgets or budget_grid(self.outcomes)
        )
        warm_from = opts.data if opts.warm_start_head else opts.warm_start
        self.prices = arm_prices(self.outcomes) if opts.arm_prices == "data" else {}
        self.heads = arm_heads(self.outcomes) if opts.arm_prices == "data" else {}
        check_trade_off(opts)
        self.learning = opts.policy in POLICIES
        self.warm_report: WarmStartReport | None = None
        self.raw = np.zeros((self.outcomes.n, 0))
        # What each run of a learning policy starts from: fresh, or after the warm start.
        self.start: RouterState | None = None
        self.encode_s = 0.0
        if opts.server is not None:  # the server encodes and learns: nothing to set up here
            check_remote(opts.policy, warm_from, opts.budget_usd, opts.sweep_budgets)
        elif self.learning:
            spec = router_spec(self.outcomes.arms, opts, opts.cost_weight, self.prices, self.heads)
            pipeline = pipeline_of(spec, opts.max_prompt_chars)
            started = time.perf_counter()
            try:
                self.raw = embeddings(
                    pipeline,
                    self.outcomes.prompts,
                    "encoding prompts",
                    self.progress,
                    opts.embeddings_cache,
                )
            except InvalidArgument as exc:
                raise InvalidArgument("data", f"{self.outcomes.path}: {exc.message}") from exc
            self.encode_s = round(time.perf_counter() - started, 2)
            self.start = RouterState.fresh(spec, context=pipeline, policy=opts.policy)
            if warm_from is not None:
                self.warm_report = warm_start(
                    self.start,
                    warm_from,
                    opts.metadata_from,
                    opts.embeddings_cache,
                    head=self.head if opts.warm_start_head else None,
                )
        self.points: dict[tuple[float, float | None], dict[str, Any]] = {}
        # Each learning run's prior level at its end (prior_quality + the shared level: GetStats's
        # prior_level), by (seed, cost weight, budget).
        self.levels: dict[tuple[int, float, float | None], float] = {}
        self.runs_planned = self.runs_done = 0  # for the progress bar over the runs

    @property
    def seeds(self) -> list[int]:
        return [self.opts.seed + r for r in range(self.opts.repeats)]

    def order(self, seed: int) -> IntArray:
        """The file index of each record a seed's run takes, in turn: the file's order, or
        with --shuffle the seed's own."""
        if not self.opts.shuffle:
            return np.arange(self.outcomes.n, dtype=np.int64)
        rng = np.random.default_rng([seed, SHUFFLE_STREAM])
        return np.asarray(rng.permutation(self.outcomes.n), dtype=np.int64)

    def picks(
        self,
        seed: int,
        cost_weight: float,
        budget_usd: float | None,
        duels: IntArray | None = None,
    ) -> IntArray:
        """One run's arm per prompt, in file order (REFUSED where the budget refused), shape
        (n,); with --feedback pairwise, each prompt's challenger goes into duels (shape (n,))
        if given. The run takes the records in the seed's order."""
        order = self.order(seed)
        run_duels = None if duels is None else np.full_like(duels, REFUSED)
        chosen = self._run(
            seed,
            cost_weight,
            budget_usd,
            self.outcomes.reordered(order),
            self.raw[order],
            run_duels,
        )
        picks = np.empty_like(chosen)
        picks[order] = chosen
        if duels is not None and run_duels is not None:
            duels[order] = run_duels
        return picks

    def _run(
        self,
        seed: int,
        cost_weight: float,
        budget_usd: float | None,
        outcomes: Outcomes,
        raw: FloatArray,
        duels: IntArray | None,
    ) -> IntArray:
        """One run over the records as given (the seed's order): the arm per record."""
        opts = self.opts
        budget = "" if budget_usd is None else f" budget ${budget_usd:g}"
        label = f"{opts.policy} cost weight {cost_weight:g}{budget} seed {seed}"
        if opts.server is not None:
            name = router_name(seed, cost_weight, opts.cost_weight)
            spec = router_spec(outcomes.arms, opts, cost_weight, self.prices, self.heads)
            picks, level = learn_remote(
                dataclasses.replace(spec, tenant=opts.server.tenant, name=name),
                outcomes,
                server=opts.server,
                seed=seed,
                feedback=opts.feedback,
                progress=lambda done: self.progress(label, done, outcomes.n),
                trade_off=opts.trade_off,
                duels=duels,
            )
            self.levels[seed, cost_weight, budget_usd] = level
            return picks
        if self.start is None:
            chosen = reference_picks(opts.policy, outcomes, cost_weight, seed)
            return gate(chosen, outcomes, budget_usd)
        assert self.start.context is not None
        spec = router_spec(outcomes.arms, opts, cost_weight, self.prices, self.heads)
        state = RouterState.fresh(spec, context=self.start.context.fork(), policy=opts.policy)
        state.resume(copy.deepcopy(self.start.posterior), copy.deepcopy(self.start.health))
        picks = learn_online(
            state,
            outcomes,
            raw,
            seed=seed,
            feedback=opts.feedback,
            budget_usd=budget_usd,
            progress=lambda done: self.progress(label, done, outcomes.n),
            trade_off=opts.trade_off,
            duels=duels,
        )
        self.levels[seed, cost_weight, budget_usd] = state.posterior.prior_level
        return picks

    def point(self, cost_weight: float, budget_usd: float | None) -> dict[str, Any]:
        """Mean and spread (sample standard deviation) over the seeds of each summary value,
        with each arm's share of the prompts and the per-seed runs."""
        key = (cost_weight, budget_usd)
        if key not in self.points:
            runs, shares = [], np.zeros(len(self.outcomes.arms))
            regret = np.zeros(self.outcomes.n)
            for seed in self.seeds:
                duels = np.full(self.outcomes.n, REFUSED, dtype=np.int64)
                picks = self.picks(seed, cost_weight, budget_usd, duels)
                level = self.levels.get((seed, cost_weight, budget_usd))
                runs.append(
                    {"seed": seed, **score(self.outcomes, picks, cost_weight), "prior_level": level}
                )
                if self.opts.feedback == "pairwise":  # both answers paid (docs/evaluation.md)
                    runs[-1]["mean_challenger_cost_usd"] = score(self.outcomes, duels, 0.0)[
                        "mean_cost_usd"
                    ]
                shares += np.bincount(picks[picks != REFUSED], minlength=len(shares))
                order = self.order(seed)  # regret over time: in the order the run saw
                regret += regret_over_time(
                    self.outcomes.reordered(order), picks[order], cost_weight
                )
                self.runs_done += 1
                self.progress("replay runs", self.runs_done, self.runs_planned)
            keys = (*SUMMARY_KEYS, *(k for k in MEASURE_KEYS if k in runs[0]))
            table = np.array([[run[k] for k in keys] for run in runs])
            spread = table.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(len(keys))
            self.points[key] = {
                "cost_weight": cost_weight,
                "budget_usd": budget_usd,
                **dict(zip(keys, table.mean(axis=0).tolist(), strict=True)),
                "spread": dict(zip(keys, spread.tolist(), strict=True)),
                "picks": {
                    arm: round(float(s) / (len(runs) * self.outcomes.n), 4)
                    for arm, s in zip(self.outcomes.arms, shares, strict=True)
                },
                "runs": runs,
                "regret_curve": (regret / len(runs))[curve_steps(self.outcomes.n) - 1].tolist(),
            }
        return self.points[key]

    def reference_regret(self, policy: str) -> list[float]:
        """A reference policy's cumulative regret at curve_steps, mean over the seeds, at the
        options' cost weight and budget."""
        opts, outcomes = self.opts, self.outcomes
        regret = np.zeros(outcomes.n)
        for seed in self.seeds:
            run = outcomes.reordered(self.order(seed))
            picks = gate(reference_picks(policy, run, opts.cost_weight, seed), run, opts.budget_usd)
            regret += regret_over_time(run, picks, opts.cost_weight)
        return list((regret / len(self.seeds))[curve_steps(outcomes.n) - 1].tolist())


def _frontier_point(point: dict[str, Any]) -> dict[str, Any]:
    keys = ("cost_weight", "budget_usd", "mean_quality", "mean_cost_usd", "refused", "spread")
    return {k: point[k] for k in keys}


def _gain(run: Replay, main: dict[str, Any], singles: list[tuple[float, float]]) -> dict[str, Any]:
    """The gain over the zero router of the frontier (each cost weight's mean over the seeds),
    and with several seeds each seed's own ("runs")."""
    weights = run.weights
    points = [main] if weights is None else [run.point(w, run.opts.budget_usd) for w in weights]
    return gain_with_runs([xy([p, *p["runs"]]) for p in points], singles, run.seeds)


def _mean_level(runs: list[dict[str, Any]]) -> float | None:
    """The runs' mean prior level at their end; None for a policy that does not learn."""
    levels = [r["prior_level"] for r in runs if r["prior_level"] is not None]
    return sum(levels) / len(levels) if levels else None


def _points(run: Replay) -> set[tuple[float, float | None]]:
    """The (cost weight, budget) points the replay runs."""
    opts = run.opts
    points = {(opts.cost_weight, opts.budget_usd)}
    points |= {(w, opts.budget_usd) for w in run.weights or ()}
    points |= {(opts.cost_weight, b) for b in run.budgets or ()}
    return points


def replay(opts: Options) -> dict[str, Any]:
    """Run the replay the options describe and return the report (the --json object)."""
    started = time.perf_counter()
    run = Replay(opts)
    outcomes = run.outcomes
    run.runs_planned = len(_points(run)) * opts.repeats
    main = run.point(opts.cost_weight, opts.budget_usd)
    best = _model(outcomes, best_single(outcomes, 0.0))
    oracle = score(outcomes, oracle_picks(outcomes, opts.cost_weight), opts.cost_weight)
    spec = (
        router_spec(outcomes.arms, opts, opts.cost_weight, run.prices, run.heads)
        if run.learning
        else None
    )
    report: dict[str, Any] = {
        "data": str(opts.data),
        "split": None if opts.split is None else {"fraction": opts.split, "skipped": run.head},
        "n": outcomes.n,
        "arms": list(outcomes.arms),
        "policy": opts.policy,
        "exploration": None if spec is None else spec.alpha,
        "prior": None
        if spec is None
        else {
            "quality": spec.prior_quality,
            "weight": spec.prior_weight,
            "level_at_end": _mean_level(main["runs"]),
        },
        "embedding_dim": None if spec is None else spec.embedding_dim,
        "context": None
        if spec is None
        else {
            "encoder": spec.encoder,
            "text_window_tokens": spec.text_window_tokens,
            "metadata_from": list(spec.metadata_keys),
            "pca_dim": spec.pca_dim,
            "knn_k": spec.knn_k,
            "dim": spec.dim,
            "encode_s": run.encode_s,
        },
        "feedback": opts.feedback,
        "arm_prices": opts.arm_prices,
        "cost_weight": opts.cost_weight,
        "latency_weight": opts.latency_weight,
        "energy_weight": opts.energy_weight,
        "max_latency_ms": opts.max_latency_ms,
        "budget_usd": opts.budget_usd,
        "refused_prompts": "not routed: quality 0, no cost",
        "seeds": run.seeds,
        **{k: main[k] for k in (*SUMMARY_KEYS, *MEASURE_KEYS) if k in main},
        "quality_vs_best_single": ratio(main["mean_quality"], best["mean_quality"]),
        "cost_vs_best_single": ratio(main["mean_cost_usd"], best["mean_cost_usd"]),
        "spread": main["spread"],
        "picks": main["picks"],
        "runs": main["runs"],
        "best_single": best,
        "oracle": {
            k: oracle[k] for k in ("mean_quality", "mean_cost_usd", *MEASURE_KEYS) if k in oracle
        },
        "single_models": [_model(outcomes, j) for j in range(len(outcomes.arms))],
        "warm_start": None,
        "server": None
        if opts.server is None
        else {"address": opts.server.address, "tenant": opts.server.tenant},
    }
    if run.warm_report is not None:
        report["warm_start"] = {
            "data": str(opts.data if opts.warm_start_head else opts.warm_start),
            "head": run.head if opts.warm_start_head else None,
            "records": run.warm_report.records,
            "events": run.warm_report.events,
            "skipped_records": run.warm_report.skipped_records,
            "skipped_entries": run.warm_report.skipped_entries,
        }
    curves = {opts.policy: main["regret_curve"]}
    for reference in REGRET_REFERENCES:
        curves.setdefault(reference, run.reference_regret(reference))
    report["regret_over_time"] = {
        "prompts": curve_steps(outcomes.n).tolist(),
        "cumulative_regret": curves,
    }
    if run.weights is not None:
        frontier = [_frontier_point(run.point(w, opts.budget_usd)) for w in run.weights]
        report.update(frontier_summary(outcomes, frontier, report["single_models"], best))
    singles = xy(report["single_models"])
    report["gain_vs_zero_router"] = _gain(run, main, singles)
    ceiling = routing_ceiling(
        outcomes.quality, outcomes.cost, outcomes.metadata, opts.metadata_from, singles
    )
    report["metadata_routing_ceiling"] = ceiling
    gain = report["gain_vs_zero_router"]
    for measured in (gain, *gain.get("runs", ())):
        measured["share_of_ceiling"] = share_of_ceiling(measured["mean"], ceiling["mean"])
    if run.budgets is not None:
        report["budget_frontier"] = [
            _frontier_point(run.point(opts.cost_weight, b)) for b in run.budgets
        ]
    report["wall_s"] = round(time.perf_counter() - started, 2)
    return report
