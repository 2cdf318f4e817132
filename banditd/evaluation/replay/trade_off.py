"""Latency and energy in a replay (issue 21): the checks on its --latency-weight,
--energy-weight and --max-latency-ms, and the mean measured latency and energy of a run's picks
(report keys mean_latency_ms / mean_energy_wh, present only when the file has the field)."""

from __future__ import annotations

import numpy as np

from banditd.domain import ROUTER_POLICIES, FloatArray
from banditd.domain.ceilings import (
    HARD_MAX_ENERGY_WEIGHT,
    HARD_MAX_LATENCY_MS,
    HARD_MAX_LATENCY_WEIGHT,
)
from banditd.errors import InvalidArgument
from banditd.evaluation.replay.data import Outcomes
from banditd.evaluation.replay.options import Options
from banditd.policy.base import IntArray

# mean_challenger_cost_usd: with --feedback pairwise, what the challengers' answers cost per
# prompt on top of mean_cost_usd (the router's own picks).
MEASURE_KEYS = ("mean_latency_ms", "mean_energy_wh", "mean_challenger_cost_usd")


def check_trade_off(opts: Options) -> None:
    """The request fields' bounds (as Select's), and a policy the server ranks with them."""
    fields = (
        ("latency_weight", opts.latency_weight, HARD_MAX_LATENCY_WEIGHT),
        ("energy_weight", opts.energy_weight, HARD_MAX_ENERGY_WEIGHT),
        ("max_latency_ms", opts.max_latency_ms, HARD_MAX_LATENCY_MS),
    )
    for name, value, ceiling in fields:
        if value is not None and not 0.0 <= value <= ceiling:
            raise InvalidArgument(name, f"must be in [0, {ceiling:g}], got {value:g}")
    if opts.feedback == "pairwise" and opts.policy == "knn":
        raise InvalidArgument(
            "feedback", "pairwise needs a policy the server runs: knn picks no challenger"
        )
    if any(value is not None for _, value, _ in fields) and opts.policy not in ROUTER_POLICIES:
        raise InvalidArgument(
            "policy",
            "--latency-weight, --energy-weight and --max-latency-ms need a policy the server "
            f"runs ({', '.join(ROUTER_POLICIES)}), not {opts.policy!r}",
        )


def _mean(values: FloatArray) -> float:
    """The mean of the non-NaN values (0 when there are none)."""
    seen = values[~np.isnan(values)]
    return float(seen.mean()) if seen.size else 0.0


def measures(outcomes: Outcomes, picks: IntArray) -> dict[str, float]:
    """Mean measured latency (ms) and energy (Wh) of a run's served prompts (picks shape (n,),
    REFUSED < 0 left out, as are entries without the field); only the fields the file has."""
    served = picks >= 0
    rows, cols = np.arange(outcomes.n)[served], picks[served]
    out = {}
    for key, values in zip(
        MEASURE_KEYS[:2], (outcomes.latency_ms, outcomes.energy_wh), strict=True
    ):
        if values is not None:
            out[key] = _mean(values[rows, cols])
    return out


def model_measures(outcomes: Outcomes, j: int) -> dict[str, float]:
    """Mean measured latency and energy of model j over the file (the fields it has)."""
    return measures(outcomes, np.full(outcomes.n, j, dtype=np.int64))
