"""The Numba kernels against a plain NumPy reference written here, on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banditd.domain.ceilings import finite_scores
from banditd.policy import _kernels


def state(n_arms: int, dim: int, updates: int, seed: int) -> tuple[np.ndarray, ...]:
    """(a, a_inv, b, theta) after random updates, built with NumPy only."""
    rng = np.random.default_rng(seed)
    a = np.repeat(np.eye(dim)[None], n_arms, axis=0)
    b = np.zeros((n_arms, dim))
    for _ in range(updates):
        arm = rng.integers(n_arms)
        x = rng.normal(size=dim)
        a[arm] += np.outer(x, x)
        b[arm] += rng.random() * x
    a_inv = np.linalg.inv(a)
    theta = np.einsum("aij,aj->ai", a_inv, b)
    return a, a_inv, b, theta


def test_scores_match_numpy_reference() -> None:
    _, a_inv, _, theta = state(11, 32, 400, seed=1)
    rng = np.random.default_rng(2)
    x = rng.normal(size=32)
    idx = np.array([3, 0, 10, 7], dtype=np.int64)
    mean = np.array([theta[i] @ x for i in idx])
    var = np.array([x @ a_inv[i] @ x for i in idx])
    np.testing.assert_allclose(_kernels.mean_scores(theta, idx, x), mean, rtol=0, atol=1e-9)
    np.testing.assert_allclose(_kernels.variances(a_inv, idx, x), var, rtol=0, atol=1e-9)
    np.testing.assert_allclose(
        _kernels.linucb_scores(a_inv, theta, idx, x, 0.7), mean + 0.7 * np.sqrt(var), atol=1e-9
    )
    z = rng.standard_normal(len(idx))
    np.testing.assert_allclose(
        _kernels.thompson_scores(a_inv, theta, idx, x, 0.3, z),
        mean + 0.3 * np.sqrt(var) * z,
        atol=1e-9,
    )
    xs = rng.normal(size=(50, 32))
    batch = _kernels.batch_linucb_scores(a_inv, theta, idx, xs, 0.7)
    for r in range(50):
        np.testing.assert_allclose(
            batch[r], _kernels.linucb_scores(a_inv, theta, idx, xs[r], 0.7), atol=1e-12
        )


def test_update_matches_numpy_reference() -> None:
    a, a_inv, b, theta = state(3, 8, 30, seed=3)
    x = np.random.default_rng(4).normal(size=8)
    want_a = 0.9 * a[1] + np.outer(x, x)
    want_b = 0.9 * b[1] + 0.6 * x
    _kernels.sherman_morrison_update(a, a_inv, b, theta, 1, x, 0.6, 0.9)
    np.testing.assert_allclose(a[1], want_a, atol=1e-12)
    np.testing.assert_allclose(b[1], want_b, atol=1e-12)
    np.testing.assert_allclose(a_inv[1], np.linalg.inv(want_a), atol=1e-9)
    np.testing.assert_allclose(theta[1], np.linalg.solve(want_a, want_b), atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    dim=st.integers(2, 12),
    steps=st.integers(1, 400),
    gamma=st.sampled_from([1.0, 0.999, 0.99]),
    seed=st.integers(0, 2**32 - 1),
)
def test_incremental_inverse_tracks_inverse(dim: int, steps: int, gamma: float, seed: int) -> None:
    """After a long run of rank-1 updates (with forgetting), A^-1 is still the inverse of A."""
    rng = np.random.default_rng(seed)
    a = np.eye(dim)[None].copy()
    a_inv = np.eye(dim)[None].copy()
    b = np.zeros((1, dim))
    theta = np.zeros((1, dim))
    for _ in range(steps):
        x = rng.normal(size=dim) * rng.choice([0.01, 1.0, 10.0])
        _kernels.sherman_morrison_update(a, a_inv, b, theta, 0, x, float(rng.random()), gamma)
    np.testing.assert_allclose(a_inv[0] @ a[0], np.eye(dim), atol=1e-6)
    np.testing.assert_allclose(theta[0], np.linalg.solve(a[0], b[0]), rtol=1e-6, atol=1e-8)


def test_inverse_stays_exactly_symmetric() -> None:
    """The kernels read A^-1's rows as its columns: updates must keep it bit-for-bit symmetric."""
    rng = np.random.default_rng(9)
    a = np.eye(16)[None].copy()
    a_inv = np.eye(16)[None].copy()
    b, theta = np.zeros((1, 16)), np.zeros((1, 16))
    for step in range(300):
        x = rng.normal(size=16)
        _kernels.sherman_morrison_update(a, a_inv, b, theta, 0, x, float(rng.random()), 0.995)
        if step % 64 == 63:
            _kernels.refactorise(a, a_inv, b, theta, 0)
        np.testing.assert_array_equal(a_inv[0], a_inv[0].T)


def sequential_matvec(m: np.ndarray, x: np.ndarray) -> list[float]:
    """M x, each element summed over j in order, one IEEE operation at a time (Python floats)."""
    out = [0.0] * len(x)
    for j in range(len(x)):
        for i in range(len(x)):
            out[i] += float(m[j, i]) * float(x[j])
    return out


@pytest.mark.parametrize("dim", [1, 3, 4, 7, 8, 13, 32])
def test_kernels_sum_in_the_documented_order(dim: int) -> None:
    """Replays depend on the kernels' bits: scores, variances and the update's theta are the
    sequential sums of the module docstring, whatever the unrolling or fusion inside."""
    a, a_inv, b, theta = state(4, dim, 40, seed=dim)
    a_inv = (a_inv + a_inv.transpose(0, 2, 1)) / 2.0  # exactly symmetric, as the kernels keep it
    rng = np.random.default_rng(dim)
    x = rng.normal(size=dim)
    idx = np.array([3, 0, 2], dtype=np.int64)
    xf = [float(v) for v in x]

    def mean(arm: int) -> float:
        s = 0.0
        for i in range(dim):
            s += float(theta[arm, i]) * xf[i]
        return s

    def variance(arm: int) -> float:
        s = 0.0
        for xi, mi in zip(xf, sequential_matvec(a_inv[arm], x), strict=True):
            s += xi * mi
        return max(s, 0.0)

    means = np.array([mean(k) for k in idx])
    sds = np.sqrt(np.array([variance(k) for k in idx]))
    cost, z = rng.random(3), rng.standard_normal(3)
    np.testing.assert_array_equal(_kernels.mean_scores(theta, idx, x), means)
    np.testing.assert_array_equal(
        _kernels.variances(a_inv, idx, x), np.array([variance(k) for k in idx])
    )
    np.testing.assert_array_equal(
        _kernels.linucb_scores(a_inv, theta, idx, x, 0.7), means + 0.7 * sds
    )
    np.testing.assert_array_equal(
        _kernels.cost_aware_linucb_scores(a_inv, theta, idx, x, 0.7, cost),
        means + 0.7 * sds / (1.0 + cost),
    )
    np.testing.assert_array_equal(
        _kernels.thompson_scores(a_inv, theta, idx, x, 0.3, z), means + 0.3 * sds * z
    )

    _kernels.sherman_morrison_update(a, a_inv, b, theta, 1, x, 0.4, 0.99)
    np.testing.assert_array_equal(a_inv[1], a_inv[1].T)
    np.testing.assert_array_equal(theta[1], sequential_matvec(a_inv[1], b[1]))


def _ranked_reference(
    scores: np.ndarray, cost_term: np.ndarray, theta: np.ndarray, idx: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """base.Policy.priced_choice's ranking as the array operations it replaced."""
    quality = finite_scores(scores)
    utility = finite_scores(quality - cost_term)
    order = np.argsort(-utility, kind="stable").astype(np.int64)
    greedy = finite_scores(_kernels.mean_scores(theta, idx, x)) - cost_term
    return quality, utility, order, int(order[0]) != int(np.argmax(greedy))


@settings(max_examples=300, deadline=None)
@given(
    k=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    ties=st.booleans(),
    odd=st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30, -0.0]),
)
def test_ranked_choice_is_the_array_reference_bit_for_bit(
    k: int, seed: int, ties: bool, odd: float
) -> None:
    """Same quality and utility bits, the same stable order (ties: the earlier arm first, also
    between NaN, infinities and scores past SCORE_LIMIT), the same greedy check."""
    _, _, _, theta = state(12, 6, 40, seed=seed % 1000)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=6)
    idx = rng.permutation(12)[:k].astype(np.int64)
    scores = rng.normal(size=k)
    cost_term = finite_scores(rng.random(k) * rng.choice([0.0, 1.0, 1e25], size=k))
    if ties:  # few distinct values: many equal utilities
        scores = np.round(scores)
        cost_term = np.round(cost_term)
    scores[rng.random(k) < 0.3] = odd
    got = _kernels.ranked_choice(scores, cost_term, theta, idx, x)
    want = _ranked_reference(scores, cost_term, theta, idx, x)
    for a, b in zip(got[:3], want[:3], strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert bool(got[3]) == want[3]
