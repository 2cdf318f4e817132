"""A router's decision log as off-policy evaluation reads it: each decision with the feedback it
got and the weights its Select ranked by, and the feedback events that rebuild the posterior.

A request's own cost weight is logged with its decision (migration 0020). A decision whose
request had none ranked by the default of the router version it was made under, read from the
router's version history (``router_versions``); where the history no longer holds that version
(a router older than migration 0008), the live router's default stands in, and the report counts
such decisions (``unversioned_decisions``).
"""

from __future__ import annotations

from dataclasses import dataclass

from banditd.domain import Decision, FeedbackEvent, FloatArray, RouterSpec, built_with
from banditd.errors import InvalidArgument
from banditd.flows.ranking import effective_cost_weight
from banditd.store import Store


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

    x: (dim,) the context scored; expected_costs: USD per arm in ``candidates`` (as priced then).
    cost_weight: the request's own (None: the router's default applied); budget_price: the
    pacer's price of a dollar then (0: no budget). defaults: the router's default weights at
    the decision's version (None: not in the version history).
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

    def weight(self, default: float, *, budget: bool = True) -> float:
        """The cost weight Select used for this decision, ``default`` being the router's (with
        budget=False: before the pacer's price raised it)."""
        return effective_cost_weight(default, self.cost_weight, self.budget_price if budget else 0)

    def utility_defaults(self, live: Weights) -> Weights:
        """The defaults Select applied to this decision: its version's, else ``live``."""
        return live if self.defaults is None else self.defaults

    @classmethod
    def of(
        cls, d: Decision, reward: float, cost_usd: float, defaults: Weights | None = None
    ) -> LoggedDecision:
        if d.x is None:
            raise InvalidArgument("decision", f"{d.decision_id} was logged without its context")
        priced = {r.arm: r.expected_cost_usd for r in d.ranking}
        candidates = tuple(a for a in d.candidates if a in priced)
        return cls(
            created_at=d.created_at,
            x=d.x,
            candidates=candidates,
            expected_costs=tuple(priced[a] for a in candidates),
            arm=d.arm,
            propensity=d.propensity,
            reward=reward,
            cost_usd=cost_usd,
            cost_weight=d.cost_weight,
            budget_price=d.budget_price,
            defaults=defaults,
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
            LoggedDecision.of(d, reward, cost, history.get(d.router_version))
            for d, reward, cost in rows
            if d.router_version >= context_since and built_with(d.context_version, weights)
        ),
        tuple(e for e in events if e.decided_since(context_since) and e.built_with(weights)),
    )
