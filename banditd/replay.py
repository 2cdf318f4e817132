"""`banditd replay`: evaluate a routing policy online on full-information outcome data.

The data is the format of ../shared/data: one JSON object a line (optionally gzipped), each prompt
with every model's quality in [0, 1] and the real USD cost of its call. The replay streams it, in
file order and in process, through the engine code the server runs: the context pipeline
(``build_x``), the ranking step of Select (``router.rank_arms``, with the router's policy) and the
posterior's updates (``Posterior.apply``). At each prompt the policy picks one arm and then sees
only that arm's feedback: its quality as a score, or with ``--feedback thumbs`` a thumbs-up drawn
with probability = quality. Arms get zero prices and every event reports the call's real cost, so
the posterior learns each arm's mean cost per call, which is what cost-weighted choice uses.

Context (banditd.context.pipeline, as a router with the same settings builds it): the encoder's
embeddings of all prompts are computed first (``--embeddings-cache`` keeps them), then x is built
at each step, so the PCA is fitted and the kNN index grows along the stream (and from the
warm-start file first) exactly as in the server; ``--metadata-from`` sends record fields as
request metadata. The replay-only ``knn`` policy ranks arms by the kNN outcome features alone.

Reference policies (not learning, computed here): ``random`` (uniform), ``cheapest`` (the model
with the lowest mean cost), ``best-single`` (the model with the best mean quality - cost_weight x
mean cost over the whole file, in hindsight) and ``oracle`` (per prompt the best quality -
cost_weight x cost, cheapest on ties, in hindsight). Regret is against that oracle, in the same
utility, measured with the true quality (not the thumbs drawn).

Budget (``--budget-usd``): a learning policy is paced by the server's budget pacer
(``banditd.budget.pacer`` through ``rank_arms``, as Select does): the stream is one budget period,
prompt t arriving when t / n of it has passed, with the spend so far committed and the rest of the
budget available; the pacer's price is the least cost weight and arms below its threshold or over
what is left are masked (on_exhausted refuse). For every policy, a call whose real cost would
overrun what is left is not made: the prompt is *refused*, counts as quality 0 and costs nothing.
The total charged never exceeds the budget.

Frontier (``--sweep``): the same replay at a range of cost weights (by default 0 and a log grid
from 0.01 / the priciest model's mean cost to 1 / the cheapest's). AIQ as in RouterBench (Hu et
al. 2024): the area under the non-decreasing concave hull of the (mean cost, mean quality) points
over the cost range spanned by the single models, divided by that range; below the router's
cheapest point the curve is 0. A point on the hull between two cost weights is reached by
choosing between them at random, which is also how ``cost_at_quality`` (the mean cost needed for
90/95/98 % of the best single model's quality) is read off it. ``--sweep-budgets`` replays at a
range of budgets (by default from every prompt on the cheapest model to every prompt on the
priciest) at ``--cost-weight``. With ``--repeats N`` each number is the mean over seeds seed ..
seed + N - 1 and ``spread`` holds their sample standard deviations.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from banditd.budget.pacer import Pacing
from banditd.catalog import RouterState
from banditd.config import Settings
from banditd.context import input_tokens_estimate
from banditd.context.encoders import get_encoder
from banditd.context.metadata import MemoryVocabularyStore
from banditd.context.pipeline import ContextPipeline
from banditd.domain import (
    DEFAULT_EMBEDDING_DIM,
    DEFAULT_METADATA_SLOTS,
    DEFAULT_PCA_FIT_SAMPLES,
    ENCODER_DIMS,
    ENCODERS,
    POLICIES,
    ArmSpec,
    FeedbackEvent,
    FloatArray,
    RouterSpec,
)
from banditd.errors import BanditdError, InvalidArgument, ResourceExhausted
from banditd.policy import make_policy
from banditd.policy.base import IntArray
from banditd.posterior import Posterior, Prior
from banditd.router import BudgetCheck, rank_arms
from banditd.warm_start import WarmStartReport, offline_events, read_outcomes

REFERENCE_POLICIES = ("random", "cheapest", "best-single", "oracle")
# Learning policies of replay only: "knn" picks by the kNN outcome features alone (see _choose_knn).
REPLAY_POLICIES = ("knn",)
DEFAULT_KNN_K = 20
FEEDBACK = ("score", "thumbs")
MAX_PROMPT_CHARS: int = Settings.model_fields["max_prompt_chars"].default  # the server default
SWEEP_POINTS = 12
BUDGET_SWEEP_POINTS = 6
QUALITY_FRACTIONS = (0.9, 0.95, 0.98)
PROGRESS_EVERY_S = 2.0
REFUSED = -1  # the pick of a prompt the budget refused
THUMBS_STREAM = 1  # seeds the thumbs draws apart from the policy's own random numbers
AUTO: tuple[float, ...] = ()  # --sweep / --sweep-budgets without values: an automatic grid
SUMMARY_KEYS = ("mean_quality", "mean_cost_usd", "total_cost_usd", "refused", "cumulative_regret")


@dataclass(frozen=True)
class Outcomes:
    """A full-information outcome file in memory, in file order.

    quality, cost: shape (n, k), per prompt and arm (quality in [0, 1], USD per call).
    prompts, lines: length n, each prompt and its line number in the file.
    """

    path: Path
    arms: tuple[str, ...]
    prompts: tuple[str, ...]
    lines: tuple[int, ...]
    quality: FloatArray
    cost: FloatArray
    # Request metadata per prompt (record fields named by --metadata-from), length n.
    metadata: tuple[dict[str, str], ...] = ()

    @property
    def n(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True)
class Options:
    """One `banditd replay` invocation. sweep / sweep_budgets: None for none, AUTO for a grid."""

    data: Path
    policy: str = "linucb"
    cost_weight: float = 0.0
    budget_usd: float | None = None
    feedback: str = "score"
    warm_start: Path | None = None
    arms: tuple[str, ...] = ()
    seed: int = 0
    repeats: int = 1
    sweep: tuple[float, ...] | None = None
    sweep_budgets: tuple[float, ...] | None = None
    limit: int | None = None
    embedding_dim: int = DEFAULT_EMBEDDING_DIM
    exploration: float = 0.0
    max_prompt_chars: int = MAX_PROMPT_CHARS
    # Context features (banditd.context): record fields sent as request metadata, encoder, etc.
    metadata_from: tuple[str, ...] = ()
    metadata_slots: int = DEFAULT_METADATA_SLOTS
    encoder: str = "hashing"
    text_window_tokens: int = 0
    pca_dim: int = 0
    pca_fit_samples: int = DEFAULT_PCA_FIT_SAMPLES
    knn_k: int = 0
    embeddings_cache: Path | None = None


class Progress:
    """Progress lines on stderr, at most one per PROGRESS_EVERY_S (silent on short runs)."""

    def __init__(self) -> None:
        self._last = time.monotonic()

    def __call__(self, label: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY_S:
            self._last = now
            print(f"replay: {label}: {done}/{total} prompts", file=sys.stderr, flush=True)


def _bad(path: Path, line: int, problem: str) -> InvalidArgument:
    return InvalidArgument("data", f"{path}:{line}: {problem}")


def _number(value: object) -> float | None:
    """A finite JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _outcome_row(
    path: Path, line: int, models: dict[str, Any], arms: Sequence[str]
) -> tuple[list[float], list[float]]:
    """Quality and cost of every arm in one record, checked; two lists of length k."""
    quality, cost = [], []
    for arm in arms:
        outcome = models.get(arm)
        if not isinstance(outcome, dict):
            raise _bad(path, line, f"no outcome for model {arm!r}")
        q, c = _number(outcome.get("quality")), _number(outcome.get("cost_usd"))
        if q is None or not 0.0 <= q <= 1.0:
            got = outcome.get("quality")
            raise _bad(path, line, f"model {arm!r}: quality must be in [0, 1], got {got!r}")
        if c is None or c < 0.0:
            got = outcome.get("cost_usd")
            raise _bad(path, line, f"model {arm!r}: cost_usd must be a number >= 0, got {got!r}")
        quality.append(q)
        cost.append(c)
    return quality, cost


def record_metadata(record: dict[str, Any], fields: Sequence[str]) -> dict[str, str]:
    """The request metadata a calling service would send for a record: each named field's
    value as text (absent or null fields are left out)."""
    return {f: str(record[f]) for f in fields if record.get(f) is not None}


def load_outcomes(
    path: Path,
    arms: Sequence[str] = (),
    limit: int | None = None,
    metadata_from: Sequence[str] = (),
) -> Outcomes:
    """The first ``limit`` records of an outcome file, checked; bad records raise, by line.

    arms: the models to route between; by default those of the first record, in its order.
    Every record needs a prompt and a finite quality and cost for every arm.
    """
    prompts: list[str] = []
    lines: list[int] = []
    quality: list[list[float]] = []
    cost: list[list[float]] = []
    metadata: list[dict[str, str]] = []
    try:
        for record in itertools.islice(read_outcomes(path), limit):
            line = int(record["_line"])
            prompt, models = record.get("prompt"), record.get("models")
            if not isinstance(prompt, str) or not prompt.strip():
                raise _bad(path, line, "no prompt (a non-empty string)")
            if not isinstance(models, dict) or not models:
                raise _bad(path, line, "no models (an object of name: {quality, cost_usd})")
            arms = arms or tuple(models)
            q, c = _outcome_row(path, line, models, arms)
            prompts.append(prompt)
            lines.append(line)
            metadata.append(record_metadata(record, metadata_from))
            quality.append(q)
            cost.append(c)
    except (EOFError, UnicodeDecodeError) as exc:
        problem = f"unreadable after {len(lines)} records ({exc})"
        raise InvalidArgument("data", f"{path}: {problem}") from exc
    if not prompts:
        raise InvalidArgument("data", f"{path}:1: no records (the file is empty)")
    return Outcomes(
        path,
        tuple(arms),
        tuple(prompts),
        tuple(lines),
        np.array(quality),
        np.array(cost),
        tuple(metadata),
    )


def router_spec(arms: Sequence[str], opts: Options, cost_weight: float) -> RouterSpec:
    """The router a replay runs: the file's models as zero-priced arms, the options' policy."""
    return RouterSpec(
        tenant="replay",
        name="replay",
        arms=tuple(ArmSpec(name, 0.0, 0.0) for name in arms),
        policy=opts.policy if opts.policy in POLICIES else "linucb",
        exploration=opts.exploration,
        default_cost_weight=cost_weight,
        embedding_dim=ENCODER_DIMS.get(opts.encoder, opts.embedding_dim),
        encoder=opts.encoder,
        metadata_keys=opts.metadata_from,
        metadata_slots=opts.metadata_slots,
        pca_dim=opts.pca_dim,
        pca_fit_samples=opts.pca_fit_samples,
        knn_k=opts.knn_k or (DEFAULT_KNN_K if opts.policy == "knn" else 0),
        text_window_tokens=opts.text_window_tokens,
    )


def pipeline_of(spec: RouterSpec, max_prompt_chars: int) -> ContextPipeline:
    """The context pipeline a server builds for the router, with an in-memory vocabulary."""
    encoder = get_encoder(spec.encoder, spec.embedding_dim)
    return ContextPipeline(
        spec, encoder, MemoryVocabularyStore(), max_prompt_chars=max_prompt_chars
    )


ENCODE_CHUNK = 256


def embeddings(
    pipeline: ContextPipeline,
    prompts: Sequence[str],
    label: str,
    progress: Progress,
    cache: Path | None = None,
) -> FloatArray:
    """The encoder's raw embedding of each prompt, shape (n, embedding_dim); with a cache
    folder, kept there by a hash of the prompts and the encoder settings (a sweep of other
    options reuses them)."""
    spec = pipeline.spec
    path = None
    if cache is not None:
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{spec.encoder}:{spec.embedding_dim}:{spec.text_window_tokens}".encode())
        for prompt in prompts:
            digest.update(prompt.encode() + b"\x00")
        path = cache / f"{digest.hexdigest()}.npy"
        if path.exists():
            return np.asarray(np.load(path), dtype=np.float64)
    out = _encode(pipeline, prompts, label, progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, out)
    return out


def _encode(
    pipeline: ContextPipeline, prompts: Sequence[str], label: str, progress: Progress
) -> FloatArray:
    out = np.empty((len(prompts), pipeline.spec.embedding_dim))
    for start in range(0, len(prompts), ENCODE_CHUNK):
        chunk = prompts[start : start + ENCODE_CHUNK]
        out[start : start + len(chunk)] = pipeline.embed_now(chunk)
        progress(label, start + len(chunk), len(prompts))
    return out


def contexts(pipeline: ContextPipeline, outcomes: Outcomes, raw: FloatArray) -> FloatArray:
    """x of each prompt in stream order without learning (no kNN features), shape (n, dim)."""
    return np.stack([pipeline.build_now(raw[t], outcomes.metadata[t]) for t in range(outcomes.n)])


def fresh_posterior(spec: RouterSpec) -> Posterior:
    """The posterior of a router with no events yet, every arm at its prior."""
    posterior = Posterior.empty(Prior.of(spec), spec.prior_output_tokens)
    for arm in spec.arms:
        posterior.index(arm.name)
    return posterior


def warm_posterior(
    spec: RouterSpec,
    path: Path,
    max_prompt_chars: int,
    pipeline: ContextPipeline | None = None,
    metadata_from: Sequence[str] = (),
    cache: Path | None = None,
) -> tuple[Posterior, WarmStartReport]:
    """The posterior after `banditd warm-start` on ``path``: its offline events in order.

    With a pipeline, x comes from it (the records' metadata fields included), and its PCA
    samples and kNN index take in the warm-start data too."""
    posterior, report = fresh_posterior(spec), WarmStartReport()
    records: list[dict[str, Any]] = list(read_outcomes(path))
    featurise = None
    if pipeline is not None:
        good = [r for r in records if isinstance(r.get("prompt"), str) and r["prompt"].strip()]
        texts = [r["prompt"] for r in good]
        vecs = embeddings(pipeline, texts, "encoding warm-start prompts", Progress(), cache)
        raw = {id(r): v for r, v in zip(good, vecs, strict=True)}

        def featurise(record: dict[str, Any]) -> FloatArray:
            return pipeline.build_now(raw[id(record)], record_metadata(record, metadata_from))

    events = offline_events(
        spec, 0, records, report, max_prompt_chars=max_prompt_chars, featurise=featurise
    )
    for event_id, event in enumerate(events, start=1):
        event = dataclasses.replace(event, event_id=event_id)
        posterior.apply(event)
        if pipeline is not None:
            pipeline.observe(event)
    if not report.events:
        raise InvalidArgument("warm_start", f"{path}: no outcomes for any of the replay's arms")
    return posterior, report


class Ledger:
    """Spend against an optional budget over a stream of n prompts."""

    def __init__(self, budget_usd: float | None, n: int) -> None:
        self.budget_usd, self.n, self.spent = budget_usd, n, 0.0

    def check(self, t: int) -> BudgetCheck | None:
        """The budget as the pacer sees it at prompt t (t / n of the period passed)."""
        if self.budget_usd is None:
            return None
        pacing = Pacing(
            limit_usd=self.budget_usd,
            committed_usd=self.spent,
            elapsed=t / self.n,
            available_usd=self.budget_usd - self.spent,
        )
        return BudgetCheck([pacing], refuse=True, scope="the replay")

    def even_share(self, t: int) -> float | None:
        """A cost cap for prompt t (the replay-only knn policy, which has no pacer): an even
        share of what is left over the prompts left."""
        if self.budget_usd is None:
            return None
        return (self.budget_usd - self.spent) / (self.n - t)

    def charge(self, cost_usd: float) -> bool:
        """Charge a call's real cost; False (nothing charged) when it would overrun the budget."""
        if self.budget_usd is not None and self.spent + cost_usd > self.budget_usd:
            return False
        self.spent += cost_usd
        return True


def _choose(
    state: RouterState,
    x: FloatArray,
    prompt: str,
    budget: BudgetCheck | None,
    rng: np.random.Generator,
) -> str | None:
    """The arm Select answers for x (shape (dim,)) under the budget's pacer; None when the
    budget is exhausted (no arm's expected cost fits what is left)."""
    try:
        return rank_arms(state, x, prompt=prompt, rng=rng, budget=budget).ranking[0].arm
    except ResourceExhausted:
        return None


def _choose_knn(
    state: RouterState,
    x: FloatArray,
    prompt: str,
    cap: float | None,
    alpha: float,
    cost_weight: float,
) -> str:
    """The replay-only ``knn`` policy: per arm, the neighbours' weighted mean reward shrunk to
    the prior by one pseudo-count, plus alpha / sqrt(neighbours + 1), minus cost_weight x the
    arm's expected cost; under a pacing cap only arms whose expected cost fits (else the
    cheapest). x: shape (dim,), its last 2 n_arms values the kNN features."""
    spec, posterior = state.spec, state.posterior
    feats = x[-spec.knn_dim :]
    n = feats[1::2] * spec.knn_k
    quality = (feats[0::2] * n + spec.prior_quality) / (n + 1.0)
    input_tokens = input_tokens_estimate(prompt) or posterior.expected_input_tokens()
    costs = np.array(
        [posterior.expected_cost_usd(posterior.index(a.name), a, input_tokens) for a in spec.arms]
    )
    utility = quality + alpha / np.sqrt(n + 1.0) - cost_weight * costs
    if cap is not None:
        cap = max(cap, float(costs.min()))
        utility = np.where(costs <= cap, utility, -np.inf)
    return spec.arms[int(np.argmax(utility))].name


def _event(event_id: int, arm: str, x: FloatArray, reward: float, cost_usd: float) -> FeedbackEvent:
    """The feedback event of one served prompt: its reward and real cost, no token counts."""
    return FeedbackEvent(
        event_id=event_id,
        router_id=0,
        decision_id=f"replay-{event_id}",
        arm=arm,
        x=x,
        reward=reward,
        cost_usd=cost_usd,
        input_tokens=None,
        output_tokens=None,
        latency_ms=None,
        error=False,
        created_at=float(event_id),
        cost_reported=True,
    )


def learn_online(
    spec: RouterSpec,
    outcomes: Outcomes,
    raw: FloatArray,
    *,
    pipeline: ContextPipeline,
    posterior: Posterior,
    seed: int,
    feedback: str,
    budget_usd: float | None,
    progress: Callable[[int], None],
    knn_policy: bool = False,
) -> IntArray:
    """Route the stream with the router's policy, learning online; the arm (column of
    outcomes) per prompt, REFUSED where the budget refused it, shape (n,). raw: the encoder's
    embedding of each prompt, (n, spec.embedding_dim); x is built from it at each step, so PCA
    fitting and kNN features follow the stream as they would in the server."""
    state = RouterState(0, spec, make_policy(spec.policy, spec.alpha), posterior)
    rng = np.random.default_rng(seed)
    thumbs = np.random.default_rng([seed, THUMBS_STREAM]).random(outcomes.n)
    column = {arm: j for j, arm in enumerate(outcomes.arms)}
    ledger = Ledger(budget_usd, outcomes.n)
    picks = np.full(outcomes.n, REFUSED, dtype=np.int64)
    event_id = posterior.last_event_id
    metadata = outcomes.metadata or ({},) * outcomes.n
    for t, prompt in enumerate(outcomes.prompts):
        x = pipeline.build_now(raw[t], metadata[t])
        arm: str | None
        if knn_policy:
            weight = spec.default_cost_weight
            arm = _choose_knn(state, x, prompt, ledger.even_share(t), spec.alpha, weight)
        else:
            arm = _choose(state, x, prompt, ledger.check(t), rng)
        if arm is None:
            progress(t + 1)
            continue
        j = column[arm]
        quality, cost = float(outcomes.quality[t, j]), float(outcomes.cost[t, j])
        if ledger.charge(cost):
            picks[t] = j
            reward = float(thumbs[t] < quality) if feedback == "thumbs" else quality
            event_id += 1
            event = _event(event_id, arm, x, reward, cost)
            posterior.apply(event)
            pipeline.observe(event)
        progress(t + 1)
    return picks


def _best(utility: FloatArray, cost: FloatArray) -> IntArray:
    """Index of the best utility along the last axis, cheapest on ties; shapes (..., k) -> (...)."""
    order: IntArray = np.lexsort((cost, -utility), axis=-1)
    return np.asarray(order[..., 0], dtype=np.int64)


def oracle_picks(outcomes: Outcomes, cost_weight: float) -> IntArray:
    """Per prompt the arm of best quality - cost_weight x cost (cheapest on ties), shape (n,)."""
    return _best(outcomes.quality - cost_weight * outcomes.cost, outcomes.cost)


def best_single(outcomes: Outcomes, cost_weight: float) -> int:
    """The arm of best mean quality - cost_weight x mean cost over the file (cheapest on ties)."""
    quality, cost = outcomes.quality.mean(axis=0), outcomes.cost.mean(axis=0)
    return int(_best(quality - cost_weight * cost, cost))


def reference_picks(policy: str, outcomes: Outcomes, cost_weight: float, seed: int) -> IntArray:
    """The arm per prompt of a reference policy, shape (n,)."""
    n, k = outcomes.quality.shape
    if policy == "random":
        return np.asarray(np.random.default_rng(seed).integers(k, size=n), dtype=np.int64)
    if policy == "cheapest":
        return np.full(n, int(np.argmin(outcomes.cost.mean(axis=0))), dtype=np.int64)
    if policy == "best-single":
        return np.full(n, best_single(outcomes, cost_weight), dtype=np.int64)
    return oracle_picks(outcomes, cost_weight)


def gate(picks: IntArray, outcomes: Outcomes, budget_usd: float | None) -> IntArray:
    """The picks a budget lets through, in order; REFUSED where a call would overrun it.
    picks: (n,) -> (n,)."""
    ledger = Ledger(budget_usd, outcomes.n)
    return np.array(
        [j if ledger.charge(float(outcomes.cost[t, j])) else REFUSED for t, j in enumerate(picks)],
        dtype=np.int64,
    )


def score(outcomes: Outcomes, picks: IntArray, cost_weight: float) -> dict[str, float]:
    """Summary of one run from its picks (shape (n,), REFUSED: quality 0, no cost)."""
    served = picks != REFUSED
    rows, cols = np.arange(outcomes.n), np.where(served, picks, 0)
    quality = np.where(served, outcomes.quality[rows, cols], 0.0)
    cost = np.where(served, outcomes.cost[rows, cols], 0.0)
    best = (outcomes.quality - cost_weight * outcomes.cost).max(axis=1)
    return {
        "mean_quality": float(quality.mean()),
        "mean_cost_usd": float(cost.mean()),
        "total_cost_usd": float(cost.sum()),
        "refused": int(np.count_nonzero(~served)),
        "cumulative_regret": float((best - (quality - cost_weight * cost)).sum()),
    }


def _model(outcomes: Outcomes, j: int) -> dict[str, Any]:
    return {
        "model": outcomes.arms[j],
        "mean_quality": float(outcomes.quality[:, j].mean()),
        "mean_cost_usd": float(outcomes.cost[:, j].mean()),
    }


def upper_hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-decreasing concave hull of (cost, quality) points, by increasing cost."""
    pareto: list[tuple[float, float]] = []
    for cost, quality in sorted(points, key=lambda p: (p[0], -p[1])):
        if not pareto or quality > pareto[-1][1]:
            pareto.append((cost, quality))
    hull: list[tuple[float, float]] = []
    for p in pareto:
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            if (x1 - x0) * (p[1] - y0) - (y1 - y0) * (p[0] - x0) < 0:
                break
            hull.pop()
        hull.append(p)
    return hull


def aiq(points: Sequence[tuple[float, float]], low: float, high: float) -> float | None:
    """RouterBench's AIQ of (cost, quality) points over costs [low, high]: the mean of the hull's
    quality over that range, 0 below its cheapest point; None for an empty range."""
    if not high > low:
        return None
    hull = np.array(upper_hull(points))
    start = max(low, float(hull[0, 0]))
    if start >= high:
        return 0.0
    knots = np.unique(np.clip(np.concatenate([[start, high], hull[:, 0]]), start, high))
    area = np.trapezoid(np.interp(knots, hull[:, 0], hull[:, 1]), knots)
    return float(area) / (high - low)


def cost_at_quality(points: Sequence[tuple[float, float]], target: float) -> float | None:
    """The least mean cost at which the hull of (cost, quality) points reaches ``target``."""
    hull = upper_hull(points)
    if hull[0][1] >= target:
        return hull[0][0]
    for (c0, q0), (c1, q1) in itertools.pairwise(hull):
        if q1 >= target:
            return c0 + (c1 - c0) * (target - q0) / (q1 - q0)
    return None


def weight_grid(outcomes: Outcomes) -> tuple[float, ...]:
    """0 and a log grid of cost weights: from the weight at which the priciest model's mean cost
    is worth 0.01 of quality to the one at which the cheapest model's is worth 1."""
    cost = outcomes.cost.mean(axis=0)
    low, high = 0.01 / max(float(cost.max()), 1e-12), 1.0 / max(float(cost.min()), 1e-12)
    return (0.0, *(float(f"{w:.3g}") for w in np.geomspace(low, high, SWEEP_POINTS - 1)))


def budget_grid(outcomes: Outcomes) -> tuple[float, ...]:
    """Budgets from every prompt on the cheapest model to every prompt on the priciest."""
    total = outcomes.cost.mean(axis=0) * outcomes.n
    grid = np.geomspace(max(float(total.min()), 1e-9), float(total.max()), BUDGET_SWEEP_POINTS)
    return tuple(float(f"{b:.3g}") for b in grid)


class Replay:
    """One invocation: the outcomes, the contexts and warm start (for a learning policy), and
    the runs of each (cost weight, budget) over the seeds."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.progress = Progress()
        self.outcomes = load_outcomes(opts.data, opts.arms, opts.limit, opts.metadata_from)
        self.learning = opts.policy in POLICIES or opts.policy in REPLAY_POLICIES
        self.warm_report: WarmStartReport | None = None
        self.raw = np.zeros((self.outcomes.n, 0))
        self.prior: Posterior | None = None
        self.pipeline: ContextPipeline | None = None
        self.encode_s = 0.0
        if self.learning:
            spec = router_spec(self.outcomes.arms, opts, opts.cost_weight)
            self.pipeline = pipeline_of(spec, opts.max_prompt_chars)
            started = time.perf_counter()
            try:
                self.raw = embeddings(
                    self.pipeline,
                    self.outcomes.prompts,
                    "encoding prompts",
                    self.progress,
                    opts.embeddings_cache,
                )
            except InvalidArgument as exc:
                raise InvalidArgument("data", f"{self.outcomes.path}: {exc.message}") from exc
            self.encode_s = round(time.perf_counter() - started, 2)
            self.prior = fresh_posterior(spec)
            if opts.warm_start is not None:
                self.prior, self.warm_report = warm_posterior(
                    spec,
                    opts.warm_start,
                    opts.max_prompt_chars,
                    self.pipeline,
                    opts.metadata_from,
                    opts.embeddings_cache,
                )
        self.points: dict[tuple[float, float | None], dict[str, Any]] = {}

    @property
    def seeds(self) -> list[int]:
        return [self.opts.seed + r for r in range(self.opts.repeats)]

    def picks(self, seed: int, cost_weight: float, budget_usd: float | None) -> IntArray:
        """One run's arm per prompt (REFUSED where the budget refused), shape (n,)."""
        opts, outcomes = self.opts, self.outcomes
        if self.prior is None:
            chosen = reference_picks(opts.policy, outcomes, cost_weight, seed)
            return gate(chosen, outcomes, budget_usd)
        budget = "" if budget_usd is None else f" budget ${budget_usd:g}"
        label = f"{opts.policy} cost weight {cost_weight:g}{budget} seed {seed}"
        assert self.pipeline is not None
        return learn_online(
            router_spec(outcomes.arms, opts, cost_weight),
            outcomes,
            self.raw,
            pipeline=self.pipeline.fork(),
            posterior=copy.deepcopy(self.prior),
            seed=seed,
            feedback=opts.feedback,
            budget_usd=budget_usd,
            progress=lambda done: self.progress(label, done, outcomes.n),
            knn_policy=opts.policy == "knn",
        )

    def point(self, cost_weight: float, budget_usd: float | None) -> dict[str, Any]:
        """Mean and spread (sample standard deviation) over the seeds of each summary value,
        with each arm's share of the prompts and the per-seed runs."""
        key = (cost_weight, budget_usd)
        if key not in self.points:
            runs, shares = [], np.zeros(len(self.outcomes.arms))
            for seed in self.seeds:
                picks = self.picks(seed, cost_weight, budget_usd)
                runs.append({"seed": seed, **score(self.outcomes, picks, cost_weight)})
                shares += np.bincount(picks[picks != REFUSED], minlength=len(shares))
            table = np.array([[run[k] for k in SUMMARY_KEYS] for run in runs])
            spread = table.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(len(SUMMARY_KEYS))
            self.points[key] = {
                "cost_weight": cost_weight,
                "budget_usd": budget_usd,
                **dict(zip(SUMMARY_KEYS, table.mean(axis=0).tolist(), strict=True)),
                "spread": dict(zip(SUMMARY_KEYS, spread.tolist(), strict=True)),
                "picks": {
                    arm: round(float(s) / (len(runs) * self.outcomes.n), 4)
                    for arm, s in zip(self.outcomes.arms, shares, strict=True)
                },
                "runs": runs,
            }
        return self.points[key]


def _ratio(value: float, reference: float) -> float | None:
    return value / reference if reference else None


def _frontier_point(point: dict[str, Any]) -> dict[str, Any]:
    keys = ("cost_weight", "budget_usd", "mean_quality", "mean_cost_usd", "refused", "spread")
    return {k: point[k] for k in keys}


def _sweep_report(run: Replay, best: dict[str, Any]) -> dict[str, Any]:
    """The cost-weight frontier with its AIQ, the oracle's and the single models', and the cost
    of fractions of the best single model's quality read off the frontier's hull."""
    opts, outcomes = run.opts, run.outcomes
    weights = opts.sweep or weight_grid(outcomes)
    frontier = [_frontier_point(run.point(w, opts.budget_usd)) for w in weights]
    oracle = [{"cost_weight": w, **score(outcomes, oracle_picks(outcomes, w), w)} for w in weights]
    singles = [_model(outcomes, j) for j in range(len(outcomes.arms))]
    low = min(m["mean_cost_usd"] for m in singles)
    high = max(m["mean_cost_usd"] for m in singles)

    def xy(rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
        return [(r["mean_cost_usd"], r["mean_quality"]) for r in rows]

    at_quality = []
    for fraction in QUALITY_FRACTIONS:
        cost = cost_at_quality(xy(frontier), fraction * best["mean_quality"])
        at_quality.append(
            {
                "fraction_of_best_single": fraction,
                "quality": fraction * best["mean_quality"],
                "mean_cost_usd": cost,
                "cost_vs_best_single": None
                if cost is None
                else _ratio(cost, best["mean_cost_usd"]),
            }
        )
    return {
        "frontier": frontier,
        "aiq": aiq(xy(frontier), low, high),
        "aiq_single_models": aiq(xy(singles), low, high),
        "aiq_oracle": aiq(xy(oracle), low, high),
        "oracle_frontier": [
            {k: o[k] for k in ("cost_weight", "mean_quality", "mean_cost_usd")} for o in oracle
        ],
        "cost_at_quality": at_quality,
    }


def replay(opts: Options) -> dict[str, Any]:
    """Run the replay the options describe and return the report (the --json object)."""
    started = time.perf_counter()
    run = Replay(opts)
    outcomes = run.outcomes
    main = run.point(opts.cost_weight, opts.budget_usd)
    best = _model(outcomes, best_single(outcomes, 0.0))
    oracle = score(outcomes, oracle_picks(outcomes, opts.cost_weight), opts.cost_weight)
    spec = router_spec(outcomes.arms, opts, opts.cost_weight) if run.learning else None
    report: dict[str, Any] = {
        "data": str(opts.data),
        "n": outcomes.n,
        "arms": list(outcomes.arms),
        "policy": opts.policy,
        "exploration": None if spec is None else spec.alpha,
        "embedding_dim": None if spec is None else spec.embedding_dim,
        "context": None
        if spec is None or run.pipeline is None
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
        "cost_weight": opts.cost_weight,
        "budget_usd": opts.budget_usd,
        "refused_prompts": "not routed: quality 0, no cost",
        "seeds": run.seeds,
        **{k: main[k] for k in SUMMARY_KEYS},
        "quality_vs_best_single": _ratio(main["mean_quality"], best["mean_quality"]),
        "cost_vs_best_single": _ratio(main["mean_cost_usd"], best["mean_cost_usd"]),
        "spread": main["spread"],
        "picks": main["picks"],
        "runs": main["runs"],
        "best_single": best,
        "oracle": {
            "mean_quality": oracle["mean_quality"],
            "mean_cost_usd": oracle["mean_cost_usd"],
        },
        "single_models": [_model(outcomes, j) for j in range(len(outcomes.arms))],
        "warm_start": None,
    }
    if run.warm_report is not None:
        report["warm_start"] = {
            "data": str(opts.warm_start),
            "records": run.warm_report.records,
            "events": run.warm_report.events,
            "skipped_records": run.warm_report.skipped_records,
        }
    if opts.sweep is not None:
        report.update(_sweep_report(run, best))
    if opts.sweep_budgets is not None:
        budgets = opts.sweep_budgets or budget_grid(outcomes)
        report["budget_frontier"] = [
            _frontier_point(run.point(opts.cost_weight, b)) for b in budgets
        ]
    report["wall_s"] = round(time.perf_counter() - started, 2)
    return report


def _pm(point: dict[str, Any], key: str, fmt: str) -> str:
    """A summary value as 'mean ± spread' (just the mean when the spread rounds to 0)."""
    mean, spread = format(point[key], fmt), format(point["spread"][key], fmt)
    return mean if float(spread) == 0 else f"{mean} ± {spread}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _summary_lines(r: dict[str, Any]) -> list[str]:
    """The run against the best single model and the oracle."""
    best = r["best_single"]
    knobs = "" if r["exploration"] is None else f"exploration {r['exploration']:g}, "
    budget = "none" if r["budget_usd"] is None else f"${r['budget_usd']:g}"
    refused = f"; {r['refused']:g} prompts refused by the budget" if r["refused"] else ""
    return [
        f"banditd replay of {r['data']}: {r['n']} prompts, {len(r['arms'])} models",
        f"policy {r['policy']} ({knobs}feedback {r['feedback']}), cost weight "
        f"{r['cost_weight']:g}, budget {budget}, seeds {r['seeds'][0]}..{r['seeds'][-1]}",
        "",
        f"{'':<28}{'mean quality':>22}{'mean cost $':>26}{'total cost $':>20}{'regret':>18}",
        f"{r['policy']:<28}{_pm(r, 'mean_quality', '.4f'):>22}{_pm(r, 'mean_cost_usd', '.6f'):>26}"
        f"{_pm(r, 'total_cost_usd', '.3f'):>20}{_pm(r, 'cumulative_regret', '.1f'):>18}",
        f"{'best single: ' + best['model']:<28}{best['mean_quality']:>22.4f}"
        f"{best['mean_cost_usd']:>26.6f}",
        f"{'oracle':<28}{r['oracle']['mean_quality']:>22.4f}{r['oracle']['mean_cost_usd']:>26.6f}",
        "",
        f"{_pct(r['quality_vs_best_single'])} of the best single model's quality at "
        f"{_pct(r['cost_vs_best_single'])} of its cost{refused}",
        "picks: " + ", ".join(f"{a} {s:.1%}" for a, s in r["picks"].items() if s),
    ]


def _frontier_lines(r: dict[str, Any]) -> list[str]:
    """The cost-weight frontier, its AIQ and the cost of fractions of the best quality."""
    lines = ["", f"{'cost weight':>12}{'mean quality':>22}{'mean cost $':>26}"]
    lines += [
        f"{p['cost_weight']:>12g}{_pm(p, 'mean_quality', '.4f'):>22}"
        f"{_pm(p, 'mean_cost_usd', '.6f'):>26}"
        for p in r["frontier"]
    ]
    policy, singles, oracle = (
        "n/a" if a is None else f"{a:.4f}"
        for a in (r["aiq"], r["aiq_single_models"], r["aiq_oracle"])
    )
    lines.append(f"AIQ: {r['policy']} {policy}, single models {singles}, oracle {oracle}")
    for q in r["cost_at_quality"]:
        cost = q["mean_cost_usd"]
        reached = (
            "not reached"
            if cost is None
            else f"${cost:.6f} a prompt ({_pct(q['cost_vs_best_single'])} of its cost)"
        )
        lines.append(
            f"{q['fraction_of_best_single']:.0%} of {r['best_single']['model']}'s quality: "
            + reached
        )
    return lines


def _budget_lines(r: dict[str, Any]) -> list[str]:
    lines = ["", f"{'budget $':>12}{'mean quality':>22}{'mean cost $':>26}{'refused':>12}"]
    return lines + [
        f"{p['budget_usd']:>12g}{_pm(p, 'mean_quality', '.4f'):>22}"
        f"{_pm(p, 'mean_cost_usd', '.6f'):>26}{p['refused']:>12g}"
        for p in r["budget_frontier"]
    ]


def render_text(report: dict[str, Any]) -> str:
    """The report as tables for people."""
    lines = _summary_lines(report)
    if "frontier" in report:
        lines += _frontier_lines(report)
    if "budget_frontier" in report:
        lines += _budget_lines(report)
    lines.append(f"wall time {report['wall_s']} s")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Quality against mean cost (log): each single model, the oracle and the policy (their
    frontiers with --sweep, the budget frontier with --sweep-budgets). Needs matplotlib."""
    from matplotlib.figure import Figure  # type: ignore[import-not-found, unused-ignore]

    fig = Figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    ax.set_xscale("log")
    for m in report["single_models"]:
        ax.scatter(m["mean_cost_usd"], m["mean_quality"], color="grey", s=18)
        point = (m["mean_cost_usd"], m["mean_quality"])
        ax.annotate(m["model"], point, xytext=(4, 2), textcoords="offset points", fontsize=7)
    curves = [("oracle", report.get("oracle_frontier", [report["oracle"]]), "black")]
    curves.append((report["policy"], report.get("frontier", [report]), "tab:blue"))
    if "budget_frontier" in report:
        curves.append((f"{report['policy']}, budgets", report["budget_frontier"], "tab:orange"))
    for label, points, color in curves:
        kept = sorted(
            (p for p in points if p["mean_cost_usd"] > 0), key=lambda p: p["mean_cost_usd"]
        )
        ax.errorbar(
            [p["mean_cost_usd"] for p in kept],
            [p["mean_quality"] for p in kept],
            yerr=[p.get("spread", {}).get("mean_quality", 0.0) for p in kept],
            marker="o",
            markersize=4,
            color=color,
            label=label,
            capsize=2,
        )
    ax.set_xlabel("mean cost per prompt (USD, log scale)")
    ax.set_ylabel("mean quality")
    ax.set_title(f"{Path(report['data']).name}: {report['n']} prompts", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def _floats(text: str) -> tuple[float, ...]:
    """A comma list of numbers >= 0."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas: {text!r}"
        ) from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers >= 0: {text!r}")
    return values


def _non_negative(text: str) -> float:
    """A number >= 0."""
    values = _floats(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one number, got {text!r}")
    return values[0]


def _int_from(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def options(args: argparse.Namespace) -> Options:
    """The replay options of parsed command-line arguments."""
    return Options(
        data=args.data,
        policy=args.policy,
        cost_weight=args.cost_weight,
        budget_usd=args.budget_usd,
        feedback=args.feedback,
        warm_start=args.warm_start,
        arms=tuple(a.strip() for a in args.arms.split(",") if a.strip()) if args.arms else (),
        seed=args.seed,
        repeats=args.repeats,
        sweep=args.sweep,
        sweep_budgets=args.sweep_budgets,
        limit=args.limit,
        embedding_dim=args.embedding_dim,
        exploration=args.exploration,
        metadata_from=tuple(f.strip() for f in (args.metadata_from or "").split(",") if f.strip()),
        metadata_slots=args.metadata_slots,
        encoder=args.encoder,
        text_window_tokens=args.text_window,
        pca_dim=args.pca_dim,
        pca_fit_samples=args.pca_fit_samples,
        knn_k=args.knn_k,
        embeddings_cache=args.embeddings_cache,
    )


def run(args: argparse.Namespace) -> int:
    """`banditd replay`: print the report (tables, or one JSON object with --json)."""
    try:
        if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
            raise InvalidArgument("plot", "needs matplotlib (pip install matplotlib)")
        report = replay(options(args))
        if args.plot is not None:
            plot(report, args.plot)
    except (BanditdError, OSError) as exc:
        print(f"banditd replay: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report) if args.json else render_text(report))
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `replay` to a command's subparsers; the parsed args carry func=run."""
    p = subparsers.add_parser(
        "replay",
        help="evaluate a policy online on full-information outcome data (offline, in process)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="outcome file (JSONL, optionally .gz)")
    p.add_argument(
        "--policy",
        choices=(*POLICIES, *REPLAY_POLICIES, *REFERENCE_POLICIES),
        default="linucb",
        help="(linucb) random, cheapest, best-single and oracle are references, not learning",
    )
    p.add_argument("--cost-weight", type=_non_negative, default=0.0, help="USD -> quality (0)")
    p.add_argument("--budget-usd", type=_non_negative, help="total spend allowed (none)")
    p.add_argument("--feedback", choices=FEEDBACK, default="score", help="(score)")
    p.add_argument(
        "--warm-start", type=Path, help="outcome file to fit priors on first (learning policies)"
    )
    p.add_argument("--arms", help="comma list of models to route between (all of the file's)")
    p.add_argument("--seed", type=_int_from(0), default=0, help="first seed (0)")
    p.add_argument("--repeats", type=_int_from(1), default=1, help="seeds to average over (1)")
    p.add_argument(
        "--sweep",
        type=_floats,
        nargs="?",
        const=AUTO,
        metavar="WEIGHTS",
        help="frontier over cost weights (comma list; default 0 and a log grid) with AIQ",
    )
    p.add_argument(
        "--sweep-budgets",
        type=_floats,
        nargs="?",
        const=AUTO,
        metavar="USD",
        help="frontier over budgets (comma list; default a log grid) at --cost-weight",
    )
    p.add_argument("--limit", type=_int_from(1), help="replay only the first N records")
    p.add_argument(
        "--embedding-dim", type=_int_from(1), default=DEFAULT_EMBEDDING_DIM, help="(%(default)s)"
    )
    p.add_argument(
        "--exploration", type=_non_negative, default=0.0, help="policy parameter (0: its default)"
    )
    p.add_argument(
        "--metadata-from",
        metavar="FIELD[,FIELD]",
        help="send these record fields (e.g. task) as request metadata the router declares",
    )
    p.add_argument(
        "--metadata-slots", type=_int_from(2), default=DEFAULT_METADATA_SLOTS, help="(%(default)s)"
    )
    p.add_argument("--encoder", choices=ENCODERS, default="hashing", help="text encoder (hashing)")
    p.add_argument(
        "--text-window",
        type=_int_from(0),
        default=0,
        metavar="TOKENS",
        help="encode only the last N tokens of each prompt (0: whole prompt)",
    )
    p.add_argument("--pca-dim", type=_int_from(0), default=0, help="PCA size (0: none)")
    p.add_argument(
        "--pca-fit-samples",
        type=_int_from(1),
        default=DEFAULT_PCA_FIT_SAMPLES,
        help="(%(default)s)",
    )
    p.add_argument("--knn-k", type=_int_from(0), default=0, help="kNN outcome features (0: off)")
    p.add_argument(
        "--embeddings-cache",
        type=Path,
        metavar="DIR",
        help="keep the prompts' embeddings here, reused by later runs with the same encoder",
    )
    p.add_argument("--plot", type=Path, help="write a quality-cost plot (PNG; needs matplotlib)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)
