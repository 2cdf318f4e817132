"""Numba kernels of the linear policies: pure functions over contiguous float64 arrays.

Shapes: n_arms arms, dim features, k scored arms.
  a, a_inv  (n_arms, dim, dim)   precision matrix A and its inverse, per arm (both symmetric)
  b, theta  (n_arms, dim)        reward-weighted context sums and theta = A^-1 b
  arm_idx   (k,) int64           rows to score, in the caller's order
  x         (dim,)               one context; xs (n, dim) a batch of contexts
Callers check shapes and dtypes; kernels trust them. No Python objects, no I/O.

Matrix-vector products are written as row-by-row axpy updates (out += a[j, :] * x[j]) rather than
dot-product reductions: LLVM vectorises them without fastmath, and each output element is summed
in the same order whatever the vector width, so results are bit-identical across machines (which
the posterior's determinism needs). A^-1 is symmetric, so its row j is also its column j.
Four rows go into each pass over out (out[i] = (((out[i] + ...) + ...) + ...) + ...: the same sums
in the same order), which keeps out[i] in a register for four terms instead of one.
The single-context scores run in one pass per arm (mean and variance together, no temporaries but
the one scratch vector) and the update folds theta = A^-1 b into its pass over A^-1: same
operations, same order, so the same bits as the separate functions they replaced.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from banditd.domain import FloatArray
from banditd.domain.ceilings import SCORE_LIMIT

IntArray = np.ndarray  # int64 index arrays (kept loose: numba specialises on the dtype)


@njit(cache=True)
def _matvec(m: FloatArray, arm: int, x: FloatArray, out: FloatArray) -> None:
    """out = M_arm x for a symmetric M_arm, as axpy rows (vectorisable, fixed order)."""
    dim = x.shape[0]
    for i in range(dim):
        out[i] = 0.0
    j = 0
    while j + 4 <= dim:
        x0, x1, x2, x3 = x[j], x[j + 1], x[j + 2], x[j + 3]
        r0, r1, r2, r3 = m[arm, j], m[arm, j + 1], m[arm, j + 2], m[arm, j + 3]
        for i in range(dim):
            out[i] = (((out[i] + r0[i] * x0) + r1[i] * x1) + r2[i] * x2) + r3[i] * x3
        j += 4
    for jj in range(j, dim):
        xj = x[jj]
        for i in range(dim):
            out[i] += m[arm, jj, i] * xj


@njit(cache=True)
def _dot(u: FloatArray, v: FloatArray) -> float:
    s = 0.0
    for i in range(u.shape[0]):
        s += u[i] * v[i]
    return s


@njit(cache=True)
def mean_scores(theta: FloatArray, arm_idx: IntArray, x: FloatArray) -> FloatArray:
    """theta_a . x per scored arm, shape (k,)."""
    out = np.empty(arm_idx.shape[0])
    for k in range(arm_idx.shape[0]):
        out[k] = _dot(theta[arm_idx[k]], x)
    return out


@njit(cache=True)
def variances(a_inv: FloatArray, arm_idx: IntArray, x: FloatArray) -> FloatArray:
    """x^T A_a^-1 x per scored arm, shape (k,)."""
    out = np.empty(arm_idx.shape[0])
    scratch = np.empty(x.shape[0])
    for k in range(arm_idx.shape[0]):
        _matvec(a_inv, arm_idx[k], x, scratch)
        out[k] = max(_dot(x, scratch), 0.0)
    return out


@njit(cache=True)
def _mean_variance(
    a_inv: FloatArray, theta: FloatArray, arm: int, x: FloatArray, scratch: FloatArray
) -> tuple[float, float]:
    """(theta_a . x, max(x^T A_a^-1 x, 0)) of one arm in one pass over x: the same sums, in the
    same order, as mean_scores and variances."""
    _matvec(a_inv, arm, x, scratch)
    mean = 0.0
    var = 0.0
    for i in range(x.shape[0]):
        mean += theta[arm, i] * x[i]
        var += x[i] * scratch[i]
    return mean, max(var, 0.0)


# The scores of the linear policies are theta_a . x plus a multiple of its standard deviation
# sqrt(x^T A_a^-1 x), one arm at a time (the same operations, in the same order, as array
# expressions over mean_scores and variances).


@njit(cache=True)
def linucb_scores(
    a_inv: FloatArray, theta: FloatArray, arm_idx: IntArray, x: FloatArray, alpha: float
) -> FloatArray:
    """Upper confidence bounds theta_a . x + alpha sqrt(x^T A_a^-1 x), shape (k,)."""
    out = np.empty(arm_idx.shape[0])
    scratch = np.empty(x.shape[0])
    for k in range(arm_idx.shape[0]):
        mean, var = _mean_variance(a_inv, theta, arm_idx[k], x, scratch)
        out[k] = mean + alpha * math.sqrt(var)
    return out


@njit(cache=True)
def cost_aware_linucb_scores(
    a_inv: FloatArray,
    theta: FloatArray,
    arm_idx: IntArray,
    x: FloatArray,
    alpha: float,
    cost_term: FloatArray,
) -> FloatArray:
    """theta_a . x + alpha sqrt(x^T A_a^-1 x) / (1 + cost_term_a), shape (k,).

    cost_term: cost weight x expected cost per scored arm (>= 0), shape (k,). An arm whose cost
    is worth c of quality at this cost weight gets 1 / (1 + c) of the bonus: exploring it must
    promise more the more it costs. All zero: exactly linucb_scores.
    """
    out = np.empty(arm_idx.shape[0])
    scratch = np.empty(x.shape[0])
    for k in range(arm_idx.shape[0]):
        mean, var = _mean_variance(a_inv, theta, arm_idx[k], x, scratch)
        out[k] = mean + (alpha * math.sqrt(var)) / (1.0 + cost_term[k])
    return out


@njit(cache=True)
def _finite(value: float) -> float:
    """finite_scores of one value: NaN as -SCORE_LIMIT, the rest clipped to +-SCORE_LIMIT."""
    if not value >= -SCORE_LIMIT:
        return -SCORE_LIMIT
    return SCORE_LIMIT if value > SCORE_LIMIT else value


@njit(cache=True)
def ranked_choice(
    scores: FloatArray, cost_term: FloatArray, theta: FloatArray, arm_idx: IntArray, x: FloatArray
) -> tuple[FloatArray, FloatArray, IntArray, bool]:
    """A policy's scores turned into its ranking, in one pass: (quality, utility, order,
    explored), as base.Policy.priced_choice defines them with array operations.

    quality = finite_scores(scores), utility = finite_scores(quality - cost_term), order the
    arms by utility best first (ties: the earlier arm first, a stable sort), explored whether
    the first is not the first arm of highest finite_scores(theta . x) - cost_term (greedy).
    cost_term: finite (finite_scores), shape (k,).
    """
    k = arm_idx.shape[0]
    quality = np.empty(k)
    utility = np.empty(k)
    greedy, best = 0, 0.0
    for i in range(k):
        quality[i] = _finite(scores[i])
        utility[i] = _finite(quality[i] - cost_term[i])
        mean = _finite(_dot(theta[arm_idx[i]], x)) - cost_term[i]
        if i == 0 or mean > best:
            greedy, best = i, mean
    order = np.argsort(-utility, kind="mergesort")
    return quality, utility, order, k > 0 and order[0] != greedy


@njit(cache=True)
def thompson_scores(
    a_inv: FloatArray,
    theta: FloatArray,
    arm_idx: IntArray,
    x: FloatArray,
    scale: float,
    normals: FloatArray,
) -> FloatArray:
    """One posterior sample of theta_a . x per scored arm, shape (k,).

    For one context, theta_a . x with theta_a ~ N(theta_a, v^2 A_a^-1) is exactly
    N(theta_a . x, v^2 x^T A_a^-1 x): O(dim^2) per arm, no Cholesky factor.
    normals: standard normal draws, shape (k,).
    """
    out = np.empty(arm_idx.shape[0])
    scratch = np.empty(x.shape[0])
    for k in range(arm_idx.shape[0]):
        mean, var = _mean_variance(a_inv, theta, arm_idx[k], x, scratch)
        out[k] = mean + (scale * math.sqrt(var)) * normals[k]
    return out


@njit(cache=True, parallel=True)
def batch_linucb_scores(
    a_inv: FloatArray, theta: FloatArray, arm_idx: IntArray, xs: FloatArray, alpha: float
) -> FloatArray:
    """linucb_scores for many contexts at once; xs (n, dim) -> scores (n, k).

    For each arm, A^-1 X^T is formed for the whole batch (one pass over A^-1 per arm, not per
    context), then each context's quadratic form is a dot product.
    """
    n, dim = xs.shape
    k_arms = arm_idx.shape[0]
    out = np.empty((n, k_arms))
    for k in prange(k_arms):
        arm = arm_idx[k]
        proj = np.zeros((n, dim))  # row r: A^-1 xs[r]
        for j in range(dim):
            row = a_inv[arm, j]
            for r in range(n):
                xj = xs[r, j]
                for i in range(dim):
                    proj[r, i] += row[i] * xj
        for r in range(n):
            mean = _dot(theta[arm], xs[r])
            out[r, k] = mean + alpha * math.sqrt(max(_dot(xs[r], proj[r]), 0.0))
    return out


@njit(cache=True)
def sherman_morrison_update(
    a: FloatArray,
    a_inv: FloatArray,
    b: FloatArray,
    theta: FloatArray,
    arm: int,
    x: FloatArray,
    reward: float,
    gamma: float,
) -> None:
    """In place, for one arm: A = gamma A + x x^T, b = gamma b + r x, theta = A^-1 b.

    A^-1 follows by the rank-1 Sherman-Morrison formula on (gamma A)^-1 = A^-1 / gamma, which
    keeps it exactly symmetric; gamma = 1 is no forgetting. O(dim^2).
    """
    dim = x.shape[0]
    inv_gamma = 1.0 / gamma
    u = np.empty(dim)  # (gamma A)^-1 x
    _matvec(a_inv, arm, x, u)
    for i in range(dim):
        u[i] *= inv_gamma
    scale = 1.0 / (1.0 + _dot(x, u))
    # theta = A^-1 b summed row by row as A^-1 is updated: _matvec's sums, in its order.
    for i in range(dim):
        theta[arm, i] = 0.0
    for i in range(dim):
        bi = gamma * b[arm, i] + reward * x[i]
        b[arm, i] = bi
        ui, xi = u[i], x[i]
        for j in range(dim):
            a[arm, i, j] = gamma * a[arm, i, j] + xi * x[j]
            # (u_i u_j) first: the product commutes exactly, so A^-1 stays exactly symmetric.
            v = a_inv[arm, i, j] * inv_gamma - (ui * u[j]) * scale
            a_inv[arm, i, j] = v
            theta[arm, j] += v * bi


def refactorise(
    a: FloatArray,
    a_inv: FloatArray,
    b: FloatArray,
    theta: FloatArray,
    arm: int,
    ridge: float = 0.0,
    b0: float = 0.0,
) -> None:
    """In place: recompute A^-1 and theta of one arm from A and b, bounding rank-1 drift.

    ridge, b0: prior put back first (A += ridge I, b[0] += b0): what forgetting took of it
    since the last refactorisation (0: none).
    NumPy (LAPACK) rather than Numba: it runs once per many updates, and Numba's linalg would
    pull in SciPy. The inverse is symmetrised, which the kernels rely on.
    """
    if ridge:
        a[arm] += ridge * np.eye(a.shape[1])
        b[arm, 0] += b0
    inv = np.linalg.inv(a[arm])
    a_inv[arm] = (inv + inv.T) / 2.0
    theta[arm] = a_inv[arm] @ b[arm]


# The unit the shared level counts observations in: the most a reward in [0, 1] can vary
# (a fair coin's).
REWARD_VARIANCE = 0.25


@njit(cache=True)
def shared_level(
    sums: FloatArray, counts: FloatArray, means: FloatArray, weight: float, level_weight: float
) -> float:
    """How far below their prior means the arms' qualities sit, as one offset for them all.

    sums, counts: per arm, its rewards' sum and count (discounted alike under forgetting);
    means: the arms' prior means; weight: the observations each arm's prior is worth. Shapes
    (n_arms,) -> float, <= 0.

    An empirical-Bayes estimate. Each arm with feedback reads the offset as its mean reward less
    its prior mean, a reading whose variance is 1/weight (the arm's own place around its prior)
    plus 1/count (noise), in units of REWARD_VARIANCE: an arm pulled a thousand times counts for
    at most ``weight``. Where the readings disagree more than that (prices that rank the arms
    wrongly), the excess is estimated as a random-effects meta-analysis does (DerSimonian-Laird)
    and added to every reading's variance, so the level follows only what the arms agree on.
    The offset's own prior, 0, is worth ``level_weight``. The offset never rises above 0:
    raising every untried arm's prior makes a cold router explore more, and an arm's mean reward
    is biased up by the policy picking it where it looks good. A Numba kernel whose sums run over
    sorted terms, so the result is the same bits whatever order a process added the arms in.
    """
    seen = counts > 0.0
    n = counts[seen]
    offsets = sums[seen] / n - means[seen]
    spread = 1.0 / weight + 1.0 / n
    if n.shape[0] >= 2:
        w = 1.0 / (REWARD_VARIANCE * spread)
        total = _sorted_sum(w)
        apart = offsets - _sorted_sum(w * offsets) / total
        excess = _sorted_sum(w * apart * apart) - (n.shape[0] - 1)
        between = max(0.0, excess / (total - _sorted_sum(w * w) / total))
        spread = spread + between / REWARD_VARIANCE
    return min(0.0, _sorted_sum(offsets / spread) / (level_weight + _sorted_sum(1.0 / spread)))


@njit(cache=True)
def _sorted_sum(values: FloatArray) -> float:
    """The sum of ``values`` in ascending order: the same bits whatever order the arms are in."""
    total = 0.0
    for v in np.sort(values):
        total += v
    return total
