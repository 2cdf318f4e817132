"""What the client returns: small frozen records decoded from the responses (pure functions).

Each keeps the response it came from in ``raw`` (left out of comparisons and repr), for a field
added to the proto before it is wrapped here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from banditd.v1 import banditd_pb2 as pb

MAX_UPLOAD_ERRORS = 1000  # refusals an UploadSummary keeps, as the server's replies do


@dataclass(frozen=True)
class RankedArm:
    arm: str
    score: float  # the utility ranked by: quality_score - cost_weight * expected_cost_usd
    expected_cost_usd: float
    quality_score: float
    expected_latency_ms: float = 0.0  # the latency head's prediction (issue 21)
    expected_energy_wh: float = 0.0  # the energy head's prediction
    # The arm's upstream and prices (issue 22, for the gateway); a key is never sent.
    upstream_base_url: str = ""
    upstream_model: str = ""
    upstream_api_key_env: str = ""
    input_price_per_mtok: float = 0.0
    output_price_per_mtok: float = 0.0


@dataclass(frozen=True)
class Decision:
    """Select's answer. Send ``decision_id`` back in feedback; on a failure of ``arm``, try
    ``fallbacks`` in order."""

    tenant: str
    router: str
    decision_id: str
    arm: str
    ranking: tuple[RankedArm, ...]  # every eligible arm, best first
    propensity: float
    explored: bool
    expected_cost_usd: float
    expires_at_unix: int  # feedback is refused after this
    budget_price: float
    budget_outcome: str  # "", "paced", "fallback" or "over_budget"
    context_version: str
    raw: pb.SelectResponse = field(compare=False, repr=False)
    challenger: str = ""  # with compare: the second arm to serve side by side ("" for none)

    @property
    def fallbacks(self) -> tuple[str, ...]:
        """The other eligible arms, in ranking order."""
        return tuple(r.arm for r in self.ranking if r.arm != self.arm)


def _same_named(cls: type[Any], msg: Message) -> dict[str, Any]:
    """The fields of ``cls`` that ``msg`` has, as keyword arguments (scalars only)."""
    names = msg.DESCRIPTOR.fields_by_name
    return {f.name: getattr(msg, f.name) for f in dataclasses.fields(cls) if f.name in names}


def decision_from_proto(msg: pb.SelectResponse, tenant: str, router: str) -> Decision:
    ranking = tuple(RankedArm(**_same_named(RankedArm, r)) for r in msg.ranking)
    return Decision(
        **_same_named(Decision, msg) | {"ranking": ranking},
        tenant=tenant,
        router=router,
        raw=msg,
    )


@dataclass(frozen=True)
class FeedbackResult:
    """Feedback's answer: the event's position in the router's log, the reward and the cost
    it recorded.

    A retry whose first attempt was committed (its answer lost) gets that attempt's answer: the
    event's idempotency key is the same on every attempt. ``already_recorded``: a retry was
    answered ALREADY_EXISTS, which is taken as success (from a server older than the keys, most
    likely the first attempt committed; from a current one, another feedback for the decision
    came first). The event's id, reward and cost are then unknown (None), and ``raw`` is None.
    """

    event_id: int | None
    reward: float | None
    cost_usd: float | None
    already_recorded: bool = False
    raw: pb.FeedbackResponse | None = field(default=None, compare=False, repr=False)


def feedback_from_proto(msg: pb.FeedbackResponse) -> FeedbackResult:
    return FeedbackResult(msg.event_id, msg.reward, msg.cost_usd, raw=msg)


RECORDED_EARLIER = FeedbackResult(None, None, None, already_recorded=True)


@dataclass(frozen=True)
class UploadError:
    index: int  # the event's position in the iterable given to upload_feedback, from 0
    kind: str  # "duplicate", "expired" or "invalid"
    message: str


@dataclass(frozen=True)
class UploadSummary:
    """upload_feedback's counts over all its calls, and the first refusals.

    ``resent``: events sent again after a call failed with UNAVAILABLE. Those of them the
    failed call had committed count as ``duplicate`` (never twice as accepted): they are sent
    again with their idempotency keys.
    """

    accepted: int = 0
    duplicate: int = 0
    expired: int = 0
    invalid: int = 0
    errors: tuple[UploadError, ...] = ()
    resent: int = 0

    def __add__(self, other: UploadSummary) -> UploadSummary:
        return UploadSummary(
            accepted=self.accepted + other.accepted,
            duplicate=self.duplicate + other.duplicate,
            expired=self.expired + other.expired,
            invalid=self.invalid + other.invalid,
            errors=(self.errors + other.errors)[:MAX_UPLOAD_ERRORS],
            resent=self.resent + other.resent,
        )


def upload_from_proto(
    msg: pb.StreamFeedbackResponse, positions: Sequence[int], attempts: int
) -> UploadSummary:
    """One call's reply; ``positions`` maps the server's error indexes (events in the order
    sent) to positions in the caller's iterable."""
    return UploadSummary(
        accepted=msg.accepted,
        duplicate=msg.duplicate,
        expired=msg.expired,
        invalid=msg.invalid,
        errors=tuple(UploadError(positions[e.index], e.kind, e.message) for e in msg.errors),
        resent=len(positions) * (attempts - 1),
    )
