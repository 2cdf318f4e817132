"""Token ids of a BERT WordPiece tokenizer, with plain-ASCII text split in Python.

The ``tokenizers`` library spends most of a short prompt's time in its normaliser and
pre-tokeniser (about 0.07 ms for 200 characters here), which for printable ASCII come down to
lowercasing, splitting at whitespace and isolating each punctuation character. Such text is split
here, and each word's WordPiece ids come from the tokenizer's own model, kept per word: the same
ids as the whole tokenizer gives (tests/context/test_wordpiece.py checks them against it). Any
other text (another script, a control character, an added token's text) goes to the tokenizer
whole, as does all text of a tokenizer that is not a lowercasing BERT one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

_PUNCTUATION = re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")  # Rust's is_ascii_punctuation
_PIECES = re.compile(rf"[^\s{_PUNCTUATION}]+|[{_PUNCTUATION}]")
_PLAIN = re.compile(r"[\t\n\r\x20-\x7e]*\Z")  # printable ASCII and the three whitespace controls
WORDS_KEPT = 65_536  # distinct words whose ids are kept (then forgotten all at once)


class WordPieceIds:
    """``ids(texts)``: each text's token ids, no special tokens added (what
    ``tokenizer.encode_batch_fast(texts, add_special_tokens=False)`` gives as ``.ids``)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        spec = json.loads(tokenizer.to_str())
        normalizer = spec.get("normalizer") or {}
        # On plain ASCII, a lowercasing BertNormalizer only lowercases (and turns \t \n \r into
        # spaces); BertPreTokenizer splits at whitespace and isolates each punctuation character.
        self.splits = (
            normalizer.get("type") == "BertNormalizer"
            and normalizer.get("lowercase") is True
            and (spec.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
            and spec["model"]["type"] == "WordPiece"
        )
        # Added tokens are matched in the raw text before anything else: such text goes whole.
        self._added = tuple(t["content"].lower() for t in spec.get("added_tokens", []))
        self._words: dict[str, tuple[int, ...]] = {}

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        out: list[list[int] | None] = [self._split(t) if self.splits else None for t in texts]
        rest = [i for i, ids in enumerate(out) if ids is None]
        if rest:
            encodings = self.tokenizer.encode_batch_fast(
                [texts[i] for i in rest], add_special_tokens=False
            )
            for i, encoding in zip(rest, encodings, strict=True):
                out[i] = encoding.ids
        return out  # type: ignore[return-value]  # every None was filled

    def _split(self, text: str) -> list[int] | None:
        if not (text.isascii() and _PLAIN.match(text)):
            return None
        lowered = text.lower()
        if any(added in lowered for added in self._added):
            return None
        words = self._words
        ids: list[int] = []
        for word in _PIECES.findall(lowered):
            pieces = words.get(word)
            if pieces is None:
                if len(words) >= WORDS_KEPT:
                    words.clear()
                pieces = words[word] = tuple(t.id for t in self.tokenizer.model.tokenize(word))
            ids.extend(pieces)
        return ids
