"""Warm start: fit a router's statistics from offline outcome data before it takes traffic.

The data is full-information (every prompt answered by every model, with its quality), the format
of data/ (data/README.md): one JSON object a line, ``{"id", "prompt", "models": {name: {"quality",
"cost_usd"}}}``, optionally gzipped, with other fields (``task``) that may be sent as request
metadata. Each (prompt, arm) pair becomes one *offline* event in the feedback log, so the rule
"posterior = prior + events" holds unchanged for restarts and replicas; offline events are left
out of GetStats. Their ids derive from the router, record and arm (and the router's context, and
encoder weights other than its first warm start's: ``warm_start_weights``), so a second run adds
nothing; a record whose id an earlier one of the file had is skipped (``usable_records``).

``warm_events`` is the one way a warm start turns records into events, used by both
`banditd warm-start` (banditd.commands.warm_start, into a router's log) and `banditd replay
--warm-start` (in process): x comes from the router's context pipeline (banditd.context.pipeline)
with its encoder, metadata and kNN features; a router with a PCA and none fitted yet gets one
fitted on the warm-start prompts first (then stored with the router, like a PCA a live router fits).
"""

from __future__ import annotations

import gzip
import json
import math
import time
import uuid
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from banditd.context.builder import check_prompt
from banditd.context.pipeline import ContextPipeline
from banditd.domain import FeedbackEvent, FloatArray, built_with
from banditd.domain.ceilings import HARD_MAX_CALL_USD
from banditd.errors import InvalidArgument
from banditd.flows.select import check_metadata_entry

_NAMESPACE = uuid.UUID("6f1c3a52-4d3e-4f0e-9a43-0b7f3d1c2a10")
ENCODE_CHUNK = 256  # prompts encoded per call

# Raw embeddings of prompts, shape (n, embedding_dim).
Encode = Callable[[Sequence[str]], FloatArray]


@dataclass
class WarmStartReport:
    records: int = 0
    events: int = 0
    skipped_records: int = 0  # records that gave no event (their reasons: skip_reasons)
    skipped_entries: int = 0  # arm entries without a quality in [0, 1], whatever the record
    skip_reasons: dict[str, int] = field(default_factory=dict)
    events_per_arm: dict[str, int] = field(default_factory=dict)
    unknown_models: set[str] = field(default_factory=set)
    pca_fitted_on: int = 0  # prompts the PCA was fitted on here (0: none fitted here)

    def skip(self, reason: str) -> None:
        self.skipped_records += 1
        self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + 1


def read_outcomes(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file (gzipped when the name ends in .gz); bad lines raise, by number,
    and so does a file that cannot be read on (cut short, or not UTF-8 text)."""
    opener = gzip.open if path.suffix == ".gz" else open
    number = 0
    with opener(path, "rt", encoding="utf-8") as lines:
        try:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    problem = f"{path}:{number}: not JSON ({exc.msg})"
                    raise InvalidArgument("data", problem) from exc
                if not isinstance(record, dict):
                    raise InvalidArgument("data", f"{path}:{number}: expected a JSON object")
                record.setdefault("_line", number)
                yield record
        except (EOFError, UnicodeDecodeError) as exc:
            problem = f"{path}: unreadable after line {number} ({exc})"
            raise InvalidArgument("data", problem) from exc


def _number(value: object) -> TypeGuard[int | float]:
    """A JSON number: a JSON boolean is not one (as replay's loader reads an outcome)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _entry_problem(quality: object, cost_usd: float) -> str | None:
    """Why an arm's entry gives no event, or None: a quality that is not a number in [0, 1],
    or a cost past what one call may cost (the log refuses it, the posterior passes it over)."""
    if not _number(quality) or not 0.0 <= quality <= 1.0:
        return "quality missing or outside [0, 1]"
    if cost_usd > HARD_MAX_CALL_USD:
        return f"cost_usd over {HARD_MAX_CALL_USD:g}"
    return None


def record_metadata(record: dict[str, Any], fields: Sequence[str]) -> dict[str, str]:
    """The request metadata a calling service would send for a record: each named field's
    value as text (absent or null fields are left out)."""
    return {f: str(record[f]) for f in fields if record.get(f) is not None}


def record_key(record: dict[str, Any]) -> str:
    """What names a record in its events' decision ids: its id, or its line where the id is
    null or "" (a blank column names no record)."""
    named = record.get("id")
    return str(record["_line"] if named is None or named == "" else named)


def usable_records(
    records: Sequence[dict[str, Any]],
    report: WarmStartReport,
    max_prompt_chars: int,
    metadata_from: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Of the records (as read_outcomes reads them: each with its ``_line``), those with a
    prompt the router accepts, a models object and metadata a Select could send
    (``metadata_from``'s values), each the first of the file with its key (``record_key``);
    the rest are counted as skipped in ``report``. A record whose key an
    earlier one had would get that one's decision ids: the log would keep one record's events
    while an in-process replay folded both, so it is skipped ("duplicate id") on either path."""
    usable, seen = [], set()
    for record in records:
        report.records += 1
        key = record_key(record)
        if key in seen:
            report.skip("duplicate id")
            continue
        seen.add(key)
        prompt, models = record.get("prompt"), record.get("models")
        if not isinstance(prompt, str) or not isinstance(models, dict):
            report.skip("no prompt or models")
            continue
        try:
            check_prompt(prompt, max_prompt_chars)
        except InvalidArgument as exc:
            report.skip(exc.field)
            continue
        if not _sendable(record_metadata(record, metadata_from)):
            report.skip("metadata")
            continue
        usable.append(record)
    return usable


def _sendable(metadata: dict[str, str]) -> bool:
    """Metadata a Select can carry and a server takes (``check_metadata_entry``), in UTF-8
    (no lone surrogate)."""
    try:
        for key, value in metadata.items():
            check_metadata_entry(key, value)
            value.encode()
    except (InvalidArgument, UnicodeEncodeError):
        return False
    return True


def encode_in_chunks(pipeline: ContextPipeline, progress: Callable[[int, int], None]) -> Encode:
    """An Encode through the pipeline's encoder, ENCODE_CHUNK prompts a call, calling
    ``progress(done, total)`` after each."""

    def encode(prompts: Sequence[str]) -> FloatArray:
        out = np.empty((len(prompts), pipeline.spec.embedding_dim))
        for start in range(0, len(prompts), ENCODE_CHUNK):
            chunk = prompts[start : start + ENCODE_CHUNK]
            out[start : start + len(chunk)] = pipeline.embed(chunk)
            progress(start + len(chunk), len(prompts))
        return out

    return encode


def fit_reduction(pipeline: ContextPipeline, raw: FloatArray) -> int:
    """Fit the router's PCA on the first ``pca_fit_samples`` non-zero raw embeddings (the
    samples a live router would fit on), when it needs one; the samples used (0: none fitted).
    raw: shape (n, embedding_dim). Fewer samples than ``pca_dim`` cannot fit one: an error."""
    if not pipeline.needs_reduction:
        return 0
    spec = pipeline.spec
    samples = raw[np.any(raw, axis=1)][: spec.pca_fit_samples]
    if len(samples) < spec.pca_dim:
        raise InvalidArgument(
            "data",
            f"router {spec.name!r} has no fitted PCA yet and {len(samples)} warm-start prompts "
            f"cannot fit its {spec.pca_dim} components (at least {spec.pca_dim} needed)",
        )
    from banditd.context.reduction import Reduction

    pipeline.set_reduction(Reduction.fit(samples, spec.pca_dim))
    pipeline.unsaved_reduction = True
    return len(samples)


def warm_start_weights(first_context: str | None, weights: str) -> str:
    """The weights a warm start's ids include (``warm_events``' ``key_weights``): "" when the
    router's first warm start since its context changed (``first_context``: its events' context
    version; None for none) was built with ``weights`` too, or is not known to have been (so a
    rerun adds nothing, and those events keep their ids); else ``weights``, whose x those
    events, built by other weights, are not."""
    return "" if built_with(first_context, weights) else weights


def warm_events(
    pipeline: ContextPipeline,
    router_id: int,
    records: Sequence[dict[str, Any]],
    report: WarmStartReport,
    *,
    metadata_from: Sequence[str],
    encode: Encode,
    first_event_id: int = 0,
    context_since: int = 0,
    key_weights: str = "",
    present: Container[str] = frozenset(),
) -> Iterator[list[FeedbackEvent]]:
    """Each usable record's offline events, one per router arm it has an outcome for (in
    arm-name order), record by record, with ids from ``first_event_id`` + 1 (the log assigns
    its own when they are appended).

    The prompts are encoded first (``encode``); a PCA the router needs is fitted on them
    (``fit_reduction``); then x of each record is built by the pipeline from its embedding and
    its ``metadata_from`` fields (vocabulary resolved in record order), and each event is
    folded into the pipeline's kNN index before the next record's x, as a server applying the
    events in order would. An event's decision id is the same for the same router, record, arm,
    ``context_since`` (the stored router's: the version since which it builds x as now) and
    ``key_weights`` (``warm_start_weights``), so a second run adds nothing, while a run after a
    change of the context or of the encoder's weights adds the events anew (the old ones no
    longer fold). ``present``: the decision ids of events in the log already, which the kNN
    index holds (``index_log``): a rerun after a stop midway folds them in only once. The
    pipeline's vocabulary must be in memory
    (MemoryVocabularyStore; `banditd warm-start` preloads it with the router's stored one)."""
    spec = pipeline.spec
    arms = {a.name for a in spec.arms}
    usable = usable_records(records, report, pipeline.max_prompt_chars, metadata_from)
    raw = encode([r["prompt"] for r in usable]) if usable else np.zeros((0, spec.embedding_dim))
    report.pca_fitted_on = fit_reduction(pipeline, raw) if usable else 0
    now = time.time()
    event_id = first_event_id
    for record, vec in zip(usable, raw, strict=True):
        models: dict[str, Any] = record["models"]
        x = pipeline.assemble(vec, record_metadata(record, metadata_from))
        report.unknown_models.update(set(models) - arms)
        key = record_key(record)
        if context_since:  # 0: the ids warm starts have always had
            key = f"{context_since}\x00{key}"
        if key_weights:  # "": the ids warm starts had before weights were named
            key = f"{key_weights}\x00{key}"
        events: list[FeedbackEvent] = []
        problem: str | None = None  # why the record's last entry gave no event
        for arm in sorted(arms & set(models)):
            outcome = models[arm]
            quality: Any = outcome.get("quality") if isinstance(outcome, dict) else None
            cost = outcome.get("cost_usd", 0.0) if isinstance(outcome, dict) else 0.0
            cost = float(cost) if _number(cost) and math.isfinite(cost) else 0.0
            problem = _entry_problem(quality, cost)
            if problem is not None:
                report.skipped_entries += 1
                continue
            report.events += 1
            report.events_per_arm[arm] = report.events_per_arm.get(arm, 0) + 1
            event_id += 1
            event = FeedbackEvent(
                event_id=event_id,
                router_id=router_id,
                decision_id=str(uuid.uuid5(_NAMESPACE, f"{router_id}\x00{key}\x00{arm}")),
                arm=arm,
                x=x,
                reward=float(quality),
                cost_usd=max(cost, 0.0),
                input_tokens=None,
                output_tokens=None,
                latency_ms=None,
                error=False,
                created_at=now,
                offline=True,
                decision_version=spec.version,  # x built by the router as it is now
                context_version=pipeline.version,  # no decision row to read it from
            )
            # The kNN index only, now: the next record's x reads it. The whole fold comes
            # after, from the log (`banditd warm-start`) or by ``fold`` (replay's warm start).
            if event.decision_id not in present:  # else the index has it from the log
                pipeline.observe(event)
            events.append(event)
        if not events:
            report.skip(problem or "no outcome for the router's arms")
        yield events
