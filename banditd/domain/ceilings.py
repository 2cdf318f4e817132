"""Hard ceilings on the numbers banditd computes and stores (issue 17). Pure: no I/O.

The request bounds (banditd.domain.bounds) keep callers' numbers inside these; this module makes the
numbers banditd derives from them finite by construction (a clamp at each source) and tells a
poisoned feedback event (one logged before the bounds existed) from a good one, so that the
posterior, which every replica rebuilds from the log, skips it the same way everywhere.
"""

from __future__ import annotations

import math

import numpy as np

from banditd.domain import FeedbackEvent, FloatArray

HARD_MAX_CALL_USD = 1e9  # one call's cost: price (<= 1e6 USD/Mtok) x tokens (<= 1e9)
HARD_MAX_COST_WEIGHT = 1e9  # utility per USD
HARD_MAX_REWARD = 1e6  # |reward| of any event (online ones are in [0, 1])
HARD_MAX_X = 1e6  # |value| of a context vector
HARD_MAX_TOKENS = 2**53  # exact in a float64
# Latency and energy (issue 21): a latency is at most 1e10 ms (Settings.max_latency_ms's cap),
# so latency_weight x seconds <= 1e9 x 1e7; an energy is at most 1e6 Wh/Mtok x 1e9 tokens.
HARD_MAX_LATENCY_MS = 1e10
HARD_MAX_LATENCY_WEIGHT = 1e9  # utility per second
HARD_MAX_ENERGY_PER_MTOK = 1e6  # Wh per million tokens
HARD_MAX_CALL_WH = 1e9  # one call's energy
HARD_MAX_ENERGY_WEIGHT = 1e9  # utility per Wh
SCORE_LIMIT = 1e20  # |score| of any arm: quality (<= ~1e3) + cost_weight x cost (<= 1e18)


def finite_scores(values: FloatArray) -> FloatArray:
    """Scores within +-SCORE_LIMIT, NaN as the worst score (shape kept). fmax and fmin return
    the non-NaN operand: NaN becomes -SCORE_LIMIT, infinities the limits (two ufunc calls, a
    sixth of nan_to_num + clip on the few arms of a Select)."""
    return np.fmin(np.fmax(values, -SCORE_LIMIT), SCORE_LIMIT)


def event_problem(event: FeedbackEvent) -> str | None:
    """Why an event must not be applied (a non-finite or absurd number), or None. Runs for
    every event applied, so comparisons only (NaN fails every one of them)."""
    if not (
        -HARD_MAX_REWARD <= event.reward <= HARD_MAX_REWARD
        and -HARD_MAX_CALL_USD <= event.cost_usd <= HARD_MAX_CALL_USD
        and 0.0 <= event.created_at <= 1e12
    ):
        named = (("reward", event.reward), ("cost_usd", event.cost_usd))
        return next(
            (f"{name} is {value!r}" for name, value in named if not math.isfinite(value)),
            f"past the ceilings: reward {event.reward!r}, cost_usd {event.cost_usd!r}, "
            f"created_at {event.created_at!r}",
        )
    for name, value, limit in (
        ("effective_reward", event.effective_reward, HARD_MAX_REWARD),
        ("reward_delta", event.reward_delta, 2 * HARD_MAX_REWARD),
        ("latency_ms", event.latency_ms, 1e15),
        ("energy_wh", event.energy_wh, HARD_MAX_CALL_WH),
    ):
        if value is not None and not -limit <= value <= limit:
            return f"{name} is {value!r}"
    for name, count in (
        ("input_tokens", event.input_tokens),
        ("output_tokens", event.output_tokens),
    ):
        if count is not None and not 0 <= count <= HARD_MAX_TOKENS:
            return f"{name} is {count}"
    # One dot product: finite (and not huge) exactly when every value is.
    if event.x.size and not float(event.x @ event.x) <= HARD_MAX_X**2 * event.x.size:
        return "x holds a non-finite or huge value"
    return None
