"""The Feedback flow: verify the token -> find its decision -> validate -> commit the event ->
update the posterior. A compact token's decision not visible yet: validate -> park (committed),
joined later by banditd.flows.joiner through the same validation and commit."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace

import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from banditd import metrics
from banditd.domain import FeedbackEvent, JoinRecord, check_name
from banditd.domain.bounds import HARD_MAX_CALL_USD, Bounds, default_bounds
from banditd.errors import (
    BadData,
    BanditdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Recorded,
    Unavailable,
)
from banditd.flows.feedback_guard import FeedbackGuard
from banditd.flows.feedback_input import (
    BatchOutcome,
    FeedbackInput,
    FeedbackResult,
    check_expiry,
    check_key,
    check_numbers,
    count_accepted,
    log_event,
    parked_input,
    preference_of,
    rated,
    refusal_kind,
    reward_of,
    router_thumbs,
)
from banditd.flows.feedback_join import DecisionFinder, Waiting, joined, park, waiting_duplicate
from banditd.flows.tokens import TokenClaims, TokenSigner
from banditd.flows.usage import UsageFlow, check_usage_only
from banditd.state.live_routers import Catalog
from banditd.store.pending import Joinable, Parked

log = structlog.get_logger(__name__)

DEFAULT_ATTEMPTS = 3  # tries to commit one Feedback while the database is unreachable
RETRY_INITIAL_S = 0.05
RETRY_MAX_S = 0.5


class Learner:
    def __init__(
        self,
        catalog: Catalog,
        signer: TokenSigner,
        clock: Callable[[], float] = time.time,
        *,
        guard: FeedbackGuard | None = None,
        attempts: int = DEFAULT_ATTEMPTS,
        bounds: Bounds | None = None,
        decisions: DecisionFinder | None = None,
        usage: UsageFlow | None = None,
    ) -> None:
        self._decisions = decisions
        self._usage = usage
        self._bounds = bounds or default_bounds()
        self._catalog = catalog
        self._signer = signer
        self._clock = clock
        self._guard = guard or FeedbackGuard()
        self._attempts = attempts

    def claims_of(self, req: FeedbackInput) -> TokenClaims:
        """The claims of the request's token, signed for its tenant; raises otherwise (``_take``
        does the same, checking a batch's tenant name once)."""
        check_name("tenant", req.tenant)
        return self._signer.verify(req.decision_id, req.tenant)

    async def _find(self, claims: Sequence[TokenClaims]) -> tuple[dict[str, JoinRecord], set[str]]:
        if self._decisions is None:
            return {}, set()
        return await self._decisions.find(claims)

    def event_of(
        self,
        req: FeedbackInput,
        claims: TokenClaims,
        decision: JoinRecord | None = None,
        received_at: float | None = None,
    ) -> FeedbackEvent | Waiting:
        """The event a request would log: with a compact token, its decision joined (or, none
        given, what to park until it is visible); raises, writing nothing, when it must be
        refused. ``received_at``: when a parked request was accepted (its expiry was checked
        then)."""
        if decision is not None and claims.x is None:
            claims = joined(claims, decision)
        if req.usage_only or req.first_token_ms is not None:  # see usage()
            raise InvalidArgument("usage_only", "usage reports go one by one through Feedback")
        pair = preference_of(req, claims)
        reward = reward_of(req) if pair is None else pair[0]
        check_numbers(self._bounds, req)
        check_key(req.idempotency_key)
        expected = claims.expected_cost_usd + claims.challenger_cost_usd  # both arms served
        if req.cost_usd is None and not 0.0 <= expected <= HARD_MAX_CALL_USD:
            raise InvalidArgument(  # NaN fails the comparison too
                "cost_usd",
                f"required for this decision: its expected cost ({expected:g}) is not a "
                "usable number",
            )
        now = self._clock() if received_at is None else received_at
        check_expiry(claims, now)
        cost_usd = expected if req.cost_usd is None else req.cost_usd
        if claims.x is None:
            request = asdict(req)  # the key in a column: an older replica may join the row
            key = request.pop("idempotency_key")
            parked = Parked(claims.decision_id, claims.router_id, req.tenant, request, now, key)
            rival = None if claims.challenger is None else claims.challenger_index
            return Waiting(parked, reward, cost_usd, claims.arm_index, rival)
        return FeedbackEvent(
            event_id=0,
            router_id=claims.router_id,
            decision_id=claims.decision_id,
            arm=claims.arm,
            x=claims.x,
            reward=reward,
            cost_usd=cost_usd,
            input_tokens=req.input_tokens,
            output_tokens=req.output_tokens,
            latency_ms=req.latency_ms,
            error=req.error,
            created_at=now,
            cost_reported=req.cost_usd is not None,
            energy_wh=req.energy_wh,
            challenger=None if pair is None else claims.challenger,
            challenger_reward=None if pair is None else pair[1],
            decision_version=claims.router_version,
            context_version=None if decision is None else decision.context_version,  # v1: None
            idempotency_key=req.idempotency_key,
        )

    async def _usage_claims(self, req: FeedbackInput) -> TokenClaims:
        """A usage report's decision: token, tenant, numbers and expiry checked; a compact
        token's arm named from its decision, or while that is not visible, from the router."""
        claims = self.claims_of(req)
        check_numbers(self._bounds, req)
        check_expiry(claims, self._clock())
        if claims.x is not None:
            return claims
        found, _ = await self._find([claims])
        if claims.decision_id in found:
            return joined(claims, found[claims.decision_id])
        async with self._catalog.locked(claims.router_id) as state:
            arms = state.spec.arms
        if claims.arm_index >= len(arms):
            raise FailedPrecondition("the decision's arm is no longer in its router")
        return replace(claims, arm=arms[claims.arm_index].name)

    async def usage(self, req: FeedbackInput) -> FeedbackResult:
        """A usage report (issue 22): stored apart, never the rating (banditd.flows.usage)."""
        try:
            if self._usage is None:
                raise FailedPrecondition("this server does not take usage reports")
            check_usage_only(req)
            cost = await self._usage.record(req, await self._usage_claims(req))
        except BanditdError as exc:
            metrics.FEEDBACK.labels(refusal_kind(exc)).inc()
            raise
        return FeedbackResult(0, 0.0, cost)

    async def feedback(self, req: FeedbackInput) -> FeedbackResult:
        """One request, a batch of one (``_take``): returns only once its event is committed
        (or parked), raises its refusal, writing nothing, otherwise.

        A database that cannot be reached is retried a few times with backoff, then answered
        Unavailable: the event was not acknowledged, so the caller retries later (if the commit
        did land and only its answer was lost, a retry with the request's idempotency key is
        answered as that event; one without a key answers ALREADY_EXISTS under combine
        "first", and under "last" or "mean" is the decision's next signal).
        """
        try:
            async for attempt in self._retrying():
                with attempt:
                    results, refused = await self._take([req])
        except BanditdError as exc:
            metrics.FEEDBACK.labels(refusal_kind(exc)).inc()
            if isinstance(exc, Unavailable):
                raise Unavailable(f"feedback not recorded: {exc.message}; retry later") from exc
            raise
        if refused:
            metrics.FEEDBACK.labels(refusal_kind(refused[0][1])).inc()
            if isinstance(recorded := refused[0][1], Recorded):  # a resend: answered as then
                return FeedbackResult(recorded.event_id, recorded.reward, recorded.cost_usd)
            raise refused[0][1]
        return results[0]

    async def feedback_batch(
        self, requests: Sequence[FeedbackInput], outcome: BatchOutcome, first_index: int = 0
    ) -> None:
        """Take each request (``_take``) and count it into ``outcome``. Returns only after the
        commits."""
        results, refused = await self._take(requests, first_index)
        outcome.accepted += len(results)
        kinds: Counter[str] = Counter()
        for index, error in sorted(refused, key=lambda item: item[0]):
            outcome.refuse(index, error)
            kinds[refusal_kind(error)] += 1
        for kind, count in kinds.items():
            metrics.FEEDBACK.labels(kind).inc(count)
        log.info("feedback_batch", requests=len(requests), accepted=outcome.accepted)

    async def _take(
        self, requests: Sequence[FeedbackInput], first_index: int = 0
    ) -> tuple[dict[int, FeedbackResult], list[tuple[int, BanditdError]]]:
        """Validate each request, commit the valid ones (one transaction per router, and one
        for those parked): the result of each request taken and why each other one was refused,
        by index (from ``first_index``)."""
        refused: list[tuple[int, BanditdError]] = []
        by_router: dict[int, list[tuple[int, FeedbackInput, FeedbackEvent]]] = {}
        waiting: list[tuple[int, Waiting]] = []
        verified: list[tuple[int, FeedbackInput, TokenClaims]] = []
        tenant = None  # the last tenant name checked (a batch is mostly one tenant's)
        for i, req in enumerate(requests, start=first_index):
            try:
                if req.tenant != tenant:
                    tenant = check_name("tenant", req.tenant)
                verified.append((i, req, self._signer.verify(req.decision_id, req.tenant)))
            except BanditdError as exc:
                refused.append((i, exc))
        found, parked = await self._find([c for _, _, c in verified])
        for i, req, claims in verified:
            try:
                decision = found.get(claims.decision_id)
                if claims.decision_id in parked:  # parking answers a resend of its key (park)
                    if req.idempotency_key is None:
                        raise waiting_duplicate(claims.decision_id)
                    decision = None
                prepared = self.event_of(req, claims, decision)
            except BanditdError as exc:
                refused.append((i, exc))
                continue
            if isinstance(prepared, Waiting):
                waiting.append((i, prepared))
            else:
                by_router.setdefault(prepared.router_id, []).append((i, req, prepared))
        results = await park(self._catalog, self._guard, self._decisions, waiting, refused)
        for router_id, items in by_router.items():
            results.update(await self._commit(router_id, items, refused))
        return results, refused

    async def join(
        self, items: Sequence[Joinable], now: float
    ) -> tuple[list[int], list[tuple[int, BanditdError]]]:
        """Commit parked feedback whose decision is visible now, through the same validation
        (but for the expiry, checked when it was accepted) and commit as any other feedback;
        the ids of the parked rows joined (marked so by the commit, or whose event the log had
        by its idempotency key), and of those refused, with why. A row another join took
        meanwhile is in neither."""
        refused: list[tuple[int, BanditdError]] = []
        by_router: dict[int, list[tuple[int, FeedbackInput, FeedbackEvent]]] = {}
        for item in items:
            try:
                req = parked_input(item.request)  # refused, not retried, where it cannot be
                req = replace(req, idempotency_key=item.idempotency_key)
                claims = self.claims_of(req)
                event = self.event_of(req, claims, item.decision, item.received_at)
                if isinstance(event, Waiting):  # cannot be: the decision is given
                    raise BadData("parked feedback still has no decision")
            except BanditdError as exc:
                refused.append((item.pending_id, exc))
                continue
            by_router.setdefault(event.router_id, []).append((item.pending_id, req, event))
        joined_ids: list[int] = []
        for router_id, group in by_router.items():
            try:
                joined_ids += await self._commit(router_id, group, refused, joined_at=now)
            except Unavailable as exc:  # released, joined in a later round
                refused.extend((i, exc) for i, _, _ in group)
        joined_ids += [i for i, exc in refused if isinstance(exc, Recorded)]
        return joined_ids, [(i, exc) for i, exc in refused if not isinstance(exc, Recorded)]

    async def _commit(
        self,
        router_id: int,
        items: list[tuple[int, FeedbackInput, FeedbackEvent]],
        refused: list[tuple[int, BanditdError]],
        joined_at: float | None = None,
    ) -> dict[int, FeedbackResult]:
        """Commit one router's events in one transaction; the result of each accepted, by
        index (the others are added to ``refused``). ``joined_at``: parked feedback joined now,
        each applied only where this commit takes its parked row (``EventLog.append``), not
        under the client's feedback cap (it was counted when parked). A lone event is logged
        in full."""
        capped = joined_at is None
        try:
            async with self._catalog.locked(router_id) as state:
                mapped = [(i, router_thumbs(e, req, state.spec)) for i, req, e in items]
                kept = self._guard.within_caps(state.spec, mapped, refused) if capped else mapped
                bad: list[tuple[int, BanditdError]] = []
                committed: list[int] = []
                try:
                    events = [e for _, e in kept]
                    appended = await self._catalog.record(state, events, bad, joined_at)
                    committed = appended.positions
                finally:  # the cap counts the events accepted, not the attempts
                    if capped:
                        self._guard.give_back(state.spec, kept, committed)
        except NotFound as exc:
            refused.extend((i, exc) for i, _, _ in items)
            return {}
        refused.extend((kept[n][0], exc) for n, exc in bad)
        stored: dict[str, list[FeedbackEvent]] = {}  # a decision's signals in id order
        for e in appended.events:
            stored.setdefault(e.decision_id, []).append(e)
        results: dict[int, FeedbackResult] = {}
        for n in appended.positions:
            i, event = kept[n]
            as_stored = stored[event.decision_id].pop(0)
            event = as_stored if as_stored.signal == 0 else event  # a first carries the usage
            for arm, reward in rated(event):
                self._guard.observe(state.spec, router_id, arm, reward)
            cost = appended.costs.get(n, event.cost_usd)  # the decision's, as logged
            results[i] = FeedbackResult(as_stored.event_id, event.reward, cost)
            if len(items) == 1:
                log_event(state.spec.tenant, state.spec.name, event, as_stored.event_id)
        count_accepted(state.spec, appended.events)  # as stored: a later signal charges its change
        return results

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception_type(Unavailable),
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential_jitter(
                multiplier=RETRY_INITIAL_S, max=RETRY_MAX_S, jitter=RETRY_INITIAL_S
            ),
            reraise=True,
        )


__all__ = ["BatchOutcome", "FeedbackInput", "FeedbackResult", "Learner"]
