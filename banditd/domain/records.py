"""What the flows produce and consume: ranked arms, decisions, shadow picks, feedback events,
and the rule that combines a decision's signals into its reward."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar, dataclass_transform

import numpy as np
import numpy.typing as npt

from banditd.domain.specs import ArmSpec

FloatArray = npt.NDArray[np.float64]
T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def record(cls: type[T]) -> type[T]:
    """A value built once per call on the hot paths (Select, feedback): a frozen dataclass to
    the type checker (mypy refuses an assignment to a field), a slotted plain one at run time.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``: 2.1 us
    for FeedbackEvent's 22 fields against 0.23 us here, and a feedback event builds six such
    records (issue 20). Nothing in banditd assigns to a record's field after it is built.
    """
    return dataclass(slots=True)(cls)


class RankedArm(NamedTuple):
    """One arm of a decision's ranking. A named tuple: every Select builds one per eligible arm,
    at half the cost of a frozen dataclass's (issue 20)."""

    arm: str
    score: float
    quality_score: float
    expected_cost_usd: float
    expected_latency_ms: float = 0.0
    expected_energy_wh: float = 0.0


def ranking_entry(ranking: Sequence[RankedArm], arm: str | None) -> RankedArm | None:
    """The ranking's entry of ``arm``; None for no arm (a decision without a challenger) or one
    the ranking does not hold."""
    if arm is None:
        return None
    return next((r for r in ranking if r.arm == arm), None)


@record
class Decision:
    """One Select answer, as logged and as returned (again, for a repeated request_id)."""

    decision_id: str
    router_id: int
    tenant: str
    router: str
    request_id: str | None
    arm: str
    ranking: tuple[RankedArm, ...]
    propensity: float
    explored: bool
    expected_cost_usd: float
    token: str
    expires_at: float
    created_at: float
    policy: str
    router_version: int
    seed: int
    candidates: tuple[str, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)
    x: FloatArray | None = None  # the context scored, shape (dim,); None in rows logged before 0004
    shadows: tuple[ShadowPick, ...] = ()  # what each shadow policy would have chosen
    # Budgets (issue 6): the pacer's price of a dollar and what the budget did (logged: 0018).
    budget_price: float = 0.0
    budget_outcome: str = ""
    # The request's own cost_weight (None: it had none, the router's default applied), so that
    # off-policy evaluation weighs each decision as Select did (logged since migration 0020).
    cost_weight: float | None = None
    # Its own latency_weight and energy_weight likewise (None: none, the router's defaults
    # applied; logged since migration 0022).
    latency_weight: float | None = None
    energy_weight: float | None = None
    context_version: str | None = None  # the featurisation of x (ContextPipeline.version)
    arm_specs: tuple[ArmSpec, ...] = ()  # the router's arms when decided (not logged)
    challenger: str | None = None  # SelectRequest.compare's second arm (pairwise feedback)

    def join_record(self) -> JoinRecord:
        """What feedback on this decision takes from it (``JoinRecord``)."""
        rival = ranking_entry(self.ranking, self.challenger)
        return JoinRecord(
            decision_id=self.decision_id,
            router_id=self.router_id,
            tenant=self.tenant,
            arm=self.arm,
            x=self.x,
            propensity=self.propensity,
            expected_cost_usd=self.expected_cost_usd,
            challenger=self.challenger,
            challenger_cost_usd=0.0 if rival is None else rival.expected_cost_usd,
            router_version=self.router_version,
            context_version=self.context_version,
        )


@record
class JoinRecord:
    """What feedback with a compact token takes from its decision (banditd.flows.feedback_join):
    whose it is, the arm served and its challenger, the context and the exact propensity and
    expected costs (the token has them as float32). The decisions table gives it without
    decoding a whole decision (banditd.store.feedback_decisions); a decision in memory gives
    ``Decision.join_record``."""

    decision_id: str
    router_id: int
    tenant: str
    arm: str
    x: FloatArray | None  # None in rows logged before 0004
    propensity: float
    expected_cost_usd: float
    challenger: str | None = None
    challenger_cost_usd: float = 0.0  # the challenger's expected cost; 0 without one
    router_version: int | None = None  # the router's version when it decided
    context_version: str | None = None  # the featurisation of x (Decision's)


@dataclass(frozen=True)
class ShadowPick:
    """A shadow policy's choice at one decision and its probability of the arm served."""

    shadow: str
    arm: str
    live_arm_probability: float


@record
class FeedbackEvent:
    """One row of the feedback event log, the source of truth for every posterior.

    x: context vector, shape (dim,), float64.
    """

    event_id: int
    router_id: int
    decision_id: str
    arm: str
    x: FloatArray
    reward: float
    cost_usd: float
    input_tokens: int | None
    output_tokens: int | None
    latency_ms: float | None
    error: bool
    created_at: float
    offline: bool = False
    cost_reported: bool = True
    defaulted: bool = False
    # The decision's signals so far, counting from 0. A later signal (routers that combine
    # "last" or "mean") changes the decision's effective reward by reward_delta: the posterior
    # adds reward_delta * x to b and leaves A alone; cost_usd is then the change in settled cost.
    signal: int = 0
    effective_reward: float | None = None  # after this signal; None: reward
    reward_delta: float | None = None  # None for signal 0
    energy_wh: float | None = None  # measured energy of the call (issue 21)
    # Pairwise feedback (issue 21): the decision's challenger and its reward at the same x.
    challenger: str | None = None
    challenger_reward: float | None = None
    # The router version of the event's decision (None: unknown). The posterior skips an event
    # decided before the router's context last changed (Prior.context_since).
    decision_version: int | None = None
    # The featurisation of x (its decision's context_version, the warm start's pipeline's; None:
    # unknown). The posterior skips an event whose x other encoder weights built (Prior.weights).
    context_version: str | None = None
    # The key its Feedback named the event by (FeedbackRequest.idempotency_key; None: none): a
    # resend with it is answered as this event. The last field: the log reads events by position.
    idempotency_key: str | None = None

    def decided_since(self, version: int) -> bool:
        """Whether the event's decision was made at router ``version`` or later (an unknown
        version counts as 0: before any change of the router's context)."""
        return (self.decision_version or 0) >= version

    def built_with(self, weights: str) -> bool:
        """Whether the event's x was built by the encoder weights ``weights`` (``built_with``)."""
        return built_with(self.context_version, weights)


def built_with(context_version: str | None, weights: str) -> bool:
    """Whether x logged under ``context_version`` (ContextPipeline.version) was built by the
    encoder weights ``weights`` (ContextPipeline.weights: that version's part before its first
    ':'). Unknown on either side (None or "": logged before migration 0021, x given by the
    caller) counts as yes: a router keeps what it learnt before versions were logged."""
    return not weights or not context_version or context_version.partition(":")[0] == weights


def combined_reward(rule: str, rewards: Sequence[float]) -> float:
    """A decision's effective reward from its signals in arrival order (at least one)."""
    if rule == "first":
        return rewards[0]
    if rule == "last":
        return rewards[-1]
    return sum(rewards) / len(rewards)


def signal_rule(rule: str) -> Callable[[Sequence[float]], float] | None:
    """A router's combine rule as the event log takes it: None under "first" (a decision takes
    one signal), else ``combined_reward`` under the rule."""
    return None if rule == "first" else functools.partial(combined_reward, rule)
