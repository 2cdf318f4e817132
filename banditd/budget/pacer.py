"""Budget pacing: a price per dollar that keeps spend on the period's clock (pure maths).

A dollar is priced at psi(z) = (U e / L)^z (L / e), where [L, U] bound the quality per dollar of
the arms on offer: the online knapsack threshold's curve (Zhou, Chakrabarty & Lukose 2008). An
arm is eligible while q - psi(z) c >= 0: at z = 0 every arm is (psi = L / e < L), at z = 1 only
the most efficient ones are (psi = U).

z follows spend against the clock: z = 1/2 + (committed - limit x elapsed) / (slack x limit),
at most 1, elapsed counting as at least slack / 2 (so a period begins at z = 0, the price L / e,
where every arm passes). On the clock the price is the middle of the curve; it climbs to U as
spend runs slack / 2 of the limit ahead of the clock, and falls toward 0 as spend falls behind
(below L / e past slack / 2 behind), so unspent money after a quiet spell is used later. The log
of the price moves in proportion to spend less the clock's allowance: the dual price of online
allocation with budgets, updated by mirror descent (Balseiro, Lu & Mirrokni 2020), kept without
state since the sum of its updates is that difference. Under steady traffic the price settles
where the stream's spend matches the clock, wherever that lies on the curve or below it, so the
budget is spent and lasts to the end of its period.

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
DEFAULT_SLACK = 0.05  # the price runs from L / e to U as spend goes from slack / 2 behind the
# clock to slack / 2 ahead of it, as shares of the limit
USD_EPSILON = 1e-12  # float rounding of sums of costs: amounts this close count as equal
MIN_QUALITY = 1e-6  # quality scores are clipped here: an arm of no value is worth nothing a dollar


def psi(z: float, lower: float, upper: float) -> float:
    """The price of a dollar at z <= 1 (z > 1 counts as 1), for quality per dollar in
    [lower, upper] (0 < lower <= upper): L / e at z = 0, U at z = 1, toward 0 below 0."""
    z = min(1.0, z)
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


def pace(
    committed_usd: float, limit_usd: float, elapsed: float, slack: float = DEFAULT_SLACK
) -> float:
    """z <= 1: 1/2 plus how far committed spend runs ahead of the clock's allowance (limit x
    elapsed, at least slack / 2 of the limit; negative when behind), in units of slack x limit.
    A zero limit gives 1; a zero slack gives 1 ahead of the clock and -inf (a price of 0) on it
    or behind."""
    if limit_usd <= 0:
        return 1.0
    # The clock allows slack / 2 of the limit from the period's start: a first request (nothing
    # spent yet) is priced at L / e, where every arm passes, not at the curve's middle, which
    # masked the dearest arms of a budget however loose early in every period.
    clock = min(1.0, max(0.5 * slack, elapsed))
    ahead = committed_usd - limit_usd * clock
    if slack <= 0:
        return 1.0 if ahead > 0 else -math.inf
    return min(1.0, 0.5 + ahead / (slack * limit_usd))


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
        return pace(self.committed_usd, self.limit_usd, self.elapsed, self.slack)

    def price(self, lower: float, upper: float) -> float:
        """psi(z): the price of a dollar, in quality."""
        return psi(self.z, lower, upper)


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
