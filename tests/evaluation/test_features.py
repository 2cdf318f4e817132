"""The replay's embedding cache: reused for the same prompts, encoder settings and weights only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from banditd import progress
from banditd.domain import ArmSpec, RouterSpec
from banditd.errors import InvalidArgument
from banditd.evaluation import replay
from banditd.evaluation.replay.features import embeddings

SPEC = RouterSpec("acme", "chat", (ArmSpec("cheap", 0.1, 0.2), ArmSpec("dear", 5.0, 10.0)))


def test_embeddings_of_other_encoder_weights_are_not_taken_from_the_cache(tmp_path: Path) -> None:
    prompts = ["what is two and two", "write a sonnet"]
    pipeline = replay.pipeline_of(SPEC, replay.MAX_PROMPT_CHARS)
    quiet = progress.Progress()  # draws nothing: no bars are shown
    first = embeddings(pipeline, prompts, "encoding", quiet, tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    np.testing.assert_array_equal(embeddings(pipeline, prompts, "encoding", quiet, tmp_path), first)
    assert len(list(tmp_path.iterdir())) == 1  # the same weights: reused
    pipeline.encoder.fingerprint = "0ther"  # as after a new distillation of the same encoder
    embeddings(pipeline, prompts, "encoding", quiet, tmp_path)
    assert len(list(tmp_path.iterdir())) == 2  # computed again, kept beside the first


def test_a_cache_file_cut_short_is_computed_again(tmp_path: Path) -> None:
    prompts = ["what is two and two", "write a sonnet"]
    pipeline = replay.pipeline_of(SPEC, replay.MAX_PROMPT_CHARS)
    quiet = progress.Progress()
    first = embeddings(pipeline, prompts, "encoding", quiet, tmp_path)
    (kept,) = tmp_path.iterdir()
    whole = kept.read_bytes()
    for cut in (whole[:-8], b""):  # a run stopped while writing it
        kept.write_bytes(cut)
        np.testing.assert_array_equal(
            embeddings(pipeline, prompts, "encoding", quiet, tmp_path), first
        )
        assert kept.read_bytes() == whole  # and kept whole again
    assert [p.name for p in tmp_path.iterdir()] == [kept.name]  # no partial file left


def test_a_prompt_that_is_not_unicode_is_invalid_argument_with_a_cache(tmp_path: Path) -> None:
    pipeline = replay.pipeline_of(SPEC, replay.MAX_PROMPT_CHARS)
    with pytest.raises(InvalidArgument, match="not valid Unicode"):  # as without the cache
        embeddings(
            pipeline, ["an emoji cut in half \ud83d"], "encoding", progress.Progress(), tmp_path
        )
    assert list(tmp_path.iterdir()) == []
