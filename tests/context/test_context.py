"""Context pipeline: metadata features, micro-batching, PCA and kNN, in process and over gRPC."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest

from banditd.context.batching import MicroBatcher
from banditd.context.device import faiss_device
from banditd.context.encoders import HashingTextEncoder
from banditd.context.knn import OutcomeIndex, neighbour_features
from banditd.context.metadata import (
    MemoryVocabularyStore,
    MetadataFeatures,
    hashed_slot,
    own_slots,
)
from banditd.context.pipeline import ContextPipeline
from banditd.context.reduction import Reduction
from banditd.domain import DEFAULT_METADATA_SLOTS, ArmSpec, FloatArray, RouterSpec
from banditd.evaluation import replay
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import Running, StartServer, router_config


def _spec(**fields: object) -> RouterSpec:
    return RouterSpec(
        tenant="t",
        name="r",
        arms=(ArmSpec("a", 0.0, 0.0), ArmSpec("b", 0.0, 0.0)),
        **fields,  # type: ignore[arg-type]
    )


async def _x(server: Running, response: pb.SelectResponse) -> FloatArray:
    """The context x a decision was made with (kept in its decision, on the server)."""
    x = (await server.claims(response.decision_id)).x
    assert x is not None
    return x


# -- metadata -------------------------------------------------------------------------------------


def test_metadata_values_get_one_hot_slots_in_order_then_hash_past_the_bound() -> None:
    spec = _spec(metadata_keys=("task", "tier"), metadata_slots=4)
    features = MetadataFeatures(spec, MemoryVocabularyStore())
    assert own_slots(4) == 3
    seen = []
    for task in ("arc", "mbpp", "arc", "wino", "gsm8k", "mmlu"):
        features.resolve_now({"task": task})
        seen.append(features.features({"task": task}))
    # First three values: slots 0, 1, 2 of the task block; later ones share slot 3.
    assert [int(np.argmax(v)) for v in seen] == [0, 1, 0, 2, 3, 3]
    assert hashed_slot("task", "gsm8k", 4) == 3
    assert all(v.sum() == 1.0 and v[4:].sum() == 0.0 for v in seen)
    # A missing or empty key sets nothing; the tier block starts at 4.
    assert not features.features({}).any()
    assert not features.features({"task": ""}).any()
    features.resolve_now({"tier": "gold"})
    assert int(np.argmax(features.features({"tier": "gold"}))) == 4


async def test_metadata_vocabulary_is_shared_by_replicas_and_survives_restart(
    sqlite_url: str, start_server: StartServer
) -> None:
    first = await start_server(sqlite_url)
    config = router_config(metadata_keys=["task"], metadata_slots=8)
    await first.admin.PutRouter(pb.PutRouterRequest(router=config))

    async def select(server: object, task: str) -> FloatArray:
        stub = server.router  # type: ignore[attr-defined]
        resp = await stub.Select(
            pb.SelectRequest(tenant="acme", router="chat", prompt="hi", metadata={"task": task})
        )
        # The metadata block, after the intercept and embedding.
        return (await _x(server, resp))[1 + 4 :]  # type: ignore[arg-type]

    assert int(np.argmax(await select(first, "arc"))) == 0
    second = await start_server(sqlite_url)  # another replica on the same database
    assert int(np.argmax(await select(second, "mbpp"))) == 1  # the next free slot
    assert int(np.argmax(await select(first, "mbpp"))) == 1  # learnt from the store
    assert not (await select(first, "")).any()
    await first.stop()
    await second.stop()
    again = await start_server(sqlite_url)
    assert int(np.argmax(await select(again, "arc"))) == 0
    assert int(np.argmax(await select(again, "mbpp"))) == 1
    assert int(np.argmax(await select(again, "wino"))) == 2


def test_replay_with_task_metadata_learns_what_the_text_cannot_tell(tmp_path: Path) -> None:
    """Every prompt has the same text; the task decides which model is right."""
    rng = np.random.default_rng(3)
    path = tmp_path / "tasks.jsonl"
    with path.open("w") as out:
        for i in range(600):
            task = ["maths", "code"][int(rng.integers(2))]
            good = "a" if task == "maths" else "b"
            models = {m: {"quality": float(m == good), "cost_usd": 0.001} for m in ("a", "b")}
            out.write(json.dumps({"id": i, "task": task, "prompt": "q", "models": models}) + "\n")
    base = replay.Options(data=path, exploration=0.1, embedding_dim=1)
    plain = replay.replay(base)
    tagged = replay.replay(replay.Options(**{**base.__dict__, "metadata_from": ("task",)}))
    assert plain["mean_quality"] < 0.6
    assert tagged["mean_quality"] > 0.95
    assert tagged["context"]["metadata_from"] == ["task"]


# -- micro-batching -------------------------------------------------------------------------------


class CountingEncoder(HashingTextEncoder):
    """The hashing encoder, counting its calls and taking a while per call like a model."""

    name = "counting"
    heavy = True

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.batches: list[int] = []

    def encode_batch(self, texts: Sequence[str], window_tokens: int = 0) -> FloatArray:
        self.batches.append(len(texts))
        import time

        time.sleep(0.005)
        return super().encode_batch(texts, window_tokens)


async def test_concurrent_prompts_share_encoder_calls() -> None:
    encoder = CountingEncoder(8)
    batcher = MicroBatcher(encoder, max_wait_s=0.002, max_batch=32)
    texts = [f"prompt number {i}" for i in range(100)]
    try:
        vecs = await asyncio.gather(*(batcher.encode(t) for t in texts))
    finally:
        batcher.close()
    direct = HashingTextEncoder(8).encode_batch(texts)
    np.testing.assert_array_equal(np.stack(vecs), direct)
    assert sum(encoder.batches) == 100
    assert len(encoder.batches) <= 100 // 32 + 2  # batches, not one call a prompt
    assert max(encoder.batches) <= 32


async def test_an_encoder_error_reaches_every_waiter() -> None:
    class Broken(CountingEncoder):
        def encode_batch(self, texts: Sequence[str], window_tokens: int = 0) -> FloatArray:
            raise RuntimeError("model gone")

    batcher = MicroBatcher(Broken(4))
    try:
        results = await asyncio.gather(
            *(batcher.encode(f"p{i}") for i in range(5)), return_exceptions=True
        )
    finally:
        batcher.close()
    assert all(isinstance(r, RuntimeError) for r in results)


def test_hashing_window_keeps_the_end_of_shared_prefix_prompts() -> None:
    encoder = HashingTextEncoder(32)
    prefix = "Answer the question. " * 50
    a, b = prefix + "What is the capital of France?", prefix + "How do magnets work?"
    whole = encoder.encode_batch([a, b])
    tail = encoder.encode_batch([a, b], window_tokens=8)
    assert float(whole[0] @ whole[1]) > 0.95  # the template dominates
    assert float(tail[0] @ tail[1]) < 0.5


def test_hashing_window_counts_whitespace_separated_chunks_not_words() -> None:
    """The hashing encoder's window keeps a prompt's last N runs of non-whitespace, then hashes
    the words in them: a chunk may hold several words (state-of-the-art) or none (--). Pinned:
    counting otherwise would change the x of every router that has a window."""
    encoder = HashingTextEncoder(64)
    prompt = "Compare them:\tstate-of-the-art models --\nnow"
    kept = encoder.encode_batch([prompt], window_tokens=3)  # "models", "--", "now"
    np.testing.assert_array_equal(kept, encoder.encode_batch(["models now"]))
    assert not np.array_equal(kept, encoder.encode_batch(["art models now"]))  # 3 words
    kept = encoder.encode_batch([prompt], window_tokens=4)  # + "state-of-the-art"
    np.testing.assert_array_equal(kept, encoder.encode_batch(["state of the art models now"]))


# -- PCA ------------------------------------------------------------------------------------------


def test_pca_round_trips_through_bytes() -> None:
    samples = np.random.default_rng(0).normal(size=(50, 10))
    pca = Reduction.fit(samples, 3)
    again = Reduction.from_bytes(pca.to_bytes())
    np.testing.assert_array_equal(pca.apply(samples[:5]), again.apply(samples[:5]))
    assert again.apply(samples[:5]).shape == (5, 3)


def test_context_version_names_the_pca_in_use() -> None:
    """The version read on every Select is kept between reads, and follows the PCA set:
    pending, then each fit's own fingerprint."""
    spec = _spec(embedding_dim=10, pca_dim=3, pca_fit_samples=20)
    pipeline = ContextPipeline(spec, HashingTextEncoder(10), MemoryVocabularyStore())
    assert pipeline.version == pipeline.version and "/pending:" in pipeline.version
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(2):
        pca = Reduction.fit(rng.normal(size=(50, 10)), 3)
        pipeline.set_reduction(pca)
        fingerprint = hashlib.blake2b(pca.to_bytes(), digest_size=4).hexdigest()
        assert f"pca3/{fingerprint}:" in pipeline.version
        seen.add(pipeline.version)
    assert len(seen) == 2


async def test_pca_is_fitted_from_first_embeddings_and_persisted_across_restart(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    config = router_config(embedding_dim=8, pca_dim=3, pca_fit_samples=12)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    rng = np.random.default_rng(1)

    async def select(stub: object, vec: FloatArray) -> pb.SelectResponse:
        request = pb.SelectRequest(
            tenant="acme", router="chat", embedding=pb.Embedding(values=vec.tolist())
        )
        response: pb.SelectResponse = await stub.Select(request)  # type: ignore[attr-defined]
        return response

    for _ in range(11):  # not enough to fit: the embedding part is zeros
        resp = await select(server.router, rng.normal(size=8))
        assert (await _x(server, resp)).shape == (1 + 3,)
        assert not (await _x(server, resp))[1:].any()
        assert resp.context_version.endswith(f"pca3/pending:m0x{DEFAULT_METADATA_SLOTS}:k0")
    query = rng.normal(size=8)
    # The 12th completes the samples: the PCA is fitted off the request path, so its own x is
    # still pending, and the Selects once the fit is in use get the projection.
    twelfth = await select(server.router, rng.normal(size=8))
    assert not (await _x(server, twelfth))[1:].any() and "pending" in twelfth.context_version
    await server.app.catalog.reductions.settle()
    live = await select(server.router, query)
    assert (await _x(server, live))[1:].any()
    assert "pending" not in live.context_version
    await server.stop()
    restarted = await start_server(database_url)
    again = await select(restarted.router, query)
    np.testing.assert_array_equal(await _x(restarted, again), await _x(restarted, live))
    assert again.context_version == live.context_version
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await select(restarted.router, rng.normal(size=7))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expects 8 values, got 7" in (info.value.details() or "")


# -- kNN ------------------------------------------------------------------------------------------


def _brute_force(
    vectors: FloatArray, arm_idx: np.ndarray, rewards: FloatArray, query: FloatArray, k: int
) -> FloatArray:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ (query / np.linalg.norm(query))
    top = np.argsort(-sims, kind="stable")[:k]
    out = np.zeros(4)
    for arm in range(2):
        mine = top[arm_idx[top] == arm]
        w = np.maximum(sims[mine], 0.0)
        out[2 * arm] = (w * rewards[mine]).sum() / w.sum() if w.sum() > 0 else 0.0
        out[2 * arm + 1] = len(mine) / k
    return out


@pytest.mark.parametrize("approx_after", [10_000, 20, 100])
def test_knn_features_equal_a_brute_force_computation(approx_after: int) -> None:
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(300, 6))  # past the row buffers' first doublings (64, 128, 256)
    arm_idx = rng.integers(2, size=300)
    rewards = rng.random(300)
    index = OutcomeIndex(6, ["a", "b"], k=7, approx_after=approx_after)
    for vec, arm, reward in zip(vectors, arm_idx, rewards, strict=True):
        assert index.add(vec, "ab"[arm], float(reward))
    assert index.approximate == (approx_after <= 300)
    units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(index.vectors, units, rtol=1e-6)
    np.testing.assert_array_equal(index.arm_idx, arm_idx)
    np.testing.assert_array_equal(index.rewards, rewards)
    assert not index.add(np.zeros(6), "a", 1.0)  # no direction: not indexed
    assert not index.add(np.ones(6), "unknown-arm", 1.0)
    for query in rng.normal(size=(5, 6)):
        expected = _brute_force(vectors, arm_idx, rewards, query, 7)
        np.testing.assert_allclose(index.features(query), expected, atol=1e-5)
    loaded = OutcomeIndex(6, ["a", "b"], k=7, approx_after=approx_after)
    loaded.load(units.astype(np.float32), arm_idx, rewards)
    assert loaded.approximate == index.approximate and loaded.size == 300
    twin = copy.deepcopy(index)
    twin.add(units[0], "b", 0.0)  # a replay fork grows apart from its parent
    assert (twin.size, index.size) == (301, 300)
    for query in rng.normal(size=(5, 6)):
        expected = _brute_force(vectors, arm_idx, rewards, query, 7)
        np.testing.assert_allclose(index.features(query), expected, atol=1e-5)
        np.testing.assert_allclose(loaded.features(query), expected, atol=1e-5)
    empty = OutcomeIndex(6, ["a", "b"], k=7)
    assert not empty.features(vectors[0]).any()
    assert neighbour_features(
        np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0), 2, 7
    ).shape == (4,)


async def test_knn_index_grows_with_feedback_and_is_rebuilt_on_restart(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    config = router_config(arms=("cheap", "strong"), embedding_dim=4, knn_k=5)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    rng = np.random.default_rng(2)

    async def select(stub: object, vec: FloatArray) -> pb.SelectResponse:
        request = pb.SelectRequest(
            tenant="acme", router="chat", embedding=pb.Embedding(values=vec.tolist())
        )
        response: pb.SelectResponse = await stub.Select(request)  # type: ignore[attr-defined]
        return response

    vectors, arms, rewards = [], [], []
    for i in range(12):
        vec = rng.normal(size=4).astype(np.float32).astype(np.float64)
        resp = await select(server.router, vec)
        x = await _x(server, resp)
        assert x.shape == (1 + 4 + 4,)
        if i == 0:
            assert not x[5:].any()  # nothing indexed yet
        reward = float(i % 3 == 0)
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=resp.decision_id, reward=reward)
        )
        vectors.append(vec)
        arms.append(["cheap", "strong"].index(resp.arm))
        rewards.append(reward)
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.knn_indexed == 12
    assert stats.context_version.endswith(":k5")
    query = rng.normal(size=4)
    live = await _x(server, await select(server.router, query))
    expected = _brute_force(np.array(vectors), np.array(arms), np.array(rewards), query, 5)
    np.testing.assert_allclose(live[5:], expected, atol=1e-5)
    await server.stop()
    restarted = await start_server(database_url)
    again = await _x(restarted, await select(restarted.router, query))
    np.testing.assert_array_equal(again, live)
    # x built another way (same size): the logged outcomes were found with the earlier x
    moved = router_config(arms=("cheap", "strong"), embedding_dim=4, knn_k=5, text_window_tokens=8)
    await restarted.admin.PutRouter(pb.PutRouterRequest(router=moved))
    stats = await restarted.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.knn_indexed == 0


def test_bench_context_reports_encoders_and_knn(capsys: pytest.CaptureFixture[str]) -> None:
    from banditd.commands.cli import main

    argv = ["bench", "context", "--encoders", "hashing", "--sizes", "300", "--seconds", "0.02"]
    assert main([*argv, "--select-encoder", "hashing", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["select"]["encoder"] == "hashing"
    for kind in ("text", "embedding"):  # end to end over gRPC against a real server process
        assert 0 < report["select"][kind]["p50_ms"] <= report["select"][kind]["p99_ms"]
    assert set(report["encode"]["hashing"]) == {"short", "2k_chars", "batched_32_prompts_per_s"}
    approximate = "ivf" if faiss_device().ivf else "hnsw"  # IVF-Flat on a GPU
    assert {"pca_384_to_32", "flat_300", f"{approximate}_300"} <= set(report["knn"])
    assert report["knn"]["flat_300"]["p50_ms"] > 0
    assert report["knn"]["flat_300"]["add_us"] > 0  # the index is still flat after the adds


def test_replay_knn_policy_follows_what_similar_prompts_taught(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    words = {"a": ["apple", "banana", "cherry", "grape"], "b": ["engine", "wheel", "brake", "gear"]}
    path = tmp_path / "clusters.jsonl"
    with path.open("w") as out:
        for i in range(300):
            good = "ab"[int(rng.integers(2))]
            prompt = " ".join(rng.choice(words[good], size=3))
            models = {m: {"quality": float(m == good), "cost_usd": 0.001} for m in "ab"}
            out.write(json.dumps({"id": i, "prompt": prompt, "models": models}) + "\n")
    report = replay.replay(
        replay.Options(data=path, policy="knn", knn_k=10, exploration=0.1, embedding_dim=32)
    )
    assert report["policy"] == "knn"
    assert report["context"]["knn_k"] == 10
    assert report["mean_quality"] > 0.85
