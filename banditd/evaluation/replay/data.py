"""Full-information outcome files: loading and checking, with errors that name the line."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from banditd.domain import FloatArray
from banditd.errors import InvalidArgument
from banditd.evaluation.warm_start import read_outcomes, record_metadata


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
    # Measured latency (ms) and energy (Wh) per prompt and arm, shape (n, k), NaN where an
    # entry has none; None when no entry of the file has the field (issue 21).
    latency_ms: FloatArray | None = None
    energy_wh: FloatArray | None = None

    @property
    def n(self) -> int:
        return len(self.prompts)

    def reordered(self, order: npt.NDArray[np.int64]) -> Outcomes:
        """The same records in another order: the i-th is the file's order[i]-th."""

        def rows(values: FloatArray | None) -> FloatArray | None:
            return None if values is None else values[order]

        return dataclasses.replace(
            self,
            prompts=tuple(self.prompts[i] for i in order),
            lines=tuple(self.lines[i] for i in order),
            quality=self.quality[order],
            cost=self.cost[order],
            metadata=tuple(self.metadata[i] for i in order) if self.metadata else (),
            latency_ms=rows(self.latency_ms),
            energy_wh=rows(self.energy_wh),
        )


def _bad(path: Path, line: int, problem: str) -> InvalidArgument:
    return InvalidArgument("data", f"{path}:{line}: {problem}")


def _number(value: object) -> float | None:
    """A finite JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


OPTIONAL_FIELDS = ("latency_ms", "energy_wh")  # per model entry, numbers >= 0 when present


def _optional(path: Path, line: int, arm: str, outcome: dict[str, Any]) -> list[float]:
    """The entry's latency_ms and energy_wh, NaN where absent; a bad value raises."""
    values = []
    for field in OPTIONAL_FIELDS:
        got = outcome.get(field)
        value = None if got is None else _number(got)
        if got is not None and (value is None or value < 0.0):
            raise _bad(path, line, f"model {arm!r}: {field} must be a number >= 0, got {got!r}")
        values.append(math.nan if value is None else value)
    return values


def _outcome_row(
    path: Path, line: int, models: dict[str, Any], arms: Sequence[str]
) -> tuple[list[float], list[float], list[list[float]]]:
    """Quality and cost of every arm in one record, checked; two lists of length k, and the
    optional fields per arm (k lists of len(OPTIONAL_FIELDS), NaN where absent)."""
    quality, cost, optional = [], [], []
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
        optional.append(_optional(path, line, arm, outcome))
    return quality, cost, optional


def load_outcomes(
    path: Path,
    arms: Sequence[str] = (),
    limit: int | None = None,
    metadata_from: Sequence[str] = (),
    skip: int = 0,
) -> Outcomes:
    """The first ``limit`` records after the first ``skip`` of an outcome file, checked; bad
    records raise, by line.

    arms: the models to route between; by default those of the first record, in its order.
    Every record needs a prompt and a finite quality and cost for every arm.
    """
    prompts: list[str] = []
    lines: list[int] = []
    quality: list[list[float]] = []
    cost: list[list[float]] = []
    metadata: list[dict[str, str]] = []
    optional: list[list[list[float]]] = []
    stop = None if limit is None else skip + limit
    for record in itertools.islice(read_outcomes(path), skip, stop):
        line = int(record["_line"])
        prompt, models = record.get("prompt"), record.get("models")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _bad(path, line, "no prompt (a non-empty string)")
        if not isinstance(models, dict) or not models:
            raise _bad(path, line, "no models (an object of name: {quality, cost_usd})")
        arms = arms or tuple(models)
        q, c, o = _outcome_row(path, line, models, arms)
        optional.append(o)
        prompts.append(prompt)
        lines.append(line)
        metadata.append(record_metadata(record, metadata_from))
        quality.append(q)
        cost.append(c)
    if not prompts:
        where = f"after its first {skip} records" if skip else "(the file is empty)"
        raise InvalidArgument("data", f"{path}:1: no records {where}")
    extra = np.array(optional)  # (n, k, len(OPTIONAL_FIELDS))
    latency, energy = (
        extra[:, :, i] if not np.isnan(extra[:, :, i]).all() else None
        for i in range(len(OPTIONAL_FIELDS))
    )
    return Outcomes(
        path,
        tuple(arms),
        tuple(prompts),
        tuple(lines),
        np.array(quality),
        np.array(cost),
        tuple(metadata),
        latency,
        energy,
    )


def split_point(path: Path, fraction: float) -> int:
    """How many records of an outcome file come before ``fraction`` of it (by line order)."""
    return int(sum(1 for _ in read_outcomes(path)) * fraction)
