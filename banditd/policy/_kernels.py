"""Numba kernels of the linear policies: pure functions over contiguous float64 arrays.

Shapes: n_arms arms, dim features, k scored arms.
  a, a_inv  (n_arms, dim, dim)   precision matrix A and its inverse, per arm
  b, theta  (n_arms, dim)        reward-weighted context sums and theta = A^-1 b
  arm_idx   (k,) int64           rows to score, in the caller's order
  x         (dim,)               one context; xs (n, dim) a batch of contexts
Callers check shapes and dtypes; kernels trust them. No Python objects, no I/O.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from banditd.domain import FloatArray

IntArray = np.ndarray  # int64 index arrays (kept loose: numba specialises on the dtype)


@njit(cache=True)
def _dot(theta: FloatArray, arm: int, x: FloatArray) -> float:
    s = 0.0
    for i in range(x.shape[0]):
        s += theta[arm, i] * x[i]
    return s


@njit(cache=True)
def _quad(a_inv: FloatArray, arm: int, x: FloatArray) -> float:
    """x^T A_arm^-1 x, clipped at 0 against rounding."""
    dim = x.shape[0]
    quad = 0.0
    for i in range(dim):
        row = 0.0
        for j in range(dim):
            row += a_inv[arm, i, j] * x[j]
        quad += x[i] * row
    return max(quad, 0.0)


@njit(cache=True)
def mean_scores(theta: FloatArray, arm_idx: IntArray, x: FloatArray) -> FloatArray:
    """theta_a . x per scored arm, shape (k,)."""
    out = np.empty(arm_idx.shape[0])
    for k in range(arm_idx.shape[0]):
        out[k] = _dot(theta, arm_idx[k], x)
    return out


@njit(cache=True)
def variances(a_inv: FloatArray, arm_idx: IntArray, x: FloatArray) -> FloatArray:
    """x^T A_a^-1 x per scored arm, shape (k,)."""
    out = np.empty(arm_idx.shape[0])
    for k in range(arm_idx.shape[0]):
        out[k] = _quad(a_inv, arm_idx[k], x)
    return out


@njit(cache=True)
def linucb_scores(
    a_inv: FloatArray, theta: FloatArray, arm_idx: IntArray, x: FloatArray, alpha: float
) -> FloatArray:
    """Upper confidence bounds theta_a . x + alpha sqrt(x^T A_a^-1 x), shape (k,)."""
    out = np.empty(arm_idx.shape[0])
    for k in range(arm_idx.shape[0]):
        arm = arm_idx[k]
        out[k] = _dot(theta, arm, x) + alpha * math.sqrt(_quad(a_inv, arm, x))
    return out


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
    for k in range(arm_idx.shape[0]):
        arm = arm_idx[k]
        out[k] = _dot(theta, arm, x) + scale * math.sqrt(_quad(a_inv, arm, x)) * normals[k]
    return out


@njit(cache=True, parallel=True)
def batch_linucb_scores(
    a_inv: FloatArray, theta: FloatArray, arm_idx: IntArray, xs: FloatArray, alpha: float
) -> FloatArray:
    """linucb_scores for many contexts at once; xs (n, dim) -> scores (n, k)."""
    n = xs.shape[0]
    out = np.empty((n, arm_idx.shape[0]))
    for r in prange(n):
        for k in range(arm_idx.shape[0]):
            arm = arm_idx[k]
            out[r, k] = _dot(theta, arm, xs[r]) + alpha * math.sqrt(_quad(a_inv, arm, xs[r]))
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

    A^-1 follows by the rank-1 Sherman-Morrison formula on (gamma A)^-1 = A^-1 / gamma;
    gamma = 1 is no forgetting. O(dim^2).
    """
    dim = x.shape[0]
    inv_gamma = 1.0 / gamma
    u = np.empty(dim)  # (gamma A)^-1 x
    for i in range(dim):
        s = 0.0
        for j in range(dim):
            s += a_inv[arm, i, j] * x[j]
        u[i] = s * inv_gamma
    denom = 1.0
    for i in range(dim):
        denom += x[i] * u[i]
    for i in range(dim):
        b[arm, i] = gamma * b[arm, i] + reward * x[i]
        for j in range(dim):
            a[arm, i, j] = gamma * a[arm, i, j] + x[i] * x[j]
            a_inv[arm, i, j] = a_inv[arm, i, j] * inv_gamma - u[i] * u[j] / denom
    for i in range(dim):
        s = 0.0
        for j in range(dim):
            s += a_inv[arm, i, j] * b[arm, j]
        theta[arm, i] = s


def refactorise(
    a: FloatArray, a_inv: FloatArray, b: FloatArray, theta: FloatArray, arm: int
) -> None:
    """In place: recompute A^-1 and theta of one arm from A and b, bounding rank-1 drift.

    NumPy (LAPACK) rather than Numba: it runs once per many updates, and Numba's linalg would
    pull in SciPy.
    """
    a_inv[arm] = np.linalg.inv(a[arm])
    theta[arm] = a_inv[arm] @ b[arm]
