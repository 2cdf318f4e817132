"""The static encoder gives model2vec's ``StaticModel.encode`` vectors bit for bit.

`StaticMiniLMEncoder.encode_batch` tokenises and takes the mean itself, without model2vec's
per-call dispatch; x, and so every replay and every stored decision, must not change.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import require

require("model2vec", "needs the context extra")

from banditd.context.encoders import (  # noqa: E402
    StaticMiniLMEncoder,
    minilm_dir,
    static_dir,
    tail_window,
    untruncated,
)

DATA = Path(__file__).parents[2] / "data" / "routerbench-dev.jsonl.gz"
PROMPTS = [
    "",
    "   \t\n ",
    "\u0000\u200b",  # a control character and a zero-width space: no token
    "🙂🚀",  # unknown to the vocabulary: the [UNK] token is left out
    "Hello",
    "hello, WORLD!! (snake_case) x^2 + y_1 = 3.14e-2; C++ & C#",
    "Crème brûlée à Zürich, naïve façade, Ångström",
    "東京は日本の首都です。北京是中国的首都。",
    "مرحبا بالعالم — Привет, мир — \u03b3\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5",  # Greek
    "e\u0301 vs \u00e9, ﬁ ligature, \uff12 full-width, ① circled",
    "line one\r\nline two\x0bvertical tab\x0cform feed\x7fdel",
    "supercalifragilisticexpialidocious" * 4,  # one word past WordPiece's 100 characters
    "The quick brown fox jumps over the lazy dog. " * 400,  # thousands of tokens
]


def _dev_prompts(n: int) -> list[str]:
    with gzip.open(DATA, "rt") as f:
        return [json.loads(line)["prompt"] for _, line in zip(range(n), f, strict=False)]


def _model2vec(encoder: StaticMiniLMEncoder, texts: Sequence[str], window: int) -> np.ndarray:
    """What encode_batch returned through ``StaticModel.encode`` (model2vec 0.10.0)."""
    texts = tail_window(untruncated(encoder.model.tokenizer), texts, window)
    vecs = np.asarray(encoder.model.encode(list(texts), max_length=None), dtype=np.float64)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return np.divide(vecs, norms, out=np.zeros_like(vecs), where=norms > 0)


def _random_model(folder: Path, dtype: type, normalize: bool) -> Path:
    """A model2vec folder with the MiniLM tokenizer and random vectors (distilling the real one
    takes minutes); float16 and normalize are what `distill_static` writes."""
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    vectors = np.random.default_rng(7).normal(size=(tokenizer.get_vocab_size(), 256))
    StaticModel(vectors.astype(dtype), tokenizer, normalize=normalize).save_pretrained(str(folder))
    return folder


def test_model2vec_is_the_version_the_encoder_mirrors() -> None:
    # StaticMiniLMEncoder.encode_batch repeats StaticModel.encode's steps: check them again
    # (this file) before moving the pin.
    assert importlib.metadata.version("model2vec") == "0.10.0"


@pytest.mark.parametrize(
    ("dtype", "normalize"), [(np.float16, True), (np.float16, False), (np.float32, True)]
)
def test_encode_batch_is_model2vec_encode_to_the_bit(
    tmp_path: Path, dtype: type, normalize: bool
) -> None:
    encoder = StaticMiniLMEncoder(_random_model(tmp_path, dtype, normalize))
    assert encoder.model.embedding.dtype == dtype and encoder.model.normalize is normalize
    texts = PROMPTS + _dev_prompts(300)
    for window in (0, 24):
        ours = encoder.encode_batch(texts, window)
        np.testing.assert_array_equal(ours, _model2vec(encoder, texts, window))
        # One text at a time gives the same rows as the batch.
        for i in (0, 3, 5, 7, 12, len(texts) - 1):
            np.testing.assert_array_equal(encoder.encode_batch([texts[i]], window)[0], ours[i])
    zeros = encoder.encode_batch(PROMPTS[:4])
    assert not zeros.any()  # no token: the zero vector, as model2vec gives
    assert encoder.encode_batch([]).shape == (0, 256)


def test_the_distilled_model() -> None:
    encoder = StaticMiniLMEncoder(static_dir())  # distilled on first use, as serving does
    texts = PROMPTS + _dev_prompts(300)
    np.testing.assert_array_equal(encoder.encode_batch(texts), _model2vec(encoder, texts, 0))
