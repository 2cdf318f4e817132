"""What a Feedback request says, and the rules that read it: its reward (thumb, reward or
preference), the arms it rates, and how refusals are counted."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

import structlog

from banditd import metrics
from banditd.domain import FeedbackEvent, RouterSpec, check_finite, record
from banditd.domain.bounds import Bounds
from banditd.errors import (
    AlreadyExists,
    BadData,
    BanditdError,
    FailedPrecondition,
    InvalidArgument,
)
from banditd.flows.tokens import TokenClaims

log = structlog.get_logger("banditd.flows.feedback")

THUMB_REWARDS = {"up": 1.0, "down": 0.0}
# Pairwise feedback (issue 21): (reward of the decision's arm, reward of its challenger).
PREFERENCE_REWARDS = {"arm": (1.0, 0.0), "challenger": (0.0, 1.0), "tie": (0.5, 0.5)}
MAX_REPORTED_ERRORS = 1000  # a StreamFeedback reply names at most this many refusals
MAX_KEY_CHARS = 128  # FeedbackRequest.idempotency_key (the column's width)


@record
class FeedbackInput:
    tenant: str
    decision_id: str
    reward: float | None = None
    thumb: str | None = None  # "up" | "down"; anything else is refused
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_ms: float | None = None
    error: bool = False
    energy_wh: float | None = None
    usage_only: bool = False  # a usage report (issue 22): no rating, see Learner.usage
    first_token_ms: float | None = None
    preference: str | None = None  # "arm" | "challenger" | "tie"; anything else is refused
    idempotency_key: str | None = None  # names the event: a resend is answered as recorded


_NONE = type(None)
_KINDS: dict[str, tuple[type, ...]] = {  # what JSON gives back for each field's type
    "str": (str,),
    "str | None": (str, _NONE),
    "float | None": (float, int, _NONE),
    "int | None": (int, _NONE),
    "bool": (bool,),
}
_PARKED_KINDS = {f.name: _KINDS[str(f.type)] for f in fields(FeedbackInput)}
_REQUIRED = {f.name for f in fields(FeedbackInput) if f.default is MISSING}


def parked_input(request: Any) -> FeedbackInput:
    """A parked request (``asdict`` of its FeedbackInput, banditd.store.pending) rebuilt; raises
    BadData where it cannot be: not a JSON object, a field missing or of the wrong type, or a
    field this version lacks (a newer replica's) that is set. Such a field left unset (None or
    false) says nothing: dropped."""
    if not isinstance(request, Mapping):
        raise BadData("parked feedback: its request is not a JSON object")
    kept: dict[str, Any] = {}
    for name, value in request.items():
        kinds = _PARKED_KINDS.get(name)
        if kinds is None:
            if value is None or value is False:
                continue
            raise BadData(f"parked feedback: field {name!r} is unknown to this version")
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise BadData(f"parked feedback: field {name!r} has a value of the wrong type")
        kept[name] = value
    if missing := _REQUIRED - kept.keys():
        raise BadData(f"parked feedback: field {sorted(missing)[0]!r} is missing")
    return FeedbackInput(**kept)


def refusal_kind(exc: BanditdError) -> str:
    """How a refused feedback event is counted: duplicate, expired or invalid."""
    if isinstance(exc, AlreadyExists):
        return "duplicate"
    if isinstance(exc, FailedPrecondition):
        return "expired"
    return "invalid"


@dataclass
class BatchOutcome:
    """Counts of a batch of feedback, with the first few refusals (index, kind, message)."""

    accepted: int = 0
    duplicate: int = 0
    expired: int = 0
    invalid: int = 0
    errors: list[tuple[int, str, str]] = field(default_factory=list)

    def refuse(self, index: int, exc: BanditdError) -> None:
        kind = refusal_kind(exc)
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append((index, kind, exc.message))


@dataclass(frozen=True)
class FeedbackResult:
    event_id: int
    reward: float
    cost_usd: float


def reward_of(req: FeedbackInput) -> float:
    if req.thumb is not None:
        if req.thumb not in THUMB_REWARDS:
            raise InvalidArgument("thumb", "must be THUMB_UP or THUMB_DOWN")
        return THUMB_REWARDS[req.thumb]
    if req.reward is None:
        raise InvalidArgument("signal", "set either thumb or reward")
    check_finite("reward", req.reward)
    if not 0.0 <= req.reward <= 1.0:
        raise InvalidArgument("reward", f"must be in [0, 1], got {req.reward:g}")
    return req.reward


def preference_of(req: FeedbackInput, claims: TokenClaims) -> tuple[float, float] | None:
    """(arm reward, challenger reward) of a preference; None for a thumb or a reward. A decision
    made with compare takes a preference and nothing else, and only such a decision takes one."""
    if req.preference is None:
        if claims.challenger is not None:
            raise InvalidArgument(
                "preference", "this decision compared two arms: rate it with a preference"
            )
        return None
    if req.preference not in PREFERENCE_REWARDS:
        raise InvalidArgument(
            "preference",
            f"must be PREFER_ARM, PREFER_CHALLENGER or PREFER_TIE, got {req.preference}",
        )
    if claims.challenger is None:
        raise InvalidArgument(
            "preference", "this decision has no challenger (Select it with compare set)"
        )
    if req.thumb is not None or req.reward is not None:
        raise InvalidArgument("preference", "excludes thumb and reward: it rates both arms")
    for name, value in (
        ("input_tokens", req.input_tokens),
        ("output_tokens", req.output_tokens),
        ("latency_ms", req.latency_ms),
        ("energy_wh", req.energy_wh),
        ("error", req.error or None),
    ):
        if value is not None:
            raise InvalidArgument(
                name, "a preference carries no per-arm measurement (only cost_usd, both arms')"
            )
    return PREFERENCE_REWARDS[req.preference]


def rated(event: FeedbackEvent) -> list[tuple[str, float]]:
    """(arm, reward) of each arm an event rates: a preference rates two."""
    if event.challenger is None or event.challenger_reward is None:
        return [(event.arm, event.reward)]
    return [(event.arm, event.reward), (event.challenger, event.challenger_reward)]


def router_thumbs(event: FeedbackEvent, req: FeedbackInput, spec: RouterSpec) -> FeedbackEvent:
    """The event with a thumb mapped to the router's reward for it (up = 1, down = 0 unless the
    router says otherwise)."""
    if req.thumb is None:
        return event
    reward = spec.thumb_reward(req.thumb == "up")
    if reward == event.reward and math.copysign(1.0, reward) == math.copysign(1.0, event.reward):
        return event  # the default rewards: no copy
    return replace(event, reward=reward)


def count_accepted(spec: RouterSpec, events: Sequence[FeedbackEvent]) -> None:
    """The accepted events' metrics, each arm's series looked up once per batch."""
    metrics.FEEDBACK.labels("accepted").inc(len(events))
    by_arm: dict[str, list[FeedbackEvent]] = {}
    for event in events:
        by_arm.setdefault(event.arm, []).append(event)
    for arm, group in by_arm.items():
        spend = 0.0
        for event in group:  # in the order of the events, as one sum over the batch
            spend += max(event.cost_usd, 0.0)  # a later signal's lower cost: a counter cannot fall
        metrics.SPEND.labels(spec.tenant, spec.name, arm).inc(spend)
        reward = metrics.REWARD.labels(spec.tenant, spec.name, arm)
        for event in group:
            reward.observe(event.reward)
        latencies = [e.latency_ms for e in group if e.latency_ms is not None]
        if latencies:
            latency = metrics.REPORTED_LATENCY.labels(spec.tenant, spec.name, arm)
            for ms in latencies:
                latency.observe(ms / 1000.0)
        energies = [e.energy_wh for e in group if e.energy_wh is not None]
        if energies:
            energy = metrics.ENERGY.labels(spec.tenant, spec.name, arm)
            for wh in energies:
                energy.inc(wh)


def log_event(tenant: str, router: str, event: FeedbackEvent, event_id: int) -> None:
    log.info(
        "feedback",
        tenant=tenant,
        router=router,
        arm=event.arm,
        decision_id=event.decision_id,
        event_id=event_id,
        reward=event.reward,
        cost_usd=event.cost_usd,
        cost_reported=event.cost_reported,
        error=event.error,
    )


def check_numbers(bounds: Bounds, req: FeedbackInput) -> None:
    """The request's measurements against the edge bounds (banditd.domain.bounds)."""
    for name, value in (
        ("cost_usd", req.cost_usd),
        ("input_tokens", req.input_tokens),
        ("output_tokens", req.output_tokens),
        ("latency_ms", req.latency_ms),
        ("first_token_ms", req.first_token_ms),
        ("energy_wh", req.energy_wh),
    ):
        if value is not None:
            bounds.check(f"FeedbackRequest.{name}", value)


def check_key(key: str | None) -> None:
    if key is not None and len(key) > MAX_KEY_CHARS:
        raise InvalidArgument(
            "idempotency_key", f"at most {MAX_KEY_CHARS} characters, got {len(key)}"
        )


def check_expiry(claims: TokenClaims, now: float) -> None:
    if now > claims.expires_at:
        raise FailedPrecondition(
            f"decision expired {now - claims.expires_at:.0f} s ago; feedback is no longer accepted"
        )
