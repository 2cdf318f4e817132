"""PCA reduction of embeddings (faiss.PCAMatrix), fitted per router and persisted with it.

A router with ``pca_dim`` > 0 keeps x small whatever its encoder's size: the embedding part of x
is the embedding projected on its first ``pca_dim`` principal components. The PCA is fitted on
the first ``pca_fit_samples`` embeddings the router sees (prompts encoded, or caller-supplied
embeddings) and stored (table ``context_models``, keyed by the router and a fingerprint of what
the PCA depends on), so restarts and other replicas use the same projection; until it exists the
embedding part of x is zeros (the router learns from the intercept and metadata meanwhile, and
those events stay valid data afterwards).
"""

from __future__ import annotations

import io

import faiss
import numpy as np

from banditd.context.samples import Float32Array
from banditd.domain import FloatArray

_ARRAYS = ("A", "b", "mean", "eigenvalues")


class Reduction:
    """A fitted PCA: d_in -> d_out."""

    def __init__(self, pca: faiss.PCAMatrix) -> None:
        self.pca = pca
        self.d_in, self.d_out = int(pca.d_in), int(pca.d_out)
        # y = A x + b, applied with NumPy: faiss's apply starts its OpenMP pool for one vector
        # (about 17 ms on a loaded 2-core machine, against microseconds here).
        self._a = faiss.vector_to_array(pca.A).reshape(self.d_out, self.d_in).astype(np.float64)
        self._b = faiss.vector_to_array(pca.b).astype(np.float64)

    @classmethod
    def fit(cls, samples: Float32Array | FloatArray, d_out: int) -> Reduction:
        """samples: shape (n, d_in), n >= d_out; faiss trains on float32 (float32 samples in
        C order are not copied)."""
        pca = faiss.PCAMatrix(samples.shape[1], d_out)
        pca.train(np.ascontiguousarray(samples, dtype=np.float32))
        return cls(pca)

    def apply(self, vecs: FloatArray) -> FloatArray:
        """vecs: shape (n, d_in) -> (n, d_out), float64."""
        x = np.asarray(vecs, dtype=np.float32).astype(np.float64)
        out: FloatArray = x @ self._a.T + self._b
        return out

    def to_bytes(self) -> bytes:
        """The fitted matrix (A, b, mean, eigenvalues) as an .npz; identical PCA from_bytes."""
        buf = io.BytesIO()
        pca = self.pca
        np.savez(
            buf,
            dims=np.array([self.d_in, self.d_out]),
            A=faiss.vector_to_array(pca.A),
            b=faiss.vector_to_array(pca.b),
            mean=faiss.vector_to_array(pca.mean),
            eigenvalues=faiss.vector_to_array(pca.eigenvalues),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Reduction:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            d_in, d_out = (int(v) for v in z["dims"])
            pca = faiss.PCAMatrix(d_in, d_out)
            for name in _ARRAYS:
                faiss.copy_array_to_vector(z[name], getattr(pca, name))
        pca.is_trained = True
        return cls(pca)
