"""The Select flow: context -> policy -> eligibility -> signed, logged decision."""

from __future__ import annotations

import math
import secrets
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import structlog

from banditd import metrics
from banditd.budget import pacer
from banditd.budget.ledger import Budgets
from banditd.catalog import Catalog, RouterState
from banditd.ceilings import (
    HARD_MAX_COST_WEIGHT,
    HARD_MAX_ENERGY_WEIGHT,
    HARD_MAX_LATENCY_MS,
    HARD_MAX_LATENCY_WEIGHT,
)
from banditd.context import input_tokens_estimate
from banditd.decision_log import DecisionLog
from banditd.domain import (
    ArmSpec,
    Decision,
    FloatArray,
    RankedArm,
    check_finite,
    check_name,
)
from banditd.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from banditd.policy import Choice, _kernels
from banditd.policy.base import IntArray
from banditd.shadow import shadow_picks
from banditd.token import TokenClaims, TokenSigner

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
            need = _priciest(state, req.prompt, req.candidates)
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
            )
        except ResourceExhausted:
            metrics.BUDGET_OUTCOMES.labels(spec.tenant, spec.name, "refused").inc()
            raise
        ranking, choice = ranked.ranking, ranked.choice
        chosen = ranking[0]
        # After the live choice, on their own random streams: shadows never change it.
        shadows = shadow_picks(state, ranked, x, req.cost_weight, seed)
        now = self._clock()
        state.health.chose(chosen.arm, now)  # a half-open arm spends a probe
        decision_id = str(uuid.uuid4())
        reservation = None
        if self._budgets is not None and budgets:
            reservation = self._budgets.reserve(budgets, decision_id, chosen.expected_cost_usd)
            if ranked.budget_outcome in ("fallback", "over_budget"):
                metrics.BUDGET_OUTCOMES.labels(spec.tenant, spec.name, ranked.budget_outcome).inc()
        expires_at = math.floor(now) + spec.feedback_ttl_seconds
        token = self._signer.sign(
            TokenClaims(
                decision_id=decision_id,
                tenant=spec.tenant,
                router_id=state.router_id,
                arm=chosen.arm,
                x=x,
                propensity=choice.propensity,
                expected_cost_usd=chosen.expected_cost_usd,
                expires_at=expires_at,
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
        metrics.DECISIONS.labels(spec.tenant, spec.name, chosen.arm, str(choice.explored)).inc()
        log.info(
            "decision",
            tenant=spec.tenant,
            router=spec.name,
            arm=chosen.arm,
            expected_cost_usd=chosen.expected_cost_usd,
            decision_id=decision_id,
            propensity=choice.propensity,
            explored=choice.explored,
            metadata=dict(req.metadata),
        )
        return decision


@dataclass(frozen=True)
class Ranked:
    """The policy's answer in arm names: ranking best first, and the choice it came from."""

    ranking: tuple[RankedArm, ...]
    choice: Choice
    candidates: tuple[str, ...]
    budget_price: float = 0.0  # the pacer's price of a dollar, 0 without a budget
    budget_outcome: str = ""  # "", "paced", "fallback" or "over_budget" (see BudgetCheck)
    # The latency and energy weights used (the request's, else the router's defaults).
    latency_weight: float = 0.0
    energy_weight: float = 0.0

    def other_term(self, arms: Sequence[str]) -> FloatArray | None:
        """Utility lost to latency and energy per arm of ``arms`` (in the ranking), or None."""
        if not (self.latency_weight or self.energy_weight):
            return None
        by_arm = {r.arm: r for r in self.ranking}
        return np.array(
            [
                self.latency_weight * by_arm[a].expected_latency_ms / 1000.0
                + self.energy_weight * by_arm[a].expected_energy_wh
                for a in arms
            ]
        )


@dataclass(frozen=True)
class BudgetCheck:
    """The budgets of one request, for rank_arms: their pacing state, and whether exhaustion
    refuses (RESOURCE_EXHAUSTED) or serves the cheapest arm past the budget."""

    pacings: Sequence[pacer.Pacing]
    refuse: bool = False
    scope: str = "the budget"


def _enabled(state: RouterState, candidates: Sequence[str]) -> list[ArmSpec]:
    wanted = set(candidates)
    return [a for a in state.spec.arms if not a.disabled and (not wanted or a.name in wanted)]


def _priciest(state: RouterState, prompt: str | None, candidates: Sequence[str]) -> float:
    """The highest expected cost among the arms a request may get (what a lease must hold)."""
    posterior = state.posterior
    tokens = input_tokens_estimate(prompt) or posterior.expected_input_tokens()
    costs = [
        posterior.expected_cost_usd(posterior.index(a.name), a, tokens)
        for a in _enabled(state, candidates)
    ]
    return max(costs, default=0.0)


def rank_arms(
    state: RouterState,
    x: FloatArray,
    *,
    prompt: str | None,
    candidates: Sequence[str] = (),
    cost_weight: float | None = None,
    max_cost_usd: float | None = None,
    rng: np.random.Generator,
    blocked: Collection[str] = frozenset(),
    budget: BudgetCheck | None = None,
    latency_weight: float | None = None,
    energy_weight: float | None = None,
    max_latency_ms: float | None = None,
) -> Ranked:
    """Eligibility, expected costs, the policy's choice and the ranking; no I/O.

    The server's Select and offline replay both decide through this function. With a budget,
    the pacer masks arms (unaffordable, or below its threshold on posterior mean quality per
    dollar) and its price is the least cost weight used.
    x: context vector, shape (state.spec.dim,).
    blocked: arms whose circuit breaker is open; skipped unless every eligible arm is.
    Latency and energy (issue 21): utility = quality - cost weight x USD - latency_weight x
    expected seconds - energy_weight x expected Wh (None: the router's defaults); an arm whose
    expected latency is over max_latency_ms is not eligible. The budget acts on USD alone.
    """
    spec, posterior = state.spec, state.posterior
    if candidates:
        unknown = [c for c in candidates if spec.arm(c) is None]
        if unknown:
            raise NotFound(f"router {spec.name!r} has no arm {unknown[0]!r}")
        wanted = set(candidates)
        arms = [a for a in spec.arms if a.name in wanted and not a.disabled]
    else:
        arms = [a for a in spec.arms if not a.disabled]
    healthy = [a for a in arms if a.name not in blocked]
    arms = healthy or arms  # every arm failing: still answer (fail open), with all of them
    input_tokens = input_tokens_estimate(prompt) or posterior.expected_input_tokens()
    arm_idx = np.array([posterior.index(a.name) for a in arms], dtype=np.int64)
    costs = np.array(
        [
            posterior.expected_cost_usd(int(i), a, input_tokens, x)
            for a, i in zip(arms, arm_idx, strict=True)
        ]
    )
    latency = np.array(
        [posterior.expected_latency_ms(int(i), a, x) for a, i in zip(arms, arm_idx, strict=True)]
    )
    energy = np.array(
        [
            posterior.expected_energy_wh(int(i), a, input_tokens, x)
            for a, i in zip(arms, arm_idx, strict=True)
        ]
    )
    if max_cost_usd is not None:
        keep = costs <= max_cost_usd
        arms = [a for a, k in zip(arms, keep, strict=True) if k]
        arm_idx, costs, latency, energy = arm_idx[keep], costs[keep], latency[keep], energy[keep]
    if not arms:
        raise FailedPrecondition(
            "no eligible arm: every candidate is disabled or over max_cost_usd"
        )
    if max_latency_ms is not None:
        keep = latency <= max_latency_ms
        if not keep.any():
            raise FailedPrecondition(
                f"no eligible arm: every candidate's expected latency (from "
                f"{latency.min():.6g} ms) is over max_latency_ms ({max_latency_ms:g} ms)"
            )
        arms = [a for a, k in zip(arms, keep, strict=True) if k]
        arm_idx, costs, latency, energy = arm_idx[keep], costs[keep], latency[keep], energy[keep]
    price, outcome = 0.0, ""
    if budget is not None and budget.pacings:
        mean_quality = _kernels.mean_scores(posterior.theta, arm_idx, x)
        gate = pacer.gate(mean_quality, costs, budget.pacings)
        if gate.exhausted:
            if budget.refuse:
                raise ResourceExhausted(
                    f"budget of {budget.scope} is exhausted for this period: no arm's expected "
                    f"cost (from ${costs.min():.6g}) fits what is left"
                )
            keep = np.zeros(len(arms), dtype=np.bool_)
            keep[int(np.argmin(costs))] = True
            outcome = "over_budget"
        else:
            keep, price = gate.eligible, gate.price
            outcome = "fallback" if gate.fallback else "paced"
        arms = [a for a, k in zip(arms, keep, strict=True) if k]
        arm_idx, costs, latency, energy = arm_idx[keep], costs[keep], latency[keep], energy[keep]
    weight = spec.default_cost_weight if cost_weight is None else cost_weight
    weight = min(max(weight, price), HARD_MAX_COST_WEIGHT)  # a pacer's price can be inf
    lw = spec.default_latency_weight if latency_weight is None else latency_weight
    ew = spec.default_energy_weight if energy_weight is None else energy_weight
    # Each term is at most 1e9 x 1e9 (weights and heads are bounded): finite by construction.
    lw, ew = min(lw, HARD_MAX_LATENCY_WEIGHT), min(ew, HARD_MAX_ENERGY_WEIGHT)
    other = lw * latency / 1000.0 + ew * energy if lw or ew else None
    choice = state.policy.choose(posterior, arm_idx, x, costs, weight, rng, other_term=other)
    if spec.explore_new_arm:
        choice = _explore_new_arm(state, arms, arm_idx, choice)
    utility, quality, cost = choice.utility.tolist(), choice.quality.tolist(), costs.tolist()
    lat, wh = latency.tolist(), energy.tolist()
    ranking = tuple(
        RankedArm(arms[i].name, utility[i], quality[i], cost[i], lat[i], wh[i])
        for i in choice.order.tolist()
    )
    return Ranked(ranking, choice, tuple(a.name for a in arms), price, outcome, lw, ew)


def _explore_new_arm(
    state: RouterState, arms: Sequence[ArmSpec], arm_idx: IntArray, choice: Choice
) -> Choice:
    """Put first the eligible arm with the fewest feedback events, while it has fewer than
    ``explore_new_arm`` of them and this process has not yet forced it that many times."""
    limit = state.spec.explore_new_arm
    events = state.posterior.n_updates[arm_idx]
    short = [
        (int(events[i]), i)
        for i, arm in enumerate(arms)
        if events[i] < limit and state.forced_picks.get(arm.name, 0) < limit
    ]
    if not short:
        return choice
    position = min(short)[1]
    name = arms[position].name
    state.forced_picks[name] = state.forced_picks.get(name, 0) + 1
    return choice.forced(position)
