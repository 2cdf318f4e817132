"""The embeddings a router's PCA is fitted on, kept until the fit.

``pca_fit_samples`` may be up to 1,000,000: kept as a list of float64 rows and stacked for the
fit, that was about 3 GB per router at 384 values, twice that during the stack. Faiss trains on
float32 anyway, so the rows are kept as float32 in one array of ``pca_fit_samples`` rows, made
at the first sample (the operating system commits a page of it once it is written), and the fit
reads it in place: the fitted PCA is the same.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from banditd.domain import FloatArray

Float32Array = npt.NDArray[np.float32]


class PcaSamples:
    """Up to ``capacity`` embeddings of one size, float32."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._rows: Float32Array | None = None  # shape (capacity, dim) from the first sample
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def full(self) -> bool:
        return self._count >= self.capacity

    @property
    def nbytes(self) -> int:
        """Bytes held for the samples (0 before the first)."""
        return 0 if self._rows is None else self._rows.nbytes

    def add(self, raw: FloatArray) -> None:
        """Keep an embedding, shape (dim,), unless full or all zeros. One with a value past
        float32's range is not kept either: it would make every value of the fit NaN."""
        if self.full or not np.any(raw):
            return
        with np.errstate(over="ignore"):  # an overflow is inf here, and not kept
            row = np.asarray(raw, dtype=np.float32)
        if not np.isfinite(row).all():
            return
        if self._rows is None:
            self._rows = np.empty((self.capacity, row.shape[0]), dtype=np.float32)
        self._rows[self._count] = row
        self._count += 1

    def rows(self) -> Float32Array:
        """The samples kept, shape (len(self), dim), float32: a view, not a copy."""
        if self._rows is None:
            return np.zeros((0, 0), dtype=np.float32)
        return self._rows[: self._count]

    def copy(self) -> PcaSamples:
        """Another buffer holding the same samples (only the rows written are copied)."""
        twin = PcaSamples(self.capacity)
        if self._rows is not None:
            twin._rows = np.empty_like(self._rows)
            twin._rows[: self._count] = self._rows[: self._count]
            twin._count = self._count
        return twin
