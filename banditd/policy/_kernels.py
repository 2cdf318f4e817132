"""Pure array kernels of the linear policies. No Python objects, no I/O: arrays in, arrays out.

Shapes: n_arms arms, dim features. a_inv (n_arms, dim, dim), b and theta (n_arms, dim),
x (dim,), all float64 and C-contiguous. Callers check shapes; these functions trust them.
(NumPy versions; the Numba kernels that replace them keep these signatures.)
"""

from __future__ import annotations

import numpy as np

from banditd.domain import FloatArray


def mean_scores(theta: FloatArray, x: FloatArray) -> FloatArray:
    """theta_a . x for every arm, shape (n_arms,)."""
    scores: FloatArray = theta @ x
    return scores


def variances(a_inv: FloatArray, x: FloatArray) -> FloatArray:
    """x^T A_a^-1 x for every arm, shape (n_arms,); clipped at 0 against rounding."""
    quad: FloatArray = np.einsum("i,aij,j->a", x, a_inv, x)
    return np.maximum(quad, 0.0)


def linucb_scores(a_inv: FloatArray, theta: FloatArray, x: FloatArray, alpha: float) -> FloatArray:
    """Upper confidence bounds theta_a . x + alpha sqrt(x^T A_a^-1 x), shape (n_arms,)."""
    return mean_scores(theta, x) + alpha * np.sqrt(variances(a_inv, x))


def thompson_scores(
    a_inv: FloatArray, theta: FloatArray, x: FloatArray, scale: float, normals: FloatArray
) -> FloatArray:
    """One posterior sample of theta_a . x per arm, shape (n_arms,).

    For one context, theta_a . x with theta_a ~ N(theta_a, v^2 A_a^-1) is exactly
    N(theta_a . x, v^2 x^T A_a^-1 x): O(dim^2) per arm and no Cholesky factor.
    normals: standard normal draws, shape (n_arms,).
    """
    return mean_scores(theta, x) + scale * np.sqrt(variances(a_inv, x)) * normals


def sherman_morrison_update(
    a: FloatArray,
    a_inv: FloatArray,
    b: FloatArray,
    theta: FloatArray,
    arm_idx: int,
    x: FloatArray,
    reward: float,
) -> None:
    """In place: A += x x^T, A^-1 by the rank-1 Sherman-Morrison formula, b += r x, theta."""
    a[arm_idx] += np.outer(x, x)
    a_inv_x = a_inv[arm_idx] @ x
    a_inv[arm_idx] -= np.outer(a_inv_x, a_inv_x) / (1.0 + x @ a_inv_x)
    b[arm_idx] += reward * x
    theta[arm_idx] = a_inv[arm_idx] @ b[arm_idx]


def refactorise(
    a: FloatArray, a_inv: FloatArray, b: FloatArray, theta: FloatArray, arm_idx: int
) -> None:
    """In place: recompute A^-1 and theta of one arm from A and b, bounding rank-1 drift."""
    a_inv[arm_idx] = np.linalg.inv(a[arm_idx])
    theta[arm_idx] = a_inv[arm_idx] @ b[arm_idx]
