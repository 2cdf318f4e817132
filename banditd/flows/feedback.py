"""The Feedback flow: verify the token -> validate -> commit the event -> update the posterior."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from banditd import metrics
from banditd.budget.ledger import Budgets
from banditd.domain import FeedbackEvent, RouterSpec, check_finite, check_name
from banditd.domain.bounds import HARD_MAX_CALL_USD, Bounds, default_bounds
from banditd.errors import (
    AlreadyExists,
    BadData,
    BanditdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from banditd.flows.feedback_guard import FeedbackGuard
from banditd.flows.tokens import TokenClaims, TokenSigner
from banditd.flows.usage import UsageFlow
from banditd.state.live_routers import Catalog

log = structlog.get_logger(__name__)

THUMB_REWARDS = {"up": 1.0, "down": 0.0}
# Pairwise feedback (issue 21): (reward of the decision's arm, reward of its challenger).
PREFERENCE_REWARDS = {"arm": (1.0, 0.0), "challenger": (0.0, 1.0), "tie": (0.5, 0.5)}
MAX_REPORTED_ERRORS = 1000  # a StreamFeedback reply names at most this many refusals
DEFAULT_ATTEMPTS = 3  # tries to commit one Feedback while the database is unreachable
RETRY_INITIAL_S = 0.05
RETRY_MAX_S = 0.5


@dataclass(frozen=True)
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


def _preference(req: FeedbackInput, claims: TokenClaims) -> tuple[float, float] | None:
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


def _rated(event: FeedbackEvent) -> list[tuple[str, float]]:
    """(arm, reward) of each arm an event rates: a preference rates two."""
    if event.challenger is None or event.challenger_reward is None:
        return [(event.arm, event.reward)]
    return [(event.arm, event.reward), (event.challenger, event.challenger_reward)]


class Learner:
    def __init__(
        self,
        catalog: Catalog,
        signer: TokenSigner,
        clock: Callable[[], float] = time.time,
        *,
        guard: FeedbackGuard | None = None,
        attempts: int = DEFAULT_ATTEMPTS,
        budgets: Budgets | None = None,
        bounds: Bounds | None = None,
        usage: UsageFlow | None = None,
    ) -> None:
        self._usage = usage
        self._bounds = bounds or default_bounds()
        self._budgets = budgets
        self._catalog = catalog
        self._signer = signer
        self._clock = clock
        self._guard = guard or FeedbackGuard()
        self._attempts = attempts

    def _verified(self, req: FeedbackInput) -> TokenClaims:
        """The decision's claims once the token, tenant and numbers pass."""
        check_name("tenant", req.tenant)
        claims = self._signer.verify(req.decision_id)
        if claims.tenant != req.tenant:
            raise PermissionDenied("decision_id was not issued to this tenant")
        for name, value in (
            ("cost_usd", req.cost_usd),
            ("input_tokens", req.input_tokens),
            ("output_tokens", req.output_tokens),
            ("latency_ms", req.latency_ms),
            ("energy_wh", req.energy_wh),
            ("first_token_ms", req.first_token_ms),
        ):
            if value is not None:
                self._bounds.check(f"FeedbackRequest.{name}", value)
        now = self._clock()
        if now > claims.expires_at:
            raise FailedPrecondition(
                f"decision expired {now - claims.expires_at:.0f} s ago; "
                "feedback is no longer accepted"
            )
        return claims

    def event_of(self, req: FeedbackInput) -> FeedbackEvent:
        """The event a request would log; raises, writing nothing, when it must be refused."""
        if req.usage_only or req.first_token_ms is not None:  # see usage()
            raise InvalidArgument("usage_only", "usage reports go one by one through Feedback")
        claims = self._verified(req)
        pair = _preference(req, claims)
        reward = _reward(req) if pair is None else pair[0]
        expected = claims.expected_cost_usd + claims.challenger_cost_usd  # both arms served
        if req.cost_usd is None and not 0.0 <= expected <= HARD_MAX_CALL_USD:
            raise InvalidArgument(  # NaN fails the comparison too
                "cost_usd",
                f"required for this decision: its expected cost ({expected:g}) is not a "
                "usable number",
            )
        now = self._clock()
        return FeedbackEvent(
            event_id=0,
            router_id=claims.router_id,
            decision_id=claims.decision_id,
            arm=claims.arm,
            x=claims.x,
            reward=reward,
            cost_usd=expected if req.cost_usd is None else req.cost_usd,
            input_tokens=req.input_tokens,
            output_tokens=req.output_tokens,
            latency_ms=req.latency_ms,
            error=req.error,
            created_at=now,
            cost_reported=req.cost_usd is not None,
            energy_wh=req.energy_wh,
            challenger=None if pair is None else claims.challenger,
            challenger_reward=None if pair is None else pair[1],
        )

    async def feedback(self, req: FeedbackInput) -> FeedbackResult:
        """Returns only once the event is committed; raises before writing anything otherwise.

        A database that cannot be reached is retried a few times with backoff, then answered
        Unavailable: the event was not acknowledged, so the caller retries later (if the commit
        did land and only its answer was lost, the retry answers ALREADY_EXISTS).
        """
        try:
            event = self.event_of(req)
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(Unavailable),
                stop=stop_after_attempt(self._attempts),
                wait=wait_exponential_jitter(
                    multiplier=RETRY_INITIAL_S, max=RETRY_MAX_S, jitter=RETRY_INITIAL_S
                ),
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        async with self._catalog.locked(event.router_id) as state:
                            event = _router_thumbs(event, req, state.spec)
                            for arm, _ in _rated(event):
                                await self._guard.check_cap(state.spec, event.router_id, arm)
                            stored = await self._catalog.record(state, event)
            except Unavailable as exc:
                raise Unavailable(f"feedback not recorded: {exc.message}; retry later") from exc
        except BanditdError as exc:
            metrics.FEEDBACK.labels(refusal_kind(exc)).inc()
            raise
        event = stored if stored.signal == 0 else event  # a first event carries the usage
        for arm, reward in _rated(event):
            self._guard.observe(state.spec, event.router_id, arm, reward)
        _count_accepted(state.spec, [event])
        await self._settle([event])
        _log_event(req.tenant, state.spec.name, event, stored.event_id)
        return FeedbackResult(stored.event_id, event.reward, event.cost_usd)

    async def usage(self, req: FeedbackInput) -> FeedbackResult:
        """A usage report (issue 22): stored apart, never the rating (banditd.flows.usage)."""
        try:
            if self._usage is None:
                raise FailedPrecondition("this server does not take usage reports")
            cost = await self._usage.record(req, self._verified)
        except BanditdError as exc:
            metrics.FEEDBACK.labels(refusal_kind(exc)).inc()
            raise
        return FeedbackResult(0, 0.0, cost)

    async def feedback_batch(
        self, requests: Sequence[FeedbackInput], outcome: BatchOutcome, first_index: int = 0
    ) -> None:
        """Validate each request, commit the valid ones (one transaction per router), and count
        every request into ``outcome``. Returns only after the commits."""
        refused: list[tuple[int, BanditdError]] = []
        by_router: dict[int, list[tuple[int, FeedbackInput, FeedbackEvent]]] = {}
        for i, req in enumerate(requests, start=first_index):
            try:
                event = self.event_of(req)
            except BanditdError as exc:
                refused.append((i, exc))
                continue
            by_router.setdefault(event.router_id, []).append((i, req, event))
        for router_id, items in by_router.items():
            try:
                async with self._catalog.locked(router_id) as state:
                    mapped = [(i, _router_thumbs(e, req, state.spec)) for i, req, e in items]
                    kept = await self._within_caps(state.spec, mapped, refused)
                    bad: list[tuple[int, BadData]] = []
                    events = [e for _, e in kept]
                    added = set(await self._catalog.record_many(state, events, bad))
            except NotFound as exc:
                refused.extend((i, exc) for i, _, _ in items)
                continue
            accepted = [e for n, (_, e) in enumerate(kept) if n in added]
            for event in accepted:
                for arm, reward in _rated(event):
                    self._guard.observe(state.spec, router_id, arm, reward)
            _count_accepted(state.spec, accepted)
            await self._settle(accepted)
            outcome.accepted += len(accepted)
            refused.extend((kept[n][0], exc) for n, exc in bad)
            answered = added | {n for n, _ in bad}
            refused.extend(
                (i, AlreadyExists(f"decision {e.decision_id} already has feedback"))
                for n, (i, e) in enumerate(kept)
                if n not in answered
            )
        kinds: Counter[str] = Counter()
        for index, error in sorted(refused, key=lambda item: item[0]):
            outcome.refuse(index, error)
            kinds[refusal_kind(error)] += 1
        for kind, count in kinds.items():
            metrics.FEEDBACK.labels(kind).inc(count)
        log.info("feedback_batch", requests=len(requests), accepted=outcome.accepted)

    async def _within_caps(
        self,
        spec: RouterSpec,
        items: list[tuple[int, FeedbackEvent]],
        refused: list[tuple[int, BanditdError]],
    ) -> list[tuple[int, FeedbackEvent]]:
        """The items the client's per-arm feedback cap lets in; the rest go to ``refused``."""
        if not spec.feedback_cap_per_key:
            return items
        kept = []
        for i, event in items:
            try:
                for arm, _ in _rated(event):
                    await self._guard.check_cap(spec, event.router_id, arm)
            except ResourceExhausted as exc:
                refused.append((i, exc))
                continue
            kept.append((i, event))
        return kept

    async def _settle(self, events: Sequence[FeedbackEvent]) -> None:
        """Budgets charge reported costs instead of the expected ones (issue 6)."""
        reported = [(e.decision_id, e.cost_usd) for e in events if e.cost_reported]
        if self._budgets is not None and self._budgets.active and reported:
            try:
                await self._budgets.settle(reported)
            except Unavailable as exc:  # the events are committed: keep the expected cost
                log.warning("budget_settle_failed", events=len(reported), error=exc.message)


def _router_thumbs(event: FeedbackEvent, req: FeedbackInput, spec: RouterSpec) -> FeedbackEvent:
    """The event with a thumb mapped to the router's reward for it (up = 1, down = 0 unless the
    router says otherwise)."""
    if req.thumb is None:
        return event
    reward = spec.thumb_reward(req.thumb == "up")
    if reward == event.reward and math.copysign(1.0, reward) == math.copysign(1.0, event.reward):
        return event  # the default rewards: no copy
    return replace(event, reward=reward)


def _count_accepted(spec: RouterSpec, events: Sequence[FeedbackEvent]) -> None:
    metrics.FEEDBACK.labels("accepted").inc(len(events))
    spend: dict[str, float] = {}
    for event in events:
        spend[event.arm] = spend.get(event.arm, 0.0) + event.cost_usd
    for arm, usd in spend.items():
        metrics.SPEND.labels(spec.tenant, spec.name, arm).inc(usd)
    for event in events:
        metrics.REWARD.labels(spec.tenant, spec.name, event.arm).observe(event.reward)
        if event.latency_ms is not None:
            metrics.REPORTED_LATENCY.labels(spec.tenant, spec.name, event.arm).observe(
                event.latency_ms / 1000.0
            )
        if event.energy_wh is not None:
            metrics.ENERGY.labels(spec.tenant, spec.name, event.arm).inc(event.energy_wh)


def _log_event(tenant: str, router: str, event: FeedbackEvent, event_id: int) -> None:
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
