"""Budget pacing: the online multi-choice knapsack threshold, paced against time (pure maths).

With z the fraction of a period's budget committed, a dollar is priced at
psi(z) = (U e / L)^z (L / e), where [L, U] bound the quality per dollar of the arms on offer
(Zhou, Chakrabarty & Lukose 2008). An arm is eligible while q - psi(z) c >= 0: at z = 0 every arm
is (psi = L / e < L), at z = 1 only the most efficient ones are (psi = U).

Time pacing: the threshold alone spends only what a stream's values justify against the whole
limit, and cannot tell a busy morning from a quiet one. So z is the knapsack's spent fraction
plus a pace term: z = committed / limit + PACE_GAIN x (committed - allowance) / limit, clipped to
[0, 1], where allowance = limit x min(1, elapsed + slack) is the share of the limit the period's
elapsed time allows (and a little ahead of it). Ahead of the clock the price climbs fast to U
(only the most efficient arms). Behind it the threshold's floor L / e would still tax every dollar
(a budget larger than the stream's taste would go unspent), so there the price is scaled by the
share of the allowance used: nothing spent yet, nothing charged; on the allowance, L / e. Under
steady traffic spend tracks the clock and the budget lasts until the end of its period, and after
a quiet spell the unspent money is used later. With the gain at 20, spend settles within about
(1 - z*) / 20 of the allowance, z* being where the stream's value balances the price.

Affordability is separate and hard: an arm whose expected cost exceeds what this process may still
reserve (its lease) is never eligible. When no affordable arm passes the threshold the cheapest
affordable one is chosen; when none is affordable the budget is exhausted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from banditd.domain import FloatArray

BoolArray = npt.NDArray[np.bool_]
DEFAULT_SLACK = 0.05  # share of the limit usable ahead of the clock
PACE_GAIN = 20.0  # how hard the price reacts to spend ahead of (or behind) the clock
USD_EPSILON = 1e-12  # float rounding of sums of costs: amounts this close count as equal
MIN_QUALITY = 1e-6  # quality scores are clipped here: an arm of no value is worth nothing a dollar


def psi(z: float, lower: float, upper: float) -> float:
    """The threshold price of a dollar at committed fraction z in [0, 1], for quality per dollar
    in [lower, upper] (0 < lower <= upper)."""
    z = min(1.0, max(0.0, z))
    # Never above U, which floating point can pass at z = 1: the most efficient arm must pass.
    return min(float((upper * math.e / lower) ** z * (lower / math.e)), upper)


def efficiency_bounds(quality: FloatArray, cost: FloatArray) -> tuple[float, float] | None:
    """[L, U]: the least and greatest quality per dollar of the priced arms, or None when no arm
    has a price. quality, cost: per arm, shape (k,)."""
    priced = cost > 0
    if not priced.any():
        return None
    ratio = np.maximum(quality[priced], MIN_QUALITY) / cost[priced]
    return float(ratio.min()), float(ratio.max())


def committed_fraction(
    committed_usd: float, limit_usd: float, elapsed: float, slack: float = DEFAULT_SLACK
) -> float:
    """z in [0, 1]: the spent fraction of the limit plus PACE_GAIN x how far committed spend is
    ahead of the allowance the elapsed time gives (negative when behind), both over the limit."""
    if limit_usd <= 0:
        return 1.0
    allowance = limit_usd * min(1.0, elapsed + slack)  # Pacing.allowance_usd
    z = (committed_usd + PACE_GAIN * (committed_usd - allowance)) / limit_usd
    return min(1.0, max(0.0, z))


@dataclass(frozen=True)
class Pacing:
    """One budget as the pacer sees it at one request.

    committed_usd: spend committed in the period (settled plus reserved), across replicas.
    elapsed: fraction of the period passed, in [0, 1].
    available_usd: what this process may still reserve now (the unreserved part of its lease).
    refuse: once exhausted, it refuses (RESOURCE_EXHAUSTED) rather than serve the cheapest arm
    past itself; scope names it in the refusal.
    """

    limit_usd: float
    committed_usd: float
    elapsed: float
    available_usd: float
    slack: float = DEFAULT_SLACK
    refuse: bool = False
    scope: str = "the budget"

    @property
    def z(self) -> float:
        return committed_fraction(self.committed_usd, self.limit_usd, self.elapsed, self.slack)

    @property
    def allowance_usd(self) -> float:
        return self.limit_usd * min(1.0, self.elapsed + self.slack)

    def price(self, lower: float, upper: float) -> float:
        """psi(z), scaled down by the share of the allowance used while spend is behind it."""
        allowance = self.allowance_usd
        behind = 1.0
        if allowance > 0 and self.committed_usd < allowance:
            behind = max(0.0, self.committed_usd) / allowance
        return psi(self.z, lower, upper) * behind


@dataclass(frozen=True)
class BudgetCheck:
    """The budgets of one request, for ranking: their pacing state."""

    pacings: Sequence[Pacing]

    def refusal(self, cheapest_usd: float) -> str | None:
        """When no arm is affordable (the cheapest costs ``cheapest_usd``): the scope of the
        budgets that refuse the request, those it exhausts that are set to refuse; None serves
        the cheapest arm past the budgets."""
        refusing = [
            p.scope
            for p in self.pacings
            if p.refuse and cheapest_usd > p.available_usd + USD_EPSILON
        ]
        return " and ".join(refusing) or None


@dataclass(frozen=True)
class Gate:
    """The pacer's answer for one request.

    price: USD -> quality weight the policy adds to its cost weight (max over the budgets).
    eligible: per arm, shape (k,): affordable and passing the threshold (or the cheapest
    affordable arm alone, when none passes: ``fallback``).
    exhausted: no arm is affordable.
    """

    price: float
    eligible: BoolArray
    fallback: bool
    exhausted: bool


def gate(quality: FloatArray, cost: FloatArray, pacings: Sequence[Pacing]) -> Gate:
    """Which arms the budgets allow and at what price. quality: each arm's estimated quality
    (posterior mean), cost: its expected USD, both shape (k,)."""
    k = len(cost)
    if not pacings:
        return Gate(0.0, np.ones(k, dtype=np.bool_), False, False)
    available = min(p.available_usd for p in pacings)
    affordable = cost <= available + USD_EPSILON
    if not affordable.any():
        return Gate(0.0, affordable, False, True)
    bounds = efficiency_bounds(quality[affordable], cost[affordable])
    if bounds is None:  # only free arms are affordable: no price to pay
        return Gate(0.0, affordable, False, False)
    price = max(p.price(*bounds) for p in pacings)
    # q - price x c >= 0, as quality per dollar >= price: the same division as U's, so the most
    # efficient arm passes at the top price however the product would round (a free arm: inf).
    with np.errstate(divide="ignore"):
        ratio = np.maximum(quality, MIN_QUALITY) / cost
    passing = affordable & (ratio >= price)
    if passing.any():
        return Gate(price, passing, False, False)
    cheapest = int(np.argmin(np.where(affordable, cost, np.inf)))
    only = np.zeros(k, dtype=np.bool_)
    only[cheapest] = True
    return Gate(price, only, True, False)
