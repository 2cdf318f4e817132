"""The latency and energy heads' arrays (issue 21), as a Posterior holds them per arm.

The heads are regressions of reported latency_ms and energy_wh on x, built as the cost model is
(same kernels, separate statistics): "lat_*" and "energy_*" arrays, each (a, a_inv, b, theta)
with a sum and a count of reports per arm. Their ridge is HEAD_RIDGE, not the quality prior's
weight: a prior worth 30 observations would pull a latency of 8 s toward 0 by half after 20
reports (the heads' prior is their mean).
"""

from __future__ import annotations

from typing import Any

import numpy as np

HEADS = ("lat", "energy")
HEAD_RIDGE = 1.0


def head_shapes(dim: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(array name, shape per arm) of one latency or energy head with ``dim`` features."""
    return (
        ("a", (dim, dim)),
        ("a_inv", (dim, dim)),
        ("b", (dim,)),
        ("theta", (dim,)),
        ("sum", ()),
        ("n", ()),
    )


def empty_heads(dim: int) -> dict[str, Any]:
    """Empty latency and energy statistics for ``dim`` features."""
    return {
        f"{h}_{name}": np.zeros((0, *shape), dtype=np.int64 if name == "n" else np.float64)
        for h in HEADS
        for name, shape in head_shapes(dim)
    }
