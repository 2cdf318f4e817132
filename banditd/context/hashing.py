"""A dependency-free text encoder: signed feature hashing of word unigrams and bigrams.

It is the first encoder behind the context interface (the sentence encoder comes with its own
issue): deterministic across processes and restarts (blake2b, not Python's salted hash), any output
size, and cheap enough for the request path.
"""

from __future__ import annotations

import hashlib
import itertools
import re

import numpy as np

from banditd.domain import FloatArray

_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEncoder:
    def __init__(self, dim: int) -> None:
        self.dim = dim

    def _bucket(self, feature: str) -> tuple[int, float]:
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        value = int.from_bytes(digest, "little")
        return (value >> 1) % self.dim, (1.0 if value & 1 else -1.0)

    def encode(self, text: str) -> FloatArray:
        """Unit-length vector, shape (dim,), float64 (all zeros for text with no words)."""
        words = _WORD.findall(text.lower())
        vec = np.zeros(self.dim, dtype=np.float64)
        features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
        for feature in features:
            idx, sign = self._bucket(feature)
            vec[idx] += sign
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm > 0 else vec
