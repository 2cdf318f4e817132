"""`banditd bench gpu`: kNN and encoding throughput on the GPU against the CPU, in one process.

- kNN: on a fixed set of unit vectors (32 values, clustered like embeddings, 11 arms), at each
  size, the exact (flat) and approximate index of each device (CPU: HNSW, GPU: IVF-Flat; see
  banditd.context.device): queries/s one at a time through OutcomeIndex.features (what a Select
  does) and in batches of 1024 (index.search); build seconds; and the share of the exact 20
  neighbours the approximate index finds (recall@20);
- encoding: MiniLM prompts/s through the micro-batcher with N concurrent prompts (--prompts),
  on the CPU and on CUDA.

Each GPU entry is followed by its ratio to the CPU's (``gpu_over_cpu``). Without a GPU (or
without torch's CUDA build) the GPU entries say why instead. bench/gpu_check.sh runs this after
the GPU tests, on a machine with an NVIDIA GPU (docs/gpu.md).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from banditd.commands import reporting
from banditd.commands.argtypes import ints_at_least, positive_float

DIM, K, ARMS, QUERY_BATCH = 32, 20, [f"m{i}" for i in range(11)], 1024
PROMPT = "Summarise the quarterly budget discussion and list the staffing decisions"


def _rate(call: Callable[[], int], seconds: float) -> float:
    """Items/s of repeated calls (each returns how many items it did), for about ``seconds``."""
    call()  # warm
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        done += call()
    return round(done / elapsed, 1)


def _vectors(n: int, seed: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(64, DIM))
    rows = centres[rng.integers(64, size=n)] + 0.5 * rng.normal(size=(n, DIM))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows.astype(np.float32)


def _one_query(index: Any, queries: np.ndarray[Any, Any], counter: Iterator[int]) -> int:
    index.features(queries[next(counter) % QUERY_BATCH].astype(np.float64))
    return 1


def _batch_query(index: Any, queries: np.ndarray[Any, Any]) -> int:
    return len(index.search(queries, K)[1])


def knn(size: int, device: Any, seconds: float) -> dict[str, Any]:
    from banditd.context.knn import OutcomeIndex

    vectors, queries = _vectors(size, 1), _vectors(QUERY_BATCH, 2)
    rng = np.random.default_rng(3)
    out: dict[str, Any] = {}
    exact_ids = None
    for kind, approx_after in (("flat", size + 1), ("approximate", 1)):
        index = OutcomeIndex(DIM, ARMS, K, approx_after=approx_after, device=device)
        started = time.perf_counter()
        index.load(vectors, rng.integers(len(ARMS), size=size), rng.random(size))
        entry: dict[str, Any] = {"build_s": round(time.perf_counter() - started, 3)}
        entry["one_query_per_s"] = _rate(
            functools.partial(_one_query, index, queries, itertools.count()), seconds
        )
        entry["batch_queries_per_s"] = _rate(
            functools.partial(_batch_query, index.index, queries), seconds
        )
        ids = index.index.search(queries, K)[1]
        if exact_ids is None:
            exact_ids = ids
        else:
            hits = [len(set(a) & set(b)) for a, b in zip(exact_ids, ids, strict=True)]
            entry["recall_at_20"] = round(float(np.mean(hits)) / K, 4)
        out[kind] = entry
    return out


def encoding(prompts: int, device: str, seconds: float) -> float:
    from banditd.context.batching import MicroBatcher
    from banditd.context.encoders import MiniLMEncoder

    encoder = MiniLMEncoder(device)

    async def go() -> float:
        batcher = MicroBatcher(encoder, max_batch=prompts)
        try:
            rounds = iter(range(10**12))

            async def one_round() -> int:
                r = next(rounds)
                await asyncio.gather(*(batcher.encode(f"{PROMPT} {r}.{i}") for i in range(prompts)))
                return prompts

            await one_round()
            done, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < seconds:
                done += await one_round()
            return round(done / elapsed, 1)
        finally:
            batcher.close()

    return asyncio.run(go())


def _ratios(gpu: dict[str, Any], cpu: dict[str, Any]) -> dict[str, Any]:
    return {
        key: round(value / cpu[key], 2) if isinstance(value, float) and cpu.get(key) else None
        for key, value in gpu.items()
        if key.endswith("_per_s")
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from banditd.context.device import choose

    report: dict[str, Any] = {"gpu": "", "knn": {}, "encoding": {}}
    cpu = choose("cpu", args.temp_memory_mb)
    try:
        gpu: Any = choose("gpu", args.temp_memory_mb)
        report["gpu"] = gpu.why
    except Exception as exc:  # no GPU here: say so, measure the CPU
        gpu, report["gpu"] = None, str(exc)
    for size in args.sizes:
        row: dict[str, Any] = {"cpu": knn(size, cpu, args.seconds)}
        report["knn"][str(size)] = row
        if gpu is not None:
            row["gpu"] = knn(size, gpu, args.seconds)
            row["gpu_over_cpu"] = {
                kind: _ratios(row["gpu"][kind], row["cpu"][kind]) for kind in row["cpu"]
            }
    for n in (n for n in args.prompts if n > 0):
        import torch

        row = {"cpu_prompts_per_s": encoding(n, "cpu", args.seconds)}
        report["encoding"][str(n)] = row
        if torch.cuda.is_available():
            row["cuda_prompts_per_s"] = encoding(n, "cuda", args.seconds)
            row["gpu_over_cpu"] = round(row["cuda_prompts_per_s"] / row["cpu_prompts_per_s"], 2)
        else:
            row["cuda"] = f"torch {torch.__version__} sees no CUDA device"
    return report


REPORT = reporting.Command(measure, json_help="print one JSON object on one line")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `bench gpu`."""
    p.add_argument(
        "--sizes", type=ints_at_least(1), default=(100_000,), help="index sizes (100000)"
    )
    p.add_argument(
        "--prompts",
        type=ints_at_least(0),
        default=(64, 256),
        help="concurrent prompts per micro-batch (64,256; 0: skip encoding)",
    )
    p.add_argument("--seconds", type=positive_float, default=3.0, help="per measurement (3)")
    p.add_argument("--temp-memory-mb", type=int, default=256, help="GPU scratch (256)")
