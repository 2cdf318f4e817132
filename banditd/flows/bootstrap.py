"""The Poisson bootstrap of the off-policy estimators' sums (``banditd.flows.ope``).

Each replicate weights each decision by an independent Poisson(1) draw. The draws are made in
blocks of rows, streaming over the log, so no n x replicates matrix is ever held for a long log.
"""

from __future__ import annotations

import numpy as np

from banditd.domain import FloatArray
from banditd.flows.stop import NEVER, Stop

BOOTSTRAP_CHUNK = 4096  # rows per block of the streaming bootstrap
# ... and fewer past 1000 replicates (the default), so a block's Poisson counts (replicates x
# rows) stay 32 MB whatever the replicates (Evaluate allows 100,000: 3.3 GB a block of 4096 rows).
BOOTSTRAP_CELLS = BOOTSTRAP_CHUNK * 1000


def poisson_sums(
    terms: dict[str, tuple[FloatArray, FloatArray]],
    replicates: int,
    seed: int,
    stop: Stop = NEVER,
) -> dict[str, tuple[FloatArray, FloatArray]]:
    """Poisson bootstrap sums of each estimator's numerators (n, 3) and denominators (n, 1):
    (replicates, 3) and (replicates, 1). ``stop`` is checked before each block of rows."""
    rng = np.random.default_rng(seed)
    n = next(iter(terms.values()))[0].shape[0]
    out = {name: (np.zeros((replicates, 3)), np.zeros((replicates, 1))) for name in terms}
    rows = min(BOOTSTRAP_CHUNK, max(1, BOOTSTRAP_CELLS // replicates))
    for start in range(0, n, rows):
        stop.check("bootstrap", start, n)  # a block is at most BOOTSTRAP_CELLS draws
        end = min(start + rows, n)
        counts = rng.poisson(1.0, size=(replicates, end - start)).astype(np.float64)
        for name, (num, den) in terms.items():
            out[name][0][:] += counts @ num[start:end]
            out[name][1][:] += counts @ den[start:end]
    return out
