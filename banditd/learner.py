"""The Feedback flow: verify the token -> validate -> commit the event -> update the posterior."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from banditd.catalog import Catalog
from banditd.domain import FeedbackEvent, check_finite, check_name
from banditd.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from banditd.token import TokenSigner

log = structlog.get_logger(__name__)

THUMB_REWARDS = {"up": 1.0, "down": 0.0}


@dataclass(frozen=True)
class FeedbackInput:
    tenant: str
    decision_id: str
    reward: float | None = None
    thumb: str | None = None  # "up" | "down"
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_ms: float | None = None
    error: bool = False


@dataclass(frozen=True)
class FeedbackResult:
    event_id: int
    reward: float
    cost_usd: float


def _reward(req: FeedbackInput) -> float:
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


class Learner:
    def __init__(
        self, catalog: Catalog, signer: TokenSigner, clock: Callable[[], float] = time.time
    ) -> None:
        self._catalog = catalog
        self._signer = signer
        self._clock = clock

    async def feedback(self, req: FeedbackInput) -> FeedbackResult:
        """Returns only once the event is committed; raises before writing anything otherwise."""
        check_name("tenant", req.tenant)
        claims = self._signer.verify(req.decision_id)
        if claims.tenant != req.tenant:
            raise PermissionDenied("decision_id was not issued to this tenant")
        reward = _reward(req)
        if req.cost_usd is not None:
            check_finite("cost_usd", req.cost_usd)
        for name, count in (
            ("input_tokens", req.input_tokens),
            ("output_tokens", req.output_tokens),
        ):
            if count is not None and count < 0:
                raise InvalidArgument(name, f"must be >= 0, got {count}")
        if req.latency_ms is not None:
            check_finite("latency_ms", req.latency_ms)
        now = self._clock()
        if now > claims.expires_at:
            raise FailedPrecondition(
                f"decision expired {now - claims.expires_at:.0f} s ago; "
                "feedback is no longer accepted"
            )
        cost = claims.expected_cost_usd if req.cost_usd is None else req.cost_usd
        event = FeedbackEvent(
            event_id=0,
            router_id=claims.router_id,
            decision_id=claims.decision_id,
            arm=claims.arm,
            x=claims.x,
            reward=reward,
            cost_usd=cost,
            input_tokens=req.input_tokens,
            output_tokens=req.output_tokens,
            latency_ms=req.latency_ms,
            error=req.error,
            created_at=now,
            cost_reported=req.cost_usd is not None,
        )
        async with self._catalog.locked(claims.router_id) as state:
            event_id = await self._catalog.record(state, event)
        log.info(
            "feedback",
            tenant=req.tenant,
            router=state.spec.name,
            arm=claims.arm,
            decision_id=claims.decision_id,
            event_id=event_id,
            reward=reward,
            cost_usd=cost,
            expected_cost_usd=claims.expected_cost_usd,
            error=req.error,
        )
        return FeedbackResult(event_id, reward, cost)
