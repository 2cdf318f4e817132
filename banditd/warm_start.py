"""Warm start: fit a router's statistics from offline outcome data before it takes traffic.

The data is full-information (every prompt answered by every model, with its quality), the format
of data/ (data/README.md): one JSON object a line, ``{"id", "prompt", "models": {name: {"quality",
"cost_usd"}}}``, optionally gzipped. Each (prompt, arm) pair becomes one *offline* event in the
feedback log, so the rule "posterior = prior + events" holds unchanged for restarts and replicas;
offline events are left out of GetStats. Their ids derive from the router, record and arm, so a
second run adds nothing.
"""

from __future__ import annotations

import gzip
import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from banditd.context import build_x
from banditd.domain import FeedbackEvent, FloatArray, RouterSpec
from banditd.errors import InvalidArgument

_NAMESPACE = uuid.UUID("6f1c3a52-4d3e-4f0e-9a43-0b7f3d1c2a10")


@dataclass
class WarmStartReport:
    records: int = 0
    events: int = 0
    skipped_records: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    events_per_arm: dict[str, int] = field(default_factory=dict)
    unknown_models: set[str] = field(default_factory=set)

    def skip(self, reason: str) -> None:
        self.skipped_records += 1
        self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + 1


def read_outcomes(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file (gzipped when the name ends in .gz); bad lines raise, by number."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidArgument("data", f"{path}:{number}: not JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise InvalidArgument("data", f"{path}:{number}: expected a JSON object")
            record.setdefault("_line", number)
            yield record


def offline_events(
    spec: RouterSpec,
    router_id: int,
    records: Iterable[dict[str, Any]],
    report: WarmStartReport,
    *,
    max_prompt_chars: int,
    featurise: Callable[[dict[str, Any]], FloatArray] | None = None,
) -> Iterator[FeedbackEvent]:
    """One offline event per (record, router arm the record has an outcome for); x from
    ``featurise(record)`` when given (replay's context pipeline), else ``build_x``."""
    arms = {a.name for a in spec.arms}
    now = time.time()
    for record in records:
        report.records += 1
        prompt, models = record.get("prompt"), record.get("models")
        if not isinstance(prompt, str) or not isinstance(models, dict):
            report.skip("no prompt or models")
            continue
        try:
            x = (
                build_x(spec, prompt=prompt, embedding=None, max_prompt_chars=max_prompt_chars)
                if featurise is None
                else featurise(record)
            )
        except InvalidArgument as exc:
            report.skip(exc.field)
            continue
        report.unknown_models.update(set(models) - arms)
        key = str(record.get("id", record["_line"]))
        for arm in sorted(arms & set(models)):
            outcome = models[arm]
            quality = outcome.get("quality") if isinstance(outcome, dict) else None
            if not isinstance(quality, int | float) or not 0.0 <= quality <= 1.0:
                report.skip("quality missing or outside [0, 1]")
                continue
            cost = outcome.get("cost_usd", 0.0)
            cost = float(cost) if isinstance(cost, int | float) and math.isfinite(cost) else 0.0
            report.events += 1
            report.events_per_arm[arm] = report.events_per_arm.get(arm, 0) + 1
            yield FeedbackEvent(
                event_id=0,
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
            )
