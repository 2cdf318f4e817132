"""What a learning replay starts from: the router it runs, its context pipeline with the
prompts' embeddings, and its state (fresh, or warm-started from an outcome file)."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from banditd.context import input_tokens_estimate
from banditd.context.encoders import get_encoder
from banditd.context.metadata import MemoryVocabularyStore
from banditd.context.pipeline import ContextPipeline
from banditd.domain import (
    DEFAULT_PRIOR_OUTPUT_TOKENS,
    ENCODER_DIMS,
    ROUTER_POLICIES,
    ArmSpec,
    FloatArray,
    RouterSpec,
)
from banditd.domain.ceilings import HARD_MAX_ENERGY_PER_MTOK, HARD_MAX_LATENCY_MS
from banditd.errors import InvalidArgument
from banditd.evaluation.replay.data import Outcomes
from banditd.evaluation.replay.options import Options
from banditd.evaluation.warm_start import WarmStartReport, read_outcomes, warm_events
from banditd.policy.knn import DEFAULT_K
from banditd.progress import Progress
from banditd.state.fold import RouterState, fold


def arm_prices(outcomes: Outcomes) -> dict[str, float]:
    """A list price per million tokens (input and output alike) for each of the file's models,
    such that a prompt of the file's mean length with the router's prior output tokens costs the
    model's mean cost per call in the file: what an operator knows of a model before routing
    to it (its price), on the file's own scale."""
    tokens = float(np.mean([input_tokens_estimate(p) or 0.0 for p in outcomes.prompts]))
    per_call = outcomes.cost.mean(axis=0) * 1e6 / (tokens + DEFAULT_PRIOR_OUTPUT_TOKENS)
    return {arm: float(p) for arm, p in zip(outcomes.arms, per_call, strict=True)}


def _column_means(values: FloatArray) -> FloatArray:
    """Each column's mean over its non-NaN values (0 for a column of NaN), shape (k,)."""
    seen = ~np.isnan(values)
    total = np.where(seen, values, 0.0).sum(axis=0)
    return np.asarray(total / np.maximum(seen.sum(axis=0), 1))


def arm_heads(outcomes: Outcomes) -> dict[str, tuple[float, float]]:
    """The latency and energy priors of each model, from the file's measurements (issue 21):
    its mean latency_ms as prior_latency_ms, and an energy per million tokens (input and
    output alike) scaled as arm_prices scales the price, so that a prompt of the file's mean
    length costs the model's mean energy_wh per call. Zero where the file has none."""
    k = len(outcomes.arms)
    latency = np.zeros(k) if outcomes.latency_ms is None else _column_means(outcomes.latency_ms)
    energy = np.zeros(k) if outcomes.energy_wh is None else _column_means(outcomes.energy_wh)
    tokens = float(np.mean([input_tokens_estimate(p) or 0.0 for p in outcomes.prompts]))
    per_mtok = energy * 1e6 / (tokens + DEFAULT_PRIOR_OUTPUT_TOKENS)
    return {
        arm: (min(float(ms), HARD_MAX_LATENCY_MS), min(float(wh), HARD_MAX_ENERGY_PER_MTOK))
        for arm, ms, wh in zip(outcomes.arms, latency, per_mtok, strict=True)
    }


def _arm(name: str, price: float, heads: tuple[float, float]) -> ArmSpec:
    latency, energy = heads
    return ArmSpec(
        name,
        price,
        price,
        prior_latency_ms=latency,
        input_energy_wh_per_mtok=energy,
        output_energy_wh_per_mtok=energy,
    )


def router_spec(
    arms: Sequence[str],
    opts: Options,
    cost_weight: float,
    prices: Mapping[str, float] | None = None,
    heads: Mapping[str, tuple[float, float]] | None = None,
) -> RouterSpec:
    """The router a replay runs: the file's models as arms at ``prices`` (per million tokens,
    input and output alike; none: zero, learnt from the costs reported), with ``heads``' latency
    and energy priors (arm_heads; none: zero, learnt from the reports), the options' policy."""
    prices, heads = prices or {}, heads or {}
    return RouterSpec(
        tenant="replay",
        name="replay",
        arms=tuple(_arm(name, prices.get(name, 0.0), heads.get(name, (0.0, 0.0))) for name in arms),
        policy=opts.policy if opts.policy in ROUTER_POLICIES else "linucb",
        exploration=opts.exploration,
        prior_quality=opts.prior_quality,
        prior_weight=opts.prior_weight,
        default_cost_weight=cost_weight,
        embedding_dim=ENCODER_DIMS.get(opts.encoder, opts.embedding_dim),
        encoder=opts.encoder,
        metadata_keys=opts.metadata_from,
        metadata_slots=opts.metadata_slots,
        pca_dim=opts.pca_dim,
        pca_fit_samples=opts.pca_fit_samples,
        knn_k=opts.knn_k or (DEFAULT_K if opts.policy == "knn" else 0),
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
        weights = pipeline.encoder.fingerprint  # other weights (a new distillation): recomputed
        key = f"{spec.encoder}@{weights}:{spec.embedding_dim}:{spec.text_window_tokens}"
        digest.update(key.encode())
        for prompt in prompts:
            # surrogatepass: a lone surrogate is refused by the encoder's check, not here
            digest.update(prompt.encode("utf-8", "surrogatepass") + b"\x00")
        path = cache / f"{digest.hexdigest()}.npy"
        cached = _cached(path, (len(prompts), spec.embedding_dim))
        if cached is not None:
            return cached
    out = _encode(pipeline, prompts, label, progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under another name, then renamed: a run stopped mid-write, or another
        # run reading at the same time, never sees part of a file.
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial")
        with partial.open("wb") as f:
            np.save(f, out)
        os.replace(partial, path)
    return out


def _cached(path: Path, shape: tuple[int, int]) -> FloatArray | None:
    """The embeddings kept at path; None where there are none, or none whole (a file cut short
    by a run stopped while writing it, before renames made writes whole): computed again."""
    try:
        kept = np.load(path, allow_pickle=False)
    except (FileNotFoundError, ValueError, EOFError):
        return None
    return np.asarray(kept, dtype=np.float64) if kept.shape == shape else None


def _encode(
    pipeline: ContextPipeline, prompts: Sequence[str], label: str, progress: Progress
) -> FloatArray:
    out = np.empty((len(prompts), pipeline.spec.embedding_dim))
    for start in range(0, len(prompts), ENCODE_CHUNK):
        chunk = prompts[start : start + ENCODE_CHUNK]
        out[start : start + len(chunk)] = pipeline.embed(chunk)
        progress(label, start + len(chunk), len(prompts))
    return out


def contexts(pipeline: ContextPipeline, outcomes: Outcomes, raw: FloatArray) -> FloatArray:
    """x of each prompt in stream order without learning (no kNN features), shape (n, dim)."""
    return np.stack([pipeline.assemble(raw[t], outcomes.metadata[t]) for t in range(outcomes.n)])


def warm_start(
    state: RouterState,
    path: Path,
    metadata_from: Sequence[str] = (),
    cache: Path | None = None,
    head: int | None = None,
) -> WarmStartReport:
    """Fold into ``state`` what `banditd warm-start` on ``path`` (its first ``head`` records, or
    all) logs: the same offline events (``banditd.evaluation.warm_start.warm_events``), in
    order. The state's context pipeline takes in what the warm start fits: the PCA on the
    warm-start prompts, the metadata vocabulary and the kNN index."""
    pipeline = state.context
    assert pipeline is not None, "a replay builds x through the router's context pipeline"
    report, progress = WarmStartReport(), Progress()

    def encode(prompts: Sequence[str]) -> FloatArray:
        return embeddings(pipeline, prompts, "encoding warm-start prompts", progress, cache)

    records = list(itertools.islice(read_outcomes(path), head))
    for events in warm_events(
        pipeline, 0, records, report, metadata_from=metadata_from, encode=encode
    ):
        fold(state, events)  # the kNN index has them already: x of the next record needs them
    if not report.events:
        raise InvalidArgument("warm_start", f"{path}: no outcomes for any of the replay's arms")
    return report
