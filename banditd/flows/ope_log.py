"""A router's decision log as off-policy evaluation reads it: each decision with the feedback it
got and the weights its Select ranked by, and the feedback events that rebuild the posterior.

A request's own cost weight is logged with its decision (migration 0020), and its latency and
energy weights (0022). A decision whose request had none ranked by the default of the router
version it was made under, read from the router's version history (``router_versions``); where
the history no longer holds that version (a router older than migration 0008), the live router's
default stands in, and the report counts such decisions (``unversioned_decisions``).

The latency and energy a decision is scored on are those its feedback reported; where none did,
the chosen arm's expected latency or energy that the decision was ranked with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from banditd.domain import FeedbackEvent, FloatArray, RankedArm, RouterSpec, built_with
from banditd.domain.ceilings import HARD_MAX_ENERGY_WEIGHT, HARD_MAX_LATENCY_WEIGHT
from banditd.errors import InvalidArgument
from banditd.flows.ranking import effective_cost_weight
from banditd.store import Store
from banditd.store.reports import FedDecision


@dataclass(frozen=True)
class Weights:
    """A router's default trade-off weights: utility per USD, per second, per Wh."""

    cost: float = 0.0
    latency: float = 0.0
    energy: float = 0.0

    @classmethod
    def defaults(cls, spec: RouterSpec) -> Weights:
        return cls(
            spec.default_cost_weight, spec.default_latency_weight, spec.default_energy_weight
        )


@dataclass(frozen=True)
class LoggedDecision:
    """One logged decision with the feedback it got.

    x: (dim,) the context scored; expected_costs: USD per arm in ``candidates`` (as priced then),
    expected_latency_ms and expected_energy_wh likewise (empty: 0).
    cost_weight, latency_weight, energy_weight: the request's own (None: the router's default
    applied); budget_price: the pacer's price of a dollar then (0: no budget). defaults: the
    router's default weights at the decision's version (None: not in the version history).
    latency_ms, energy_wh: the chosen arm's, as reported (else as expected).
    """

    created_at: float
    x: FloatArray
    candidates: tuple[str, ...]
    expected_costs: tuple[float, ...]
    arm: str
    propensity: float
    reward: float
    cost_usd: float
    cost_weight: float | None = None
    budget_price: float = 0.0
    defaults: Weights | None = None
    latency_weight: float | None = None
    energy_weight: float | None = None
    expected_latency_ms: tuple[float, ...] = ()
    expected_energy_wh: tuple[float, ...] = ()
    latency_ms: float = 0.0
    energy_wh: float = 0.0

    def weights(self, default: Weights, *, budget: bool = True) -> Weights:
        """The weights Select ranked this decision by, ``default`` being the router's (with
        budget=False: the cost weight before the pacer's price raised it)."""
        price = self.budget_price if budget else 0.0
        latency = default.latency if self.latency_weight is None else self.latency_weight
        energy = default.energy if self.energy_weight is None else self.energy_weight
        return Weights(
            effective_cost_weight(default.cost, self.cost_weight, price),
            min(latency, HARD_MAX_LATENCY_WEIGHT),
            min(energy, HARD_MAX_ENERGY_WEIGHT),
        )

    def other_term(self, weights: Weights, eligible: list[int]) -> FloatArray | None:
        """The utility each of the ``eligible`` candidates (positions) lost to latency and
        energy at ``weights``, as Select priced it (``Ranked.other_term``), or None."""
        if not (weights.latency or weights.energy):
            return None
        latency = np.array(self.expected_latency_ms or (0.0,) * len(self.candidates))[eligible]
        energy = np.array(self.expected_energy_wh or (0.0,) * len(self.candidates))[eligible]
        return np.asarray(weights.latency * latency / 1000.0 + weights.energy * energy)

    def utility_defaults(self, live: Weights) -> Weights:
        """The defaults Select applied to this decision: its version's, else ``live``."""
        return live if self.defaults is None else self.defaults

    @classmethod
    def of(cls, fed: FedDecision, defaults: Weights | None = None) -> LoggedDecision:
        d = fed.decision
        if d.x is None:
            raise InvalidArgument("decision", f"{d.decision_id} was logged without its context")
        priced = {r.arm: r for r in d.ranking}
        candidates = tuple(a for a in d.candidates if a in priced)
        chosen = priced.get(d.arm) or RankedArm(d.arm, 0.0, 0.0, d.expected_cost_usd)
        return cls(
            created_at=d.created_at,
            x=d.x,
            candidates=candidates,
            expected_costs=tuple(priced[a].expected_cost_usd for a in candidates),
            arm=d.arm,
            propensity=d.propensity,
            reward=fed.reward,
            cost_usd=fed.cost_usd,
            cost_weight=d.cost_weight,
            budget_price=d.budget_price,
            defaults=defaults,
            latency_weight=d.latency_weight,
            energy_weight=d.energy_weight,
            expected_latency_ms=tuple(priced[a].expected_latency_ms for a in candidates),
            expected_energy_wh=tuple(priced[a].expected_energy_wh for a in candidates),
            latency_ms=_given(fed.latency_ms, chosen.expected_latency_ms),
            energy_wh=_given(fed.energy_wh, chosen.expected_energy_wh),
        )


@dataclass(frozen=True)
class DecisionLog:
    """A router's logged decisions (by time) and its whole feedback log (by id).

    events: every event, offline ones included, to rebuild the posterior at each decision.
    """

    decisions: tuple[LoggedDecision, ...]
    events: tuple[FeedbackEvent, ...]

    @property
    def arms(self) -> tuple[str, ...]:
        """Every arm eligible at some decision, in first-seen order (the estimators' columns)."""
        seen: dict[str, None] = {}
        for d in self.decisions:
            seen.update(dict.fromkeys(d.candidates))
            seen[d.arm] = None
        return tuple(seen)


async def load_log(
    store: Store, router_id: int, limit: int, context_since: int = 0, weights: str = ""
) -> DecisionLog:
    """A router's newest ``limit`` decisions with feedback and its whole event log, both from
    router version ``context_since`` on (StoredRouter's: what came before built x otherwise)
    and built by the encoder ``weights`` (ContextPipeline.weights; "": any), as the posterior
    folds them; each decision with its version's default weights."""
    rows = await store.reports.decisions_with_feedback(router_id, limit)
    history = {
        v: Weights.defaults(spec) for v, _, _, spec in await store.routers.versions(router_id)
    }
    events: list[FeedbackEvent] = []
    while batch := await store.events.after(router_id, events[-1].event_id if events else 0):
        events += batch
    return DecisionLog(
        tuple(
            LoggedDecision.of(fed, history.get(fed.decision.router_version))
            for fed in rows
            if fed.decision.router_version >= context_since
            and built_with(fed.decision.context_version, weights)
        ),
        tuple(e for e in events if e.decided_since(context_since) and e.built_with(weights)),
    )


def _given(reported: float | None, expected: float) -> float:
    """What feedback reported, else what was expected."""
    return float(expected if reported is None else reported)
