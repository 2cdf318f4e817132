"""WordPieceIds gives the MiniLM tokenizer's own ids, whatever the text."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import require

require("tokenizers", "needs the context extra")

from banditd.context.encoders import minilm_dir, untruncated  # noqa: E402
from banditd.context.wordpiece import WordPieceIds  # noqa: E402

DATA = Path(__file__).parents[2] / "data"
# Letters, digits, every ASCII punctuation mark, whitespace, words (one past WordPiece's 100
# characters): text of these is split in Python.
PLAIN = (
    list("abcXYZ019 \t\n\r")
    + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    + ["hello", "Tokenization", "unaffable", "##ing", "[", "]", "UNK", "mask", "pad"]
    + ["x" * 101, "a" * 100]
)
# Other control characters, non-ASCII and the added tokens' text (matched in the raw text before
# anything else): text with any of these goes to the tokenizer whole.
OTHER = ["\x0b", "\x0c", "\x00", "\x1f", "\x7f", "naïve", "東京", "\u200b", "\ufffd", "🙂", "ﬁ"]
OTHER += ["[UNK]", "[unk]", "x[PAD]y", "[Mask]", "[CLS] a [SEP]"]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from tokenizers import Tokenizer

    return untruncated(Tokenizer.from_file(str(minilm_dir() / "tokenizer.json")))


def _expected(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]


def test_random_text_gets_the_tokenizers_ids(tokenizer: Any) -> None:
    rng = np.random.default_rng(3)
    texts = ["", " ", "Hello, World!"] + [
        "".join(rng.choice(parts, size=int(rng.integers(1, 40))))
        for parts in (PLAIN, PLAIN + OTHER)
        for _ in range(2000)
    ]
    ids = WordPieceIds(tokenizer)
    assert ids.splits
    assert sum(ids._split(t) is not None for t in texts) > 2000  # most split here
    assert ids.ids(texts) == _expected(tokenizer, texts)
    assert ids.ids(texts) == _expected(tokenizer, texts)  # again, every word now kept


@pytest.mark.parametrize("name", ["routerbench-dev.jsonl.gz", "routellm-dev.jsonl.gz"])
def test_the_dev_prompts_get_the_tokenizers_ids(tokenizer: Any, name: str) -> None:
    with gzip.open(DATA / name, "rt") as f:
        texts = [json.loads(line)["prompt"] for _, line in zip(range(2000), f, strict=False)]
    assert WordPieceIds(tokenizer).ids(texts) == _expected(tokenizer, texts)


def test_words_kept_are_bounded(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("banditd.context.wordpiece.WORDS_KEPT", 10)
    ids = WordPieceIds(tokenizer)
    texts = [f"word{k} other{k}" for k in range(50)]
    assert ids.ids(texts) == _expected(tokenizer, texts)
    assert len(ids._words) <= 10


def test_a_tokenizer_that_keeps_case_goes_whole(tokenizer: Any) -> None:
    from tokenizers import normalizers

    cased = untruncated(tokenizer)
    cased.normalizer = normalizers.BertNormalizer(lowercase=False)
    ids = WordPieceIds(cased)
    assert not ids.splits
    texts = ["Hello World", "HELLO world"]
    assert ids.ids(texts) == _expected(cased, texts)
