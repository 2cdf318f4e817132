"""The replay engine: a learning policy routing the stream online through the server's
ranking and state code (``learn_online``: ``rank_arms``, then ``fold`` of each outcome), the
reference policies computed in hindsight, and the spend tally both obey."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from banditd.budget.pacer import BudgetCheck, Pacing
from banditd.domain import FeedbackEvent, FloatArray
from banditd.errors import FailedPrecondition, ResourceExhausted
from banditd.evaluation.replay.data import Outcomes
from banditd.evaluation.replay.options import NO_TRADE_OFF, TradeOff
from banditd.flows.ranking import rank_arms
from banditd.policy import KNN
from banditd.policy.base import IntArray
from banditd.state.fold import RouterState, fold

REFUSED = -1  # the pick of a prompt the budget refused
THUMBS_STREAM = 1  # seeds the thumbs draws apart from the policy's own random numbers
SHUFFLE_STREAM = 2  # seeds the order of the records under --shuffle


class SpendTally:
    """Spend against an optional budget over a stream of n prompts (a replay's own count: not
    the server's budget ledger, banditd.budget.ledger)."""

    def __init__(self, budget_usd: float | None, n: int) -> None:
        self.budget_usd, self.n, self.spent = budget_usd, n, 0.0

    def check(self, t: int) -> BudgetCheck | None:
        """The budget as the pacer sees it at prompt t (t / n of the period passed)."""
        if self.budget_usd is None:
            return None
        pacing = Pacing(
            limit_usd=self.budget_usd,
            committed_usd=self.spent,
            elapsed=t / self.n,
            available_usd=self.budget_usd - self.spent,
            refuse=True,
            scope="the replay",
        )
        return BudgetCheck([pacing])

    def even_share(self, t: int) -> float | None:
        """A cost cap for prompt t (the knn policy, which has no pacer: the pacer reads the
        posterior's quality, which knn does not rank by): an even share of what is left over
        the prompts left."""
        if self.budget_usd is None:
            return None
        return (self.budget_usd - self.spent) / (self.n - t)

    def charge(self, cost_usd: float) -> bool:
        """Charge a call's real cost; False (nothing charged) when it would overrun the budget."""
        if self.budget_usd is not None and self.spent + cost_usd > self.budget_usd:
            return False
        self.spent += cost_usd
        return True


def _choose(
    state: RouterState,
    x: FloatArray,
    prompt: str,
    tally: SpendTally,
    t: int,
    rng: np.random.Generator,
    trade_off: TradeOff = NO_TRADE_OFF,
    compare: bool = False,
) -> tuple[str, str | None] | None:
    """The arm Select answers for prompt t's x (shape (dim,)) under the budget's pacer and the
    request's latency and energy fields, and with compare its challenger (else None); None when
    Select would refuse: the budget is exhausted (no arm's expected cost fits what is left) or
    no arm's expected latency is under max_latency_ms. The knn policy is not paced: it takes
    the best arm whose expected cost fits an even share of the budget (else the cheapest)."""
    unpaced = isinstance(state.policy, KNN)
    try:
        ranked = rank_arms(
            state,
            x,
            prompt=prompt,
            rng=rng,
            budget=None if unpaced else tally.check(t),
            latency_weight=trade_off.latency_weight,
            energy_weight=trade_off.energy_weight,
            max_latency_ms=trade_off.max_latency_ms,
            compare=compare,
        )
    except (ResourceExhausted, FailedPrecondition):
        return None
    cap = tally.even_share(t) if unpaced else None
    if cap is not None:
        cap = max(cap, min(r.expected_cost_usd for r in ranked.ranking))
        return next(r.arm for r in ranked.ranking if r.expected_cost_usd <= cap), None
    return ranked.ranking[0].arm, ranked.challenger


def _event(
    event_id: int,
    arm: str,
    x: FloatArray,
    reward: float,
    cost_usd: float,
    latency_ms: float | None = None,
    energy_wh: float | None = None,
) -> FeedbackEvent:
    """The feedback event of one served prompt: its reward and real cost, with the measured
    latency and energy where the file has them, no token counts."""
    return FeedbackEvent(
        event_id=event_id,
        router_id=0,
        decision_id=f"replay-{event_id}",
        arm=arm,
        x=x,
        reward=reward,
        cost_usd=cost_usd,
        input_tokens=None,
        output_tokens=None,
        latency_ms=latency_ms,
        error=False,
        created_at=float(event_id),
        cost_reported=True,
        energy_wh=energy_wh,
    )


def preference(quality: float, rival: float, coin: float) -> tuple[float, float]:
    """A side-by-side rating of two answers: (arm reward, challenger reward), the higher
    quality winning 1 to 0; a tie is a coin flip (coin: uniform in [0, 1))."""
    if quality == rival:
        return (1.0, 0.0) if coin < 0.5 else (0.0, 1.0)
    return (1.0, 0.0) if quality > rival else (0.0, 1.0)


def measured(values: FloatArray | None, t: int, j: int) -> float | None:
    """The file's latency or energy of prompt t on arm j; None where it has none."""
    if values is None or np.isnan(values[t, j]):
        return None
    return float(values[t, j])


def learn_online(
    state: RouterState,
    outcomes: Outcomes,
    raw: FloatArray,
    *,
    seed: int,
    feedback: str,
    budget_usd: float | None,
    progress: Callable[[int], None],
    trade_off: TradeOff = NO_TRADE_OFF,
    duels: IntArray | None = None,
) -> IntArray:
    """Route the stream with the state's policy, learning online (``fold``); the arm (column
    of outcomes) per prompt, REFUSED where the budget refused it, shape (n,). raw: the encoder's
    embedding of each prompt, (n, spec.embedding_dim); x is built from it at each step by the
    state's context pipeline, so PCA fitting and kNN features follow the stream as they would
    in the server. trade_off: the latency and energy fields of every Select; a prompt no arm is
    eligible for is refused. feedback "pairwise": each Select compares, both answers are paid
    (the budget charges both), the better one wins (``preference``); duels, shape (n,), gets
    each challenger."""
    pipeline = state.context
    assert pipeline is not None, "a replay builds x through the router's context pipeline"
    rng = np.random.default_rng(seed)
    thumbs = np.random.default_rng([seed, THUMBS_STREAM]).random(outcomes.n)
    column = {arm: j for j, arm in enumerate(outcomes.arms)}
    tally = SpendTally(budget_usd, outcomes.n)
    picks = np.full(outcomes.n, REFUSED, dtype=np.int64)
    event_id = state.posterior.last_event_id
    metadata = outcomes.metadata or ({},) * outcomes.n
    pairwise = feedback == "pairwise"
    for t, prompt in enumerate(outcomes.prompts):
        x = pipeline.assemble(raw[t], metadata[t])
        chosen = _choose(state, x, prompt, tally, t, rng, trade_off, pairwise)
        if chosen is None:
            progress(t + 1)
            continue
        arm, rival = chosen
        j = column[arm]
        quality, cost = float(outcomes.quality[t, j]), float(outcomes.cost[t, j])
        k = None if rival is None else column[rival]
        paid = cost if k is None else cost + float(outcomes.cost[t, k])
        if tally.charge(paid):
            picks[t] = j
            reward = float(thumbs[t] < quality) if feedback == "thumbs" else quality
            event_id += 1
            latency = measured(outcomes.latency_ms, t, j)
            event = _event(
                event_id, arm, x, reward, cost, latency, measured(outcomes.energy_wh, t, j)
            )
            if k is not None:
                won, lost = preference(quality, float(outcomes.quality[t, k]), thumbs[t])
                event = replace(
                    event, reward=won, cost_usd=paid, challenger=rival, challenger_reward=lost
                )
                if duels is not None:
                    duels[t] = k
            if k is not None or not pairwise:  # one eligible arm: nothing compared
                fold(state, [event])
        progress(t + 1)
    return picks


def _best(utility: FloatArray, cost: FloatArray) -> IntArray:
    """Index of the best utility along the last axis, cheapest on ties; shapes (..., k) -> (...)."""
    order: IntArray = np.lexsort((cost, -utility), axis=-1)
    return np.asarray(order[..., 0], dtype=np.int64)


def oracle_picks(outcomes: Outcomes, cost_weight: float) -> IntArray:
    """Per prompt the arm of best quality - cost_weight x cost (cheapest on ties), shape (n,)."""
    return _best(outcomes.quality - cost_weight * outcomes.cost, outcomes.cost)


def best_single(outcomes: Outcomes, cost_weight: float) -> int:
    """The arm of best mean quality - cost_weight x mean cost over the file (cheapest on ties)."""
    quality, cost = outcomes.quality.mean(axis=0), outcomes.cost.mean(axis=0)
    return int(_best(quality - cost_weight * cost, cost))


def reference_picks(policy: str, outcomes: Outcomes, cost_weight: float, seed: int) -> IntArray:
    """The arm per prompt of a reference policy, shape (n,)."""
    n, k = outcomes.quality.shape
    if policy == "random":
        return np.asarray(np.random.default_rng(seed).integers(k, size=n), dtype=np.int64)
    if policy == "cheapest":
        return np.full(n, int(np.argmin(outcomes.cost.mean(axis=0))), dtype=np.int64)
    if policy == "best-single":
        return np.full(n, best_single(outcomes, cost_weight), dtype=np.int64)
    return oracle_picks(outcomes, cost_weight)


def gate(picks: IntArray, outcomes: Outcomes, budget_usd: float | None) -> IntArray:
    """The picks a budget lets through, in order; REFUSED where a call would overrun it.
    picks: (n,) -> (n,)."""
    tally = SpendTally(budget_usd, outcomes.n)
    return np.array(
        [j if tally.charge(float(outcomes.cost[t, j])) else REFUSED for t, j in enumerate(picks)],
        dtype=np.int64,
    )
