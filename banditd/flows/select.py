"""The Select flow: context -> policy -> eligibility -> signed, logged decision."""

from __future__ import annotations

import math
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import structlog

from banditd import metrics
from banditd.budget.ledger import Budgets
from banditd.domain import ArmSpec, Decision, check_finite, check_name
from banditd.domain.ceilings import (
    HARD_MAX_ENERGY_WEIGHT,
    HARD_MAX_LATENCY_MS,
    HARD_MAX_LATENCY_WEIGHT,
)
from banditd.errors import InvalidArgument, ResourceExhausted
from banditd.flows.decision_log import DecisionLog
from banditd.flows.ranking import BudgetCheck, priciest, rank_arms
from banditd.flows.shadow import shadow_picks
from banditd.flows.tokens import NO_ARM, TokenClaims, TokenSigner
from banditd.state.live_routers import Catalog

log = structlog.get_logger(__name__)

MAX_REQUEST_ID = 128
MAX_METADATA_KEY = 128
MAX_METADATA_VALUE = 1024


@dataclass(frozen=True)
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
        self._budgets = budgets
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
            if not key or len(key) > MAX_METADATA_KEY:
                raise InvalidArgument("metadata", f"keys must be 1-{MAX_METADATA_KEY} characters")
            if "\x00" in key or "\x00" in value:
                raise InvalidArgument("metadata", f"NUL character in the entry of {key!r}")
            if len(value) > MAX_METADATA_VALUE:
                raise InvalidArgument(
                    "metadata", f"value of {key!r} over {MAX_METADATA_VALUE} characters"
                )

    async def select(self, req: SelectInput) -> Decision:
        self._check(req)
        state = await self._catalog.get(req.tenant, req.router)
        if req.request_id:
            earlier = await self._decisions.find(state.router_id, req.request_id)
            if earlier is not None:  # from the log, which keeps no arm specs: today's
                return replace(earlier, arm_specs=earlier.arm_specs or state.spec.arms)
        spec, context = state.spec, state.context
        assert context is not None  # the catalog gives every router its pipeline
        x = await context.build(prompt=req.prompt, embedding=req.embedding, metadata=req.metadata)
        if context.unsaved_reduction:
            await self._catalog.save_reduction(state)
        budgets = self._budgets.applicable(req.tenant, req.router) if self._budgets else []
        if self._budgets is not None and budgets:
            need = priciest(state, req.prompt, req.candidates) * (2 if req.compare else 1)
            await self._budgets.prepare(budgets, need)
        if req.request_id:
            # No await from here on (under a budget, none but the charge's, after which this
            # check repeats): a concurrent twin of this request sees ours in the log.
            earlier = self._decisions.lookup(state.router_id, req.request_id)
            if earlier is not None:
                return earlier
        seed = self._seeds()
        blocked = state.health.blocked((a.name for a in spec.arms), self._clock())
        check = None
        if self._budgets is not None and budgets:
            check = BudgetCheck(
                self._budgets.pacings(budgets),
                refuse=any(b.spec.on_exhausted == "refuse" for b in budgets),
                scope=" and ".join(b.spec.label for b in budgets),
            )
        try:
            ranked = rank_arms(
                state,
                x,
                prompt=req.prompt,
                candidates=req.candidates,
                cost_weight=req.cost_weight,
                max_cost_usd=req.max_cost_usd,
                latency_weight=req.latency_weight,
                energy_weight=req.energy_weight,
                max_latency_ms=req.max_latency_ms,
                rng=np.random.default_rng(seed),
                budget=check,
                blocked=blocked,
                compare=req.compare,
            )
        except ResourceExhausted:
            metrics.BUDGET_OUTCOMES.labels(spec.tenant, spec.name, "refused").inc()
            raise
        ranking, choice = ranked.ranking, ranked.choice
        chosen = ranking[0]
        rival = next((r for r in ranking if r.arm == ranked.challenger), None)
        # Both answers are served: the budget reserves (and feedback settles) both costs.
        rival_cost = 0.0 if rival is None else rival.expected_cost_usd
        # After the live choice, on their own random streams: shadows never change it.
        shadows = shadow_picks(state, ranked, x, req.cost_weight, seed)
        now = self._clock()
        for served in (chosen.arm, ranked.challenger):  # a half-open arm spends a probe
            if served is not None:
                state.health.chose(served, now)
        decision_id = str(uuid.uuid4())
        reservation = None
        if self._budgets is not None and budgets:
            reservation = self._budgets.reserve(
                budgets, decision_id, chosen.expected_cost_usd + rival_cost
            )
            if ranked.budget_outcome in ("fallback", "over_budget"):
                metrics.BUDGET_OUTCOMES.labels(spec.tenant, spec.name, ranked.budget_outcome).inc()
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
                challenger_cost_usd=rival_cost,
                arm_index=_position(spec.arms, chosen.arm),
                challenger_index=_position(spec.arms, ranked.challenger),
            )
        )
        decision = Decision(
            decision_id=decision_id,
            router_id=state.router_id,
            tenant=spec.tenant,
            router=spec.name,
            request_id=req.request_id or None,
            arm=chosen.arm,
            ranking=ranking,
            propensity=choice.propensity,
            explored=choice.explored,
            expected_cost_usd=chosen.expected_cost_usd,
            token=token,
            expires_at=expires_at,
            created_at=now,
            policy=spec.policy,
            router_version=spec.version,
            seed=seed,
            candidates=ranked.candidates,
            metadata=dict(req.metadata),
            x=x,
            shadows=shadows,
            budget_price=ranked.budget_price,
            budget_outcome=ranked.budget_outcome,
            context_version=context.version,
            challenger=ranked.challenger,
            arm_specs=spec.arms,
        )
        if self._budgets is not None and reservation is not None:
            # Counted before the decision is logged or leaves (a refused charge logs nothing).
            await self._budgets.commit(reservation)
            if req.request_id:
                # A concurrent twin may have answered meanwhile: its answer stands (and this
                # charge over-counts the budget by one unused decision, the safe side).
                earlier = await self._decisions.find(state.router_id, req.request_id)
                earlier = earlier or self._decisions.lookup(state.router_id, req.request_id)
                if earlier is not None:
                    return earlier
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


def _position(arms: Sequence[ArmSpec], name: str | None) -> int:
    """An arm's index in the router's arm list (a compact token's arm field); NO_ARM for none."""
    if name is None:
        return NO_ARM
    return next((i for i, arm in enumerate(arms) if arm.name == name), NO_ARM)
