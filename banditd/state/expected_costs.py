"""Expected cost, latency and energy of many arms in one call: a Numba kernel over a posterior's
per-arm statistics (banditd.state.posterior keeps them and says what each estimate means).

Pure: arrays in, one array out. Every number is worked out with the same operations, in the same
order, as the scalar Python that came before it (clamps included), so a Select, a replay and a
snapshot's restart give the same bits. The heads' regressions on x come in as ``dots``: NumPy's
``np.dot`` of each arm's theta with x (BLAS, whose summation order this kernel cannot promise),
0 where an arm has too few reports for its regression.

Shapes: k arms asked for, n_arms of the posterior.
  idx      (k,) int64        the arms' rows in the posterior's arrays
  numbers  (k, 5) float64    per arm: input and output price (USD/Mtok), input and output energy
                             (Wh/Mtok), prior latency (ms) (RouterSpec.arm_numbers's columns)
  *_sum, *_n  (n_arms,)      per head: sum and count of reports (float64, int64)
  dots     (k, 3) float64    per arm: the cost, latency and energy regressions' theta . x
  out      (3, k) float64    written: expected cost (USD), latency (ms), energy (Wh)
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from banditd.domain import FloatArray

IntArray = np.ndarray  # int64 (kept loose: numba specialises on the dtype)

PRICE_IN, PRICE_OUT, WH_IN, WH_OUT, PRIOR_MS = range(5)  # RouterSpec.arm_numbers's columns


@njit(cache=True)
def _clamp(value: float, low: float, high: float, nan: float) -> float:
    """``value`` within [low, high]; ``nan`` for NaN. As Python's min(max(value, low), high):
    ``value`` itself unless a bound is strictly past it (a signed zero stays as it is)."""
    if math.isnan(value):
        return nan
    value = low if low > value else value
    return high if high < value else value


@njit(cache=True)
def _head(
    prior: float, total: float, n: int, dot: float, fit: bool, floor: float, ceiling: float
) -> float:
    """A head's prediction: ``prior`` before any report, then the mean report shrunk toward a
    positive prior by one pseudo-count, then (``fit``) the regression within [floor, ceiling] x
    that mean."""
    if n == 0:
        return prior
    mean = (prior + total) / (1 + n) if prior > 0 else total / n
    if not fit:
        return mean
    return _clamp(dot, floor * mean, ceiling * mean, mean)


@njit(cache=True)
def fitted(
    idx: IntArray, cost_n: IntArray, lat_n: IntArray, energy_n: IntArray, min_events: int
) -> IntArray:
    """(arm j, head) pairs, shape (m, 2), of the regressions with at least ``min_events``
    reports: the ``dots`` the caller must compute (head 0 cost, 1 latency, 2 energy)."""
    pairs = np.empty((3 * idx.shape[0], 2), dtype=np.int64)
    m = 0
    for j in range(idx.shape[0]):
        i = idx[j]
        for head, n in enumerate((cost_n[i], lat_n[i], energy_n[i])):
            if n >= min_events:
                pairs[m, 0], pairs[m, 1] = j, head
                m += 1
    return pairs[:m]


@njit(cache=True)
def expected_costs(
    idx: IntArray,
    numbers: FloatArray,
    input_tokens: float,
    prior_output_tokens: float,
    output_tokens_sum: FloatArray,
    output_tokens_n: IntArray,
    cost_sum: FloatArray,
    cost_n: IntArray,
    lat_sum: FloatArray,
    lat_n: IntArray,
    energy_sum: FloatArray,
    energy_n: IntArray,
    dots: FloatArray,
    model: bool,
    limits: FloatArray,
    out: FloatArray,
) -> None:
    """Fill ``out`` (3, k). ``model``: x can be scored (the regressions apply from
    limits[5] reports). limits: max USD, max latency ms, max Wh, floor, ceiling, min events."""
    max_usd, max_ms, max_wh, floor, ceiling = limits[0], limits[1], limits[2], limits[3], limits[4]
    min_events = limits[5]
    for j in range(idx.shape[0]):
        i = idx[j]
        tokens = (prior_output_tokens + output_tokens_sum[i]) / (1 + output_tokens_n[i])
        n = cost_n[i]
        if output_tokens_n[i] == 0 and n > 0:  # costs reported without tokens: learnt
            mean = _clamp(cost_sum[i] / n, 0.0, max_usd, max_usd)
            if model and n >= min_events:
                out[0, j] = _clamp(dots[j, 0], floor * mean, ceiling * mean, mean)
            else:
                out[0, j] = mean
        else:  # price x tokens
            usd = (input_tokens * numbers[j, PRICE_IN] + tokens * numbers[j, PRICE_OUT]) / 1e6
            out[0, j] = _clamp(usd, 0.0, max_usd, max_usd)
        m = lat_n[i]
        ms = _head(
            numbers[j, PRIOR_MS],
            lat_sum[i],
            m,
            dots[j, 1],
            model and m >= min_events,
            floor,
            ceiling,
        )
        out[1, j] = _clamp(ms, 0.0, max_ms, max_ms)
        wh = (input_tokens * numbers[j, WH_IN] + tokens * numbers[j, WH_OUT]) / 1e6
        wh = _clamp(wh, 0.0, max_wh, max_wh)
        m = energy_n[i]
        wh = _head(wh, energy_sum[i], m, dots[j, 2], model and m >= min_events, floor, ceiling)
        out[2, j] = _clamp(wh, 0.0, max_wh, max_wh)
