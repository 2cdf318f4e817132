"""The MiniLM encoders on real text (the model loads once per test session)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import grpc
import numpy as np
import pytest

from banditd.context.encoders import (
    StaticMiniLMEncoder,
    TextEncoder,
    get_encoder,
    minilm_dir,
    minilm_fingerprint,
    tail_window,
    untruncated,
    whole_folder,
)
from banditd.context.metadata import MemoryVocabularyStore
from banditd.context.pipeline import ContextPipeline
from banditd.domain import ArmSpec, RouterSpec
from banditd.errors import InvalidArgument
from banditd.evaluation.warm_start import WarmStartReport, usable_records
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import StartServer, require, router_config

require("sentence_transformers", "needs the context extra")

PREFIX = (
    "You are a careful assistant. Answer the multiple-choice question with one letter. "
    "Example: Which gas do plants absorb? (A) oxygen (B) carbon dioxide (C) helium. Answer: B. "
) * 12  # far past MiniLM's 256-token limit
QUESTIONS = (
    "Which planet is closest to the sun? (A) Mercury (B) Mars (C) Venus",
    "What does a thermometer measure? (A) mass (B) temperature (C) speed",
)


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return get_encoder("minilm", 384)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_minilm_vectors_are_unit_length_deterministic_and_semantic(minilm: TextEncoder) -> None:
    texts = ["How do I bake bread at home?", "A recipe for baking a loaf", "The stock market fell"]
    vecs = minilm.encode_batch(texts)
    assert vecs.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(minilm.encode_batch(texts[:1])[0], vecs[0], atol=1e-5)
    assert _cos(vecs[0], vecs[1]) > _cos(vecs[0], vecs[2]) + 0.2


def test_other_minilm_weights_name_themselves_the_pinned_ones_do_not(
    minilm: TextEncoder, tmp_path: Path
) -> None:
    """The pinned package's weights keep fingerprint "": a minilm router's context version is
    what it was before weights were named, so it keeps its learning; other weights (a new
    package) name their digest, and the router folds only the events they built."""
    assert minilm.fingerprint == ""
    spec = RouterSpec(
        "acme", "chat", (ArmSpec("a", 1.0, 1.0),), embedding_dim=384, encoder="minilm"
    )
    pipeline = ContextPipeline(spec, minilm, MemoryVocabularyStore())
    assert pipeline.weights == "minilm" and pipeline.version.startswith("minilm:384:w0:")
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    digest = hashlib.blake2b(b"other weights", digest_size=4).hexdigest()
    assert minilm_fingerprint(tmp_path) == digest


def test_tail_window_cuts_at_a_token_boundary_counting_from_the_end() -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(256)  # as the models' own tokenizers come: must not matter
    prompt = PREFIX + QUESTIONS[0]
    (window,) = tail_window(tokenizer, [prompt], 24)
    assert prompt.endswith(window)
    assert len(untruncated(tokenizer).encode(window, add_special_tokens=False).ids) == 24
    assert tail_window(tokenizer, ["short prompt"], 24) == ["short prompt"]


@pytest.mark.parametrize(
    "end",
    [
        " " * 3000,  # trailing whitespace: no token in the last 16 characters a token
        "\n" * 600,
        " deadbeef" + "0123456789abcdef" * 40,  # a hash past 100 characters: one [UNK]
    ],
)
def test_tail_window_counts_the_tokens_of_the_whole_prompt(end: str) -> None:
    """However many characters the last tokens span, the window is the prompt's last N tokens
    as its whole tokenisation has them."""
    from tokenizers import Tokenizer

    tokenizer = untruncated(Tokenizer.from_file(str(minilm_dir() / "tokenizer.json")))
    prompt = PREFIX + QUESTIONS[0] + end
    offsets = tokenizer.encode(prompt, add_special_tokens=False).offsets
    assert tail_window(tokenizer, [prompt], 24) == [prompt[offsets[-24][0] :]]


@pytest.mark.parametrize("prompt", ["a\ud800b", "an emoji cut between its halves \ud83d"])
def test_a_prompt_with_a_lone_surrogate_is_invalid_argument(
    minilm: TextEncoder, prompt: str
) -> None:
    """Text that is not Unicode (a JavaScript string cut inside a surrogate pair, read from a
    JSON file) is INVALID_ARGUMENT before an encoder sees it, and warm start skips it."""
    for window in (0, 8):
        spec = RouterSpec(
            tenant="t",
            name="r",
            arms=(ArmSpec("a", 0.0, 0.0),),
            encoder="minilm",
            embedding_dim=384,
            text_window_tokens=window,
        )
        pipeline = ContextPipeline(spec, minilm, MemoryVocabularyStore())
        with pytest.raises(InvalidArgument, match=r"^prompt: is not valid Unicode"):
            pipeline.embed([prompt])
    report = WarmStartReport()
    records = [{"prompt": prompt, "models": {"a": {"quality": 1.0, "cost_usd": 0.0}}, "_line": 1}]
    assert usable_records(records, report, 200_000) == []
    assert report.skip_reasons == {"prompt": 1}


def test_minilm_tail_window_tells_shared_prefix_prompts_apart(minilm: TextEncoder) -> None:
    prompts = [PREFIX + q for q in QUESTIONS]
    whole = minilm.encode_batch(prompts)
    tail = minilm.encode_batch(prompts, window_tokens=64)
    assert _cos(whole[0], whole[1]) > 0.999  # only the shared template was read
    assert _cos(tail[0], tail[1]) < 0.9
    # A very long prompt is cut by tokens, not refused.
    assert minilm.encode_batch(["word " * 40_000], window_tokens=128).shape == (1, 384)


def test_static_encoder_reads_a_model2vec_folder_with_the_minilm_tokenizer(
    tmp_path: Path, minilm: TextEncoder
) -> None:
    """The distilled model's format and tokenizer, with small random vectors: distilling the
    real one (`banditd distill-encoder`) takes minutes on a loaded 2-core machine."""
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    vectors = np.random.default_rng(0).normal(size=(tokenizer.get_vocab_size(), 256))
    StaticModel(vectors.astype(np.float32), tokenizer).save_pretrained(str(tmp_path))
    encoder = StaticMiniLMEncoder(tmp_path)
    prompts = [PREFIX + q for q in QUESTIONS]
    vecs = encoder.encode_batch(prompts, window_tokens=24)
    whole = encoder.encode_batch(prompts)
    assert vecs.shape == (2, 256)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert _cos(whole[0], whole[1]) > 0.99
    assert _cos(vecs[0], vecs[1]) < 0.9
    np.testing.assert_array_equal(StaticMiniLMEncoder(tmp_path).encode_batch(prompts, 24), vecs)


async def test_concurrent_text_selects_are_micro_batched(
    sqlite_url: str, start_server: StartServer, minilm: TextEncoder
) -> None:
    server = await start_server(sqlite_url)
    config = router_config(encoder="minilm", embedding_dim=0, text_window_tokens=64)
    put = await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    assert put.router.embedding_dim == 384
    batcher = server.app.catalog.encoders.batchers["minilm"]
    before = batcher.calls
    n = 24
    responses = await asyncio.gather(
        *(
            server.router.Select(
                pb.SelectRequest(tenant="acme", router="chat", prompt=PREFIX + f"question {i}?")
            )
            for i in range(n)
        )
    )
    assert len({r.decision_id for r in responses}) == n
    assert batcher.encoded >= n
    assert batcher.calls - before < n  # shared calls, not one per Select
    assert responses[0].context_version.startswith("minilm:384:w64:")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.router.Select(
            pb.SelectRequest(
                tenant="acme", router="chat", embedding=pb.Embedding(values=[0.1] * 16)
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expects 384 values, got 16" in (info.value.details() or "")
    bad = router_config(encoder="minilm", embedding_dim=16)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.admin.PutRouter(pb.PutRouterRequest(router=bad))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_folder_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    """A writer that fails leaves no folder; of two writers the first renamed wins, whole."""
    target = tmp_path / "static"
    with pytest.raises(RuntimeError), whole_folder(target, "model.safetensors") as folder:
        (folder / "model.safetensors").write_text("half")
        raise RuntimeError("stopped midway")
    assert not target.exists()
    with (
        whole_folder(target, "model.safetensors") as first,
        whole_folder(target, "model.safetensors") as second,
    ):
        for folder, text in ((first, "first"), (second, "second")):
            (folder / "model.safetensors").write_text(text)
            (folder / "config.json").write_text(text)
    assert {f.name: f.read_text() for f in target.iterdir()} == {
        "model.safetensors": "second",
        "config.json": "second",
    }
    assert [f.name for f in tmp_path.iterdir()] == ["static"]  # no folder left behind
    made = tmp_path / "made"
    made.mkdir()
    assert target.stat().st_mode == made.stat().st_mode  # readable as any folder made here
