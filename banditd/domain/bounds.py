"""Bounds on every number a caller or an admin can send (issue 17; the table in docs/security.md).

One table, ``TABLE``, gives each numeric field of every request message its range: a number out
of range (NaN and infinities included) is INVALID_ARGUMENT naming the field and the bound,
before any flow runs. Ranges an operator may need to move are settings (``Settings.max_*``);
each setting is capped by a hard ceiling here, so that whatever is configured, every cost, score
and sum the service computes from accepted numbers stays finite:

- a call costs at most HARD_MAX_CALL_USD (price 1e6 USD/Mtok x 1e9 tokens), so a sum of costs
  over any number of rows a database can hold (< 2**63) is below 1e29, far from float64's 1.8e308;
- a utility is quality - cost_weight x cost, at most 1e9 x 1e9 in size.

The store checks the same ceilings again at its boundary (banditd.store.finite), and the
posterior refuses events outside them, so rows written before these bounds cannot poison it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from banditd.config import Settings
from banditd.domain.ceilings import (
    HARD_MAX_CALL_USD,
    HARD_MAX_CALL_WH,
    HARD_MAX_COST_WEIGHT,
    HARD_MAX_ENERGY_PER_MTOK,
    HARD_MAX_ENERGY_WEIGHT,
    HARD_MAX_LATENCY_WEIGHT,
)
from banditd.errors import InvalidArgument

__all__ = ["HARD_MAX_CALL_USD", "HARD_MAX_COST_WEIGHT", "TABLE", "Bound", "Bounds"]

HARD_MAX_EMBEDDING_VALUE = 1e4  # |value| of a caller's embedding (they are usually in [-1, 1])
MAX_UNIX_SECONDS = 1e10  # year 2286
MAX_INT32 = 2**31 - 1  # versions and counts in INTEGER columns
ONE_YEAR_S = 366 * 86_400

_NUMERIC = {
    FieldDescriptor.TYPE_DOUBLE,
    FieldDescriptor.TYPE_FLOAT,
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
}


@dataclass(frozen=True)
class Bound:
    """[low, high]; ``setting``: the Settings field that sets ``high`` (None: fixed)."""

    low: float
    high: float
    setting: str | None = None

    def describe(self) -> str:
        where = f" (BANDITD_{self.setting.upper()})" if self.setting else ""
        return f"[{_number(self.low)}, {_number(self.high)}]{where}"


def _number(value: float) -> str:
    """Integers (the bounds of integer fields) in full, floats as %g."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def _s(name: str, low: float = 0) -> Bound:
    """A bound whose high end is a setting (filled in by ``Bounds.of``)."""
    return Bound(low, math.nan, name)


# "Message.field" -> its bound. Every numeric field of every message an RPC takes is here
# (tests/store/test_value_bounds.py checks it against the .proto); enums are checked by their flows.
TABLE: Mapping[str, Bound] = {
    # Router.Select
    "SelectRequest.cost_weight": _s("max_cost_weight"),
    "SelectRequest.max_cost_usd": _s("max_cost_usd"),
    "SelectRequest.latency_weight": Bound(0.0, HARD_MAX_LATENCY_WEIGHT),
    "SelectRequest.energy_weight": Bound(0.0, HARD_MAX_ENERGY_WEIGHT),
    "SelectRequest.max_latency_ms": _s("max_latency_ms"),
    "SelectRequest.input_tokens": _s("max_reported_tokens"),
    "Embedding.values": Bound(-HARD_MAX_EMBEDDING_VALUE, HARD_MAX_EMBEDDING_VALUE),
    # Router.Feedback, StreamFeedback, UploadFeedback (per event, in banditd.flows.feedback)
    "FeedbackRequest.reward": Bound(0.0, 1.0),
    "FeedbackRequest.cost_usd": _s("max_cost_usd"),
    "FeedbackRequest.input_tokens": _s("max_reported_tokens"),
    "FeedbackRequest.output_tokens": _s("max_reported_tokens"),
    "FeedbackRequest.latency_ms": _s("max_latency_ms"),
    "FeedbackRequest.energy_wh": Bound(0.0, HARD_MAX_CALL_WH),
    "FeedbackRequest.first_token_ms": _s("max_latency_ms"),
    # Admin: routers (PutRouter, and candidates of Evaluate and PromoteRouter)
    "Arm.input_price_per_mtok": _s("max_price_per_mtok"),
    "Arm.output_price_per_mtok": _s("max_price_per_mtok"),
    "Arm.prior_latency_ms": _s("max_latency_ms"),
    "Arm.input_energy_wh_per_mtok": Bound(0.0, HARD_MAX_ENERGY_PER_MTOK),
    "Arm.output_energy_wh_per_mtok": Bound(0.0, HARD_MAX_ENERGY_PER_MTOK),
    "RouterConfig.exploration": Bound(0.0, 1000.0),
    "RouterConfig.default_cost_weight": _s("max_cost_weight"),
    "RouterConfig.embedding_dim": Bound(0, 4096),
    "RouterConfig.feedback_ttl_seconds": Bound(0, ONE_YEAR_S),
    "RouterConfig.prior_output_tokens": _s("max_reported_tokens"),
    "RouterConfig.version": Bound(0, MAX_INT32),
    "RouterConfig.forgetting": Bound(0.0, 1.0),
    "RouterConfig.prior_quality": Bound(-100.0, 100.0),
    "RouterConfig.prior_weight": Bound(0.0, 1e6),
    "RouterConfig.explore_new_arm": Bound(0, 10_000),
    "RouterConfig.default_reward": Bound(0.0, 1.0),
    "RouterConfig.reward_wait_seconds": Bound(0, ONE_YEAR_S),
    "RouterConfig.metadata_slots": Bound(0, 1024),
    "RouterConfig.pca_dim": Bound(0, 256),
    "RouterConfig.pca_fit_samples": Bound(0, 1_000_000),
    "RouterConfig.knn_k": Bound(0, 256),
    "RouterConfig.text_window_tokens": Bound(0, 100_000),
    "RouterConfig.feedback_cap_per_key": Bound(0, MAX_INT32),  # an INTEGER column
    "RouterConfig.feedback_cap_window_seconds": Bound(0, ONE_YEAR_S),
    "RouterConfig.breaker_error_rate": Bound(0.0, 1.0),
    "RouterConfig.breaker_min_events": Bound(0, 10_000),
    "RouterConfig.breaker_cooldown_seconds": Bound(0, 86_400),
    "RouterConfig.thumb_up_reward": Bound(0.0, 1.0),
    "RouterConfig.thumb_down_reward": Bound(0.0, 1.0),
    "RouterConfig.default_latency_weight": Bound(0.0, HARD_MAX_LATENCY_WEIGHT),
    "RouterConfig.default_energy_weight": Bound(0.0, HARD_MAX_ENERGY_WEIGHT),
    "ShadowPolicy.exploration": Bound(0.0, 1000.0),
    "ShadowPolicy.cost_weight": _s("max_cost_weight"),
    # Admin: evaluation, promotion, rollback
    "EvaluateRequest.cost_weight": _s("max_cost_weight"),
    "EvaluateRequest.latency_weight": Bound(0.0, HARD_MAX_LATENCY_WEIGHT),
    "EvaluateRequest.energy_weight": Bound(0.0, HARD_MAX_ENERGY_WEIGHT),
    "EvaluateRequest.bootstrap_replicates": Bound(0, 100_000),
    "EvaluateRequest.limit": Bound(0, 1_000_000),
    "EvaluateRequest.seed": Bound(0, 2**64 - 1),
    "PromoteRouterRequest.expected_version": Bound(0, MAX_INT32),
    "RollbackRouterRequest.to_version": Bound(0, MAX_INT32),
    "RollbackRouterRequest.expected_version": Bound(0, MAX_INT32),
    # Admin: budgets and spend
    "Budget.limit_usd": _s("max_budget_usd"),
    "Budget.window_seconds": Bound(0, 10 * ONE_YEAR_S),
    "Budget.window_start_unix": Bound(0.0, MAX_UNIX_SECONDS),
    "Budget.alerts": Bound(0.0, 1.0),
    "Budget.version": Bound(0, MAX_INT32),
    "GetSpendRequest.since_unix": Bound(0.0, MAX_UNIX_SECONDS),
    "GetSpendRequest.until_unix": Bound(0.0, MAX_UNIX_SECONDS),
}


def numeric_fields(descriptor: Descriptor, seen: frozenset[str] = frozenset()) -> Iterator[str]:
    """ "Message.field" of every numeric field reachable from a message type (for the tests)."""
    if descriptor.full_name in seen:
        return
    for f in descriptor.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type is not None:
            yield from numeric_fields(f.message_type, seen | {descriptor.full_name})
        elif f.type in _NUMERIC:
            yield f"{descriptor.name}.{f.name}"


class Bounds:
    """The table with the settings' values in it; ``check_message`` is the edge's check."""

    def __init__(self, settings: Settings) -> None:
        self.table: dict[str, Bound] = {
            key: Bound(b.low, getattr(settings, b.setting), b.setting) if b.setting else b
            for key, b in TABLE.items()
        }

    def check(self, key: str, value: float, field: str | None = None) -> float:
        """``value`` if it lies in the bound of ``key`` ("Message.field"), else
        InvalidArgument naming ``field`` (default: the field's name) and the bound."""
        bound = self.table[key]
        if isinstance(value, float) and not math.isfinite(value):
            problem = "must be a finite number"
        elif bound.low <= value <= bound.high:
            return value
        else:
            problem = "must be"
        raise InvalidArgument(
            field or key.partition(".")[2],
            f"{problem} in {bound.describe()}, got {_number(value)}",
        )

    def check_message(self, msg: Message, path: str = "") -> None:
        """Check every numeric field set in ``msg`` and its sub-messages (recursively)."""
        name = msg.DESCRIPTOR.name
        for f, value in msg.ListFields():
            label = f"{path}{f.name}"
            items = [value] if isinstance(value, (Message, int, float)) else list(value)
            if f.type == FieldDescriptor.TYPE_MESSAGE:
                if f.message_type is not None and f.message_type.GetOptions().map_entry:
                    continue  # string maps (metadata): sized by their flows
                for sub in items:
                    assert isinstance(sub, Message)
                    self.check_message(sub, f"{label}.")
            elif f.type in _NUMERIC:
                key = f"{name}.{f.name}"
                bound = self.table.get(key)
                for item in cast("list[float]", items):  # a numeric field holds numbers
                    # One chained comparison per value on the hot path (Select's embedding):
                    # NaN fails it too; ``check`` then raises with the message.
                    if bound is not None and not bound.low <= item <= bound.high:
                        self.check(key, item, label)
                    elif bound is None and isinstance(item, float) and not math.isfinite(item):
                        raise InvalidArgument(label, "must be a finite number")  # a newer field


def default_bounds() -> Bounds:
    """The bounds of the default settings (for flows built outside a server)."""
    return Bounds(Settings.model_construct())


def fixed_bounds() -> Bounds:
    """The bounds no setting moves, the same on every server, for a check made away from one
    (a routers file); a number a setting bounds (a price) is only checked to be finite there."""
    bounds = default_bounds()
    bounds.table = {key: b for key, b in bounds.table.items() if b.setting is None}
    return bounds
