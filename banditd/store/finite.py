"""The store's boundary check: every number in a row it writes is finite and within its ceiling.

The flows already keep numbers bounded (banditd.bounds, banditd.ceilings); this is the assertion
at the last step, so a row that would poison the log or a sum (or that Postgres would refuse
and SQLite store) is a BadData row, set aside like any row the database refuses, on both
databases alike. The same ceilings, as SQL, keep rows logged before them out of the statistics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sqlalchemy import ColumnElement, and_

from banditd.ceilings import HARD_MAX_CALL_USD, HARD_MAX_REWARD
from banditd.errors import BadData
from banditd.store.models import feedback_events

INT64 = 2**63
# Money columns: |value| <= HARD_MAX_CALL_USD (also a CHECK since migration 0011).
MONEY = frozenset({"cost_usd", "expected_cost_usd", "live_arm_probability"})
REWARDS = frozenset({"reward", "effective_reward", "reward_delta"})


def _problem(key: str, value: Any, depth: int = 0) -> str | None:
    if isinstance(value, bool) or value is None or isinstance(value, str | bytes):
        return None
    if isinstance(value, int):
        return None if -INT64 <= value < INT64 else f"{key} = {value} is past 64 bits"
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"{key} is {value!r}"
        limit = HARD_MAX_CALL_USD if key in MONEY else 2 * HARD_MAX_REWARD if key in REWARDS else 0
        if limit and abs(value) > limit:
            return f"{key} = {value:g} is past its ceiling {limit:g}"
        return None
    if depth < 4 and isinstance(value, Mapping):
        return next((p for k, v in value.items() if (p := _problem(key, v, depth + 1))), None)
    if depth < 4 and isinstance(value, list | tuple):
        return next((p for v in value if (p := _problem(key, v, depth + 1))), None)
    return None


def checked(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` unchanged, or BadData naming the first column with a non-finite, too large or
    too long number (JSON columns included: lists and mappings are searched)."""
    for key, value in row.items():
        problem = _problem(key, value)
        if problem is not None:
            raise BadData(f"row refused before writing: {problem}")
    return row


def bounded_event() -> ColumnElement[bool]:
    """SQL: a feedback event within the ceilings (older rows may not be; NaN fails too)."""
    fe = feedback_events
    return and_(
        fe.c.cost_usd.between(-HARD_MAX_CALL_USD, HARD_MAX_CALL_USD),
        fe.c.reward.between(-HARD_MAX_REWARD, HARD_MAX_REWARD),
    )


def bounded_usd(usd: float | None) -> bool:
    """Whether a stored cost is usable: finite and within the ceiling."""
    return usd is not None and math.isfinite(usd) and abs(usd) <= HARD_MAX_CALL_USD
