"""The Select flow, in three stages: ``Selector.prepare`` (the I/O before the decision: the
router's live state, the request_id's claim, x, the budgets' leases), ``decide`` (pure: ranking,
exploration, the challenger, shadows) and ``Selector.commit`` (the budgets' charge, the signed
token, the decision log)."""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import field, replace

import numpy as np
import structlog

from banditd import metrics
from banditd.budget.ledger import Budgets
from banditd.budget.view import BudgetView, NoBudgets
from banditd.domain import (
    Decision,
    FloatArray,
    RouterSpec,
    ShadowPick,
    check_finite,
    check_name,
    ranking_entry,
    record,
)
from banditd.domain.ceilings import (
    HARD_MAX_ENERGY_WEIGHT,
    HARD_MAX_LATENCY_MS,
    HARD_MAX_LATENCY_WEIGHT,
)
from banditd.errors import InvalidArgument, ResourceExhausted
from banditd.flows.decision_log import Claim, DecisionLog
from banditd.flows.ranking import Ranked, priciest, rank_arms, request_tokens
from banditd.flows.shadow import shadow_picks
from banditd.flows.tokens import NO_ARM, TokenClaims, TokenSigner, new_decision_id
from banditd.state.fold import RouterState
from banditd.state.live_routers import Catalog

log = structlog.get_logger(__name__)

MAX_REQUEST_ID = 128
MAX_METADATA_KEY = 128
MAX_METADATA_VALUE = 1024


@record
class SelectInput:
    tenant: str
    router: str
    request_id: str = ""
    prompt: str | None = None
    embedding: Sequence[float] | None = None
    candidates: Sequence[str] = ()
    cost_weight: float | None = None
    max_cost_usd: float | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Latency and energy (issue 21): utility per second and per Wh (None: the router's
    # defaults), and a ceiling on an arm's expected latency.
    latency_weight: float | None = None
    energy_weight: float | None = None
    max_latency_ms: float | None = None
    compare: bool = False  # pairwise feedback: also pick a challenger (banditd.policy.dueling)
    input_tokens: int | None = None  # the caller's count (None: estimated, request_tokens)


@record
class Prepared:
    """What decide needs of a Select: all its I/O done."""

    req: SelectInput
    state: RouterState
    x: FloatArray  # shape (state.spec.dim,)
    context_version: str  # the featurisation x was built with
    budget: BudgetView  # UNLIMITED when no budget covers the request
    claim: Claim  # on the request_id, held until the decision is logged
    seed: int  # every random number of the decision comes from it
    blocked: Collection[str]  # arms whose circuit breaker is open


@record
class Decided:
    """What decide chose, for commit to book."""

    prepared: Prepared
    ranked: Ranked
    shadows: tuple[ShadowPick, ...]
    rival_cost: float  # a comparison's challenger's expected cost (0 without one)


def check_metadata_entry(key: str, value: str) -> None:
    """A metadata entry Select takes (a warm start's records too): a key of 1-MAX_METADATA_KEY
    characters, no NUL (Postgres text cannot hold it), a value of at most MAX_METADATA_VALUE
    characters; InvalidArgument else."""
    if not key or len(key) > MAX_METADATA_KEY:
        raise InvalidArgument("metadata", f"keys must be 1-{MAX_METADATA_KEY} characters")
    if "\x00" in key or "\x00" in value:
        raise InvalidArgument("metadata", f"NUL character in the entry of {key!r}")
    if len(value) > MAX_METADATA_VALUE:
        raise InvalidArgument("metadata", f"value of {key!r} over {MAX_METADATA_VALUE} characters")


class Selector:
    def __init__(
        self,
        catalog: Catalog,
        decisions: DecisionLog,
        signer: TokenSigner,
        *,
        max_prompt_chars: int,
        max_metadata_entries: int,
        max_candidates: int = 256,
        clock: Callable[[], float] = time.time,
        seeds: Callable[[], int] = lambda: secrets.randbits(63),
        budgets: Budgets | None = None,
    ) -> None:
        self._budgets: Budgets | NoBudgets = budgets or NoBudgets()
        self._catalog = catalog
        self._decisions = decisions
        self._signer = signer
        self._max_prompt_chars = max_prompt_chars
        self._max_metadata_entries = max_metadata_entries
        self._max_candidates = max_candidates
        self._clock = clock
        self._seeds = seeds

    def _check(self, req: SelectInput) -> None:
        check_name("tenant", req.tenant)
        check_name("router", req.router)
        if len(req.request_id) > MAX_REQUEST_ID:
            raise InvalidArgument("request_id", f"at most {MAX_REQUEST_ID} characters")
        if "\x00" in req.request_id:  # Postgres text cannot hold NUL: the row would be refused
            raise InvalidArgument("request_id", "must not contain NUL characters")
        if req.cost_weight is not None:
            check_finite("cost_weight", req.cost_weight)
        if req.max_cost_usd is not None:
            check_finite("max_cost_usd", req.max_cost_usd)
        for name, number, ceiling in (
            ("latency_weight", req.latency_weight, HARD_MAX_LATENCY_WEIGHT),
            ("energy_weight", req.energy_weight, HARD_MAX_ENERGY_WEIGHT),
            ("max_latency_ms", req.max_latency_ms, HARD_MAX_LATENCY_MS),
        ):
            if number is not None and check_finite(name, number) > ceiling:
                raise InvalidArgument(name, f"must be <= {ceiling:g}, got {number:g}")
        if len(req.candidates) > self._max_candidates:
            raise InvalidArgument(
                "candidates",
                f"{len(req.candidates)} is over the limit of {self._max_candidates} "
                "(BANDITD_MAX_CANDIDATES)",
            )
        if len(req.metadata) > self._max_metadata_entries:
            raise InvalidArgument(
                "metadata",
                f"at most {self._max_metadata_entries} entries (BANDITD_MAX_METADATA_ENTRIES)",
            )
        for key, value in req.metadata.items():
            check_metadata_entry(key, value)

    async def select(self, req: SelectInput) -> Decision:
        """Prepare (I/O), decide (pure), commit (I/O): the Select flow."""
        prepared = await self.prepare(req)
        if isinstance(prepared, Decision):
            return prepared  # a repeated request_id
        try:
            return await self.commit(decide(prepared))
        finally:
            self._decisions.release(prepared.claim)  # a no-op once the decision is logged

    async def prepare(self, req: SelectInput) -> Prepared | Decision:
        """The router's live state, the request's claim on its request_id (the earlier decision
        of a repeated one is the answer), x, and the budgets' view, their leases topped up."""
        self._check(req)
        state = await self._catalog.get(req.tenant, req.router)
        claim = await self._decisions.claim(state.router_id, req.request_id)
        if claim.earlier is not None:  # from the log, which keeps no arm specs: today's
            earlier = claim.earlier
            return replace(earlier, arm_specs=earlier.arm_specs or state.spec.arms)
        try:
            context = state.context
            assert context is not None  # the catalog gives every router its pipeline
            x = await context.build(
                prompt=req.prompt, embedding=req.embedding, metadata=req.metadata
            )
            version = context.version  # before an await: a PCA set meanwhile is not in x
            budget = self._budgets.applicable(req.tenant, req.router)
            double = 2 if req.compare else 1  # both answers of a comparison are served
            tokens = request_tokens(state, req.prompt, req.input_tokens)
            await budget.prepare(lambda: priciest(state, tokens, req.candidates, x) * double)
        except BaseException:
            self._decisions.release(claim)
            raise
        blocked = state.health.blocked((a.name for a in state.spec.arms), self._clock())
        return Prepared(req, state, x, version, budget, claim, self._seeds(), blocked)

    async def commit(self, decided: Decided) -> Decision:
        """Book the decision: the budgets' charge, the signed token, the decision log."""
        prepared, ranked = decided.prepared, decided.ranked
        req, state, budget = prepared.req, prepared.state, prepared.budget
        spec = state.spec
        chosen, choice = ranked.ranking[0], ranked.choice
        now = self._clock()
        probes = [  # a half-open arm spends a probe
            served
            for served in (chosen.arm, ranked.challenger)
            if served is not None and state.health.chose(served, now)
        ]
        decision_id = new_decision_id()
        reservation = budget.reserve(decision_id, chosen.expected_cost_usd + decided.rival_cost)
        expires_at = math.floor(now) + spec.feedback_ttl_seconds
        token = self._signer.sign(
            TokenClaims(
                decision_id=decision_id,
                tenant=spec.tenant,
                router_id=state.router_id,
                arm=chosen.arm,
                x=None,  # stays on the server, in the decision
                propensity=choice.propensity,
                expected_cost_usd=chosen.expected_cost_usd,
                expires_at=expires_at,
                challenger=ranked.challenger,
                challenger_cost_usd=decided.rival_cost,
                arm_index=_position(spec, chosen.arm),
                challenger_index=_position(spec, ranked.challenger),
            )
        )
        decision = Decision(
            decision_id=decision_id,
            router_id=state.router_id,
            tenant=spec.tenant,
            router=spec.name,
            request_id=req.request_id or None,
            arm=chosen.arm,
            ranking=ranked.ranking,
            propensity=choice.propensity,
            explored=choice.explored,
            expected_cost_usd=chosen.expected_cost_usd,
            token=token,
            expires_at=expires_at,
            created_at=now,
            policy=spec.policy,
            router_version=spec.version,
            seed=prepared.seed,
            candidates=ranked.candidates,
            metadata=dict(req.metadata),
            x=prepared.x,
            shadows=decided.shadows,
            budget_price=ranked.budget_price,
            budget_outcome=ranked.budget_outcome,
            cost_weight=req.cost_weight,
            latency_weight=req.latency_weight,
            energy_weight=req.energy_weight,
            context_version=prepared.context_version,
            challenger=ranked.challenger,
            arm_specs=spec.arms,
        )
        # Counted before the decision is logged or leaves (a refused charge logs nothing).
        try:
            await budget.commit(reservation)
        except BaseException:  # not served: its probes and forced pick are not spent
            _unspend(state, probes, ranked.forced)
            raise
        if ranked.budget_outcome in ("fallback", "over_budget"):  # served: counted
            metrics.BUDGET_OUTCOMES.labels(spec.tenant, spec.name, ranked.budget_outcome).inc()
        self._decisions.add(decision)
        metrics.child(
            metrics.DECISIONS, spec.tenant, spec.name, chosen.arm, str(choice.explored)
        ).inc()
        log.info(
            "decision",
            tenant=spec.tenant,
            router=spec.name,
            arm=chosen.arm,
            challenger=ranked.challenger,
            expected_cost_usd=chosen.expected_cost_usd,
            decision_id=decision_id,
            propensity=choice.propensity,
            explored=choice.explored,
            metadata=dict(req.metadata),
        )
        return decision


def decide(prepared: Prepared) -> Decided:
    """Ranking (eligibility, breakers, budgets, the policy's choice, forced exploration, the
    challenger of a comparison), then the shadows' picks: no I/O, no await. Every random number
    comes from the prepared seed, in this order, as offline replay draws them."""
    req, state, x = prepared.req, prepared.state, prepared.x
    spec = state.spec
    try:
        ranked = rank_arms(
            state,
            x,
            prompt=req.prompt,
            input_tokens=req.input_tokens,
            candidates=req.candidates,
            cost_weight=req.cost_weight,
            max_cost_usd=req.max_cost_usd,
            latency_weight=req.latency_weight,
            energy_weight=req.energy_weight,
            max_latency_ms=req.max_latency_ms,
            rng=np.random.default_rng(prepared.seed),
            budget=prepared.budget.check(),
            blocked=prepared.blocked,
            compare=req.compare,
        )
    except ResourceExhausted:
        metrics.BUDGET_OUTCOMES.labels(spec.tenant, spec.name, "refused").inc()
        raise
    rival = ranking_entry(ranked.ranking, ranked.challenger)
    # Both answers are served: the budget reserves (and feedback settles) both costs.
    rival_cost = 0.0 if rival is None else rival.expected_cost_usd
    # After the live choice, on their own random streams: shadows never change it.
    shadows = shadow_picks(state, ranked, x, req.cost_weight, prepared.seed)
    return Decided(prepared, ranked, shadows, rival_cost)


def _unspend(state: RouterState, probes: Sequence[str], forced: str | None) -> None:
    """Give back what a decision that was not served took: the half-open probes of its arms,
    and its explore_new_arm forced pick."""
    for name in probes:
        state.health.returned(name)
    if forced is not None and state.forced_picks.get(forced, 0) > 0:
        state.forced_picks[forced] -= 1


def _position(spec: RouterSpec, name: str | None) -> int:
    """An arm's index in the router's arm list (a compact token's arm field); NO_ARM for none."""
    return NO_ARM if name is None else spec.arm_positions.get(name, NO_ARM)
