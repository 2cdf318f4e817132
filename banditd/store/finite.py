"""The store's boundary check: every number in a row it writes is finite and within its ceiling.

The flows already keep numbers bounded (banditd.domain.bounds, banditd.domain.ceilings); this is the
assertion at the last step, so a row that would poison the log or a sum (or that Postgres would
refuse and SQLite store) is a BadData row, set aside like any row the database refuses, on both
databases alike. The same ceilings, as SQL, keep rows logged before them out of the statistics.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

from sqlalchemy import ColumnElement, and_

from banditd.domain.ceilings import HARD_MAX_CALL_USD, HARD_MAX_REWARD
from banditd.errors import BadData
from banditd.store.models import feedback_events

INT64 = 2**63
FLOAT_MAX = sys.float_info.max
# Money columns: |value| <= HARD_MAX_CALL_USD (also a CHECK since migration 0011).
MONEY = frozenset({"cost_usd", "expected_cost_usd", "live_arm_probability"})
REWARDS = frozenset({"reward", "effective_reward", "reward_delta"})


_LIMITS = {key: HARD_MAX_CALL_USD for key in MONEY} | {key: 2 * HARD_MAX_REWARD for key in REWARDS}
_PLAIN = (str, bytes, bool, type(None))


def _problem(key: str, value: Any, depth: int = 0) -> str | None:
    kind = type(value)
    if kind is float:
        # NaN fails the comparison, and infinities are past any finite limit.
        if -_LIMITS.get(key, FLOAT_MAX) <= value <= _LIMITS.get(key, FLOAT_MAX):
            return None
        return (
            f"{key} is {value!r}"
            if not math.isfinite(value)
            else f"{key} = {value:g} is past its ceiling"
        )
    if kind in _PLAIN:
        return None
    if kind is int:
        return None if -INT64 <= value < INT64 else f"{key} = {value} is past 64 bits"
    if isinstance(value, float):  # numpy floats
        return _problem(key, float(value), depth)
    if depth < 4 and isinstance(value, Mapping):
        return next((p for v in value.values() if (p := _problem(key, v, depth + 1))), None)
    if depth < 4 and isinstance(value, list | tuple):
        return next((p for v in value if (p := _problem(key, v, depth + 1))), None)
    return None


def checked(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` unchanged, or BadData naming the first column with a non-finite, too large or
    too long number (JSON columns included: lists and mappings are searched)."""
    for key, value in row.items():
        kind = type(value)
        if kind in _PLAIN:
            continue
        # _problem's first two cases inline (a row of every feedback event): same answers.
        if kind is float:
            limit = _LIMITS.get(key, FLOAT_MAX)
            if -limit <= value <= limit:
                continue
        elif kind is int and -INT64 <= value < INT64:
            continue
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
