"""`banditd bench context`: what the context pipeline costs per request.

- encode: each available encoder at batch 1 (p50/p99 per prompt) for a short prompt and a 2,000-
  character one (tail window of 128 tokens), and through the micro-batcher with 32 concurrent
  prompts (prompts/s);
- kNN: features of one query (search k=20 + per-arm aggregation) on a flat index and on the
  approximate one (HNSW on the CPU, IVF-Flat on the GPU: banditd.context.device), at
  each index size (unit random vectors of 32 values, 11 arms), and the PCA projection 384 -> 32;
- select: end to end over gRPC at low load (one call at a time, a `banditd serve` process on
  SQLite): Select with a prompt (router with --select-encoder and a PCA to 32) against Select
  with a supplied embedding of 32 values. Targets: text p50 <= 5 ms, p99 <= 10 ms; embedding
  p99 <= 1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import secrets
import tempfile
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

from banditd.commands import reporting
from banditd.commands.bench import local
from banditd.context.batching import MicroBatcher
from banditd.context.encoders import TextEncoder, get_encoder
from banditd.domain import ENCODER_DIMS, FloatArray
from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as rpc

SHORT = "What is the capital of France?"
LONG = ("Context: the committee met to discuss the quarterly budget and staffing. " * 28)[:2000]
WINDOW = 128


def _latency(call: Callable[[], object], seconds: float, most: int) -> dict[str, float]:
    """p50/p99 in ms of repeated calls, for up to ``seconds`` or ``most`` calls."""
    call()  # warm
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < most and time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    ms = np.array(times) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def _batched(encoder: TextEncoder, n: int, rounds: int) -> float:
    """Prompts/s through the micro-batcher with n concurrent prompts."""

    async def go() -> float:
        batcher = MicroBatcher(encoder)
        try:
            await asyncio.gather(*(batcher.encode(f"{SHORT} {i}", WINDOW) for i in range(n)))
            started = time.perf_counter()
            for r in range(rounds):
                await asyncio.gather(
                    *(batcher.encode(f"{SHORT} {r} {i}", WINDOW) for i in range(n))
                )
            return n * rounds / (time.perf_counter() - started)
        finally:
            batcher.close()

    return asyncio.run(go())


def encode_bench(encoders: list[str], seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in encoders:
        try:
            encoder = get_encoder(name, ENCODER_DIMS.get(name, 32))
        except Exception as exc:  # a missing extra: report it, measure the rest
            out[name] = {"error": str(exc)}
            continue
        out[name] = {
            label: _latency(functools.partial(encoder.encode_batch, [text], WINDOW), seconds, 2000)
            for label, text in (("short", SHORT), ("2k_chars", LONG))
        }
        out[name]["batched_32_prompts_per_s"] = _batched(encoder, 32, 5)
    return out


ADDS = 500  # outcomes added one at a time to each filled index


def knn_bench(sizes: list[int], seconds: float) -> dict[str, Any]:
    from banditd.context.device import faiss_device
    from banditd.context.knn import OutcomeIndex
    from banditd.context.reduction import Reduction

    approximate = "ivf" if faiss_device().ivf else "hnsw"

    rng = np.random.default_rng(0)
    dim, arms = 32, [f"m{i}" for i in range(11)]
    out: dict[str, Any] = {}
    pca = Reduction.fit(rng.normal(size=(512, 384)), dim)
    raw = rng.normal(size=(1, 384))
    out["pca_384_to_32"] = _latency(lambda: pca.apply(raw), seconds, 5000)
    for size in sizes:
        vectors = rng.normal(size=(size, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        arm_idx = rng.integers(len(arms), size=size)
        rewards = rng.random(size)
        for kind, approx_after in (("flat", size + ADDS + 1), (approximate, 1)):
            index = OutcomeIndex(dim, arms, k=20, approx_after=approx_after)
            started = time.perf_counter()
            index.load(vectors, arm_idx, rewards)
            build_s = time.perf_counter() - started
            query: FloatArray = rng.normal(size=dim)
            out[f"{kind}_{size}"] = {
                "build_s": round(build_s, 3),
                **_latency(functools.partial(index.features, query), seconds, 2000),
            }
            # A feedback event adds one outcome (and a restart adds the whole log one at a time):
            # its cost must not grow with the index.
            started = time.perf_counter()
            for vec in rng.normal(size=(ADDS, dim)):
                index.add(vec, arms[0], 1.0)
            out[f"{kind}_{size}"]["add_us"] = round((time.perf_counter() - started) / ADDS * 1e6, 1)
    return out


def select_bench(encoder: str, seconds: float) -> dict[str, Any]:
    """Select p50/p99 over gRPC, one call at a time: with a prompt vs with an embedding."""

    arms = [
        pb.Arm(name=f"model-{i}", input_price_per_mtok=0.5 * (i + 1), output_price_per_mtok=i + 1)
        for i in range(11)
    ]
    dim = ENCODER_DIMS.get(encoder, 32)
    text_router = pb.RouterConfig(
        tenant="bench", name="text", arms=arms, encoder=encoder, embedding_dim=dim, pca_dim=32
    )
    embedding_router = pb.RouterConfig(tenant="bench", name="emb", arms=arms, embedding_dim=32)
    vector = [float(v) for v in np.random.default_rng(0).normal(size=32)]
    with (
        tempfile.TemporaryDirectory(prefix="banditd-bench-") as tmp,
        local.servers(
            f"sqlite+aiosqlite:///{tmp}/bench.db",
            1,
            signing_key=secrets.token_hex(32),
            metrics=False,
            log_level="warning",
        ) as (server,),
        grpc.insecure_channel(server.target) as channel,
    ):
        admin, router = rpc.AdminStub(channel), rpc.RouterStub(channel)
        for config in (text_router, embedding_router):
            admin.PutRouter(pb.PutRouterRequest(router=config), timeout=30)
        prompts = iter(range(10**9))  # distinct prompts: no cache helps

        def with_text() -> object:
            prompt = f"{SHORT} (request {next(prompts)})"
            request = pb.SelectRequest(tenant="bench", router="text", prompt=prompt)
            return router.Select(request, timeout=60)

        def with_embedding() -> object:
            request = pb.SelectRequest(
                tenant="bench", router="emb", embedding=pb.Embedding(values=vector)
            )
            return router.Select(request, timeout=60)

        for _ in range(300):  # past the PCA fit (256 samples) and the first compilations
            with_text()
        return {
            "encoder": encoder,
            "text": _latency(with_text, seconds, 5000),
            "embedding": _latency(with_embedding, seconds, 5000),
        }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    out = {
        "encode": encode_bench(encoders, args.seconds),
        "knn": knn_bench(sizes, args.seconds),
    }
    if args.select_encoder:
        out["select"] = select_bench(args.select_encoder, args.seconds)
    return out


REPORT = reporting.Command(measure)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `bench context`."""
    p.add_argument("--encoders", default="hashing,minilm-static,minilm", help="(%(default)s)")
    p.add_argument("--sizes", default="10000,100000", help="kNN index sizes (%(default)s)")
    p.add_argument("--seconds", type=float, default=2.0, help="time per measurement (2)")
    p.add_argument(
        "--select-encoder",
        default="minilm-static",
        help="encoder of the end-to-end Select measurement; empty: skip it (%(default)s)",
    )
