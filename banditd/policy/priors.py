"""Where an arm's quality starts before its own feedback: a price-tier prior.

Pricier models tend to answer better, so an arm's prior mean quality rises with where its price
sits in the router's price span (log scale): the cheapest arm starts at
``center - PRICE_TIER_SPREAD / 2``, the priciest at ``center + PRICE_TIER_SPREAD / 2``. Only the
arm set's own prices enter, never names, so it fits any arm set; arms priced alike (or all free,
as replay's zero-priced arms were) all start at ``center``.
"""

from __future__ import annotations

import numpy as np

from banditd.domain import FloatArray

PRICE_TIER_SPREAD = 0.4
# Prices below this share of the priciest count as this (log scale: a free arm is the cheapest
# tier, not minus infinity).
PRICE_FLOOR = 1e-4


def price_tier_quality(prices: FloatArray, center: float, spread: float) -> FloatArray:
    """Prior mean quality per arm from its price, shape (n_arms,) -> (n_arms,).

    prices: USD of a typical call per arm (>= 0). Linear in log price across the span, from
    center - spread / 2 (cheapest) to center + spread / 2 (priciest).
    """
    top = float(prices.max()) if prices.size else 0.0
    if top <= 0.0:
        return np.full(prices.shape, center)
    log_price = np.log(np.maximum(prices, top * PRICE_FLOOR))
    width = float(log_price.max() - log_price.min())
    if width <= 1e-9:  # alike up to rounding
        return np.full(prices.shape, center)
    tier = (log_price - log_price.min()) / width
    return np.asarray(center + spread * (tier - 0.5), dtype=np.float64)


# How many observations the shared level's own prior (0: the router's prior_quality as it is) is
# worth, counted like prior_weight (the level: banditd.policy._kernels.shared_level, every arm's
# prior moved by what the arms' feedback agrees on). At 10 it stays within about 0.15 of 0 until
# a few arms have evidence, then follows them.
LEVEL_WEIGHT = 10.0
