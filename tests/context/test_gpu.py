"""The GPU path on a GPU (issue 23): runs only where faiss sees one (``faiss.get_num_gpus() > 0``,
the ``gpu`` extra); elsewhere the whole module is one skip, printed by ``pytest -rs``.
bench/gpu_check.sh installs the extra in a fresh venv and runs it (docs/gpu.md).

- GPU and CPU kNN give the same neighbours (and features) on a fixed set; the GPU's approximate
  index (IVF-Flat) finds the exact neighbours;
- the MiniLM encoder gives the same vectors on CUDA as on the CPU, through the micro-batcher too;
- many routers share the process's one GPU resource (and fit in its memory), and a server on
  BANDITD_DEVICE=gpu serves a kNN router and exports its device.
"""

from __future__ import annotations

import asyncio
import copy

import numpy as np
import pytest
from prometheus_client import REGISTRY

from banditd.context import device
from banditd.context.knn import OutcomeIndex
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import StartServer, router_config

faiss = pytest.importorskip("faiss", reason="the context or gpu extra")
if faiss.get_num_gpus() == 0:
    pytest.skip(
        "no GPU (faiss.get_num_gpus() == 0): bench/gpu_check.sh runs these on a GPU machine",
        allow_module_level=True,
    )

ARMS = [f"m{i}" for i in range(11)]


@pytest.fixture(scope="module")
def gpu() -> device.FaissDevice:
    return device.configure("gpu", 256)


def _fixed_set(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(50, 32))
    rows = centres[rng.integers(50, size=n)] + 0.4 * rng.normal(size=(n, 32))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _filled(chosen: device.FaissDevice, vectors: np.ndarray, approx_after: int) -> OutcomeIndex:
    rng = np.random.default_rng(9)
    index = OutcomeIndex(32, ARMS, k=20, approx_after=approx_after, device=chosen)
    for vec in vectors:
        index.add(vec.astype(np.float64), ARMS[int(rng.integers(11))], float(rng.random()))
    return index


def test_gpu_and_cpu_knn_give_the_same_neighbours(gpu: device.FaissDevice) -> None:
    assert gpu.kind == "gpu" and gpu.ivf
    vectors, queries = _fixed_set(5000, 1), _fixed_set(200, 2)
    on_gpu = _filled(gpu, vectors, 10**6)
    on_cpu = _filled(device.choose("cpu", 0), vectors, 10**6)
    assert "Gpu" in type(on_gpu.index).__name__ and "Gpu" not in type(on_cpu.index).__name__
    sims_gpu, ids_gpu = on_gpu.index.search(queries, 20)
    sims_cpu, ids_cpu = on_cpu.index.search(queries, 20)
    np.testing.assert_allclose(sims_gpu, sims_cpu, atol=1e-3)
    # The same neighbours, but for ties at the k-th similarity (within float error).
    same = 0
    for gpu_ids, cpu_ids, cpu_sims in zip(ids_gpu, ids_cpu, sims_cpu, strict=True):
        assert set(cpu_ids[cpu_sims > cpu_sims[-1] + 1e-3]) <= set(gpu_ids)
        same += set(gpu_ids) == set(cpu_ids)
    assert same >= 0.95 * len(queries)
    for query, gpu_ids, cpu_ids in zip(queries[:50], ids_gpu, ids_cpu, strict=False):
        if set(gpu_ids) == set(cpu_ids):
            x = query.astype(np.float64)
            np.testing.assert_allclose(on_gpu.features(x), on_cpu.features(x), atol=1e-4)
    # A copy (replay's fork) stays on the GPU and answers the same.
    twin = copy.deepcopy(on_gpu)
    assert "Gpu" in type(twin.index).__name__
    np.testing.assert_array_equal(twin.index.search(queries, 20)[1], ids_gpu)


def test_gpu_approximate_index_finds_the_exact_neighbours(gpu: device.FaissDevice) -> None:
    vectors, queries = _fixed_set(50_000, 3), _fixed_set(200, 4)
    rng = np.random.default_rng(6)
    approximate = OutcomeIndex(32, ARMS, k=20, approx_after=50_000, device=gpu)
    approximate.load(vectors, rng.integers(11, size=50_000), rng.random(50_000))
    assert approximate.approximate and type(approximate.index).__name__ == "GpuIndexIVFFlat"
    assert approximate.add(queries[0].astype(np.float64), "m1", 1.0)  # adds go on after training
    assert approximate.size == 50_001
    exact = faiss.IndexFlatIP(32)
    exact.add(np.concatenate([vectors, queries[:1]]))
    _, want = exact.search(queries, 20)
    _, got = approximate.index.search(queries, 20)
    recall = np.mean([len(set(w) & set(g)) / 20 for w, g in zip(want, got, strict=True)])
    assert recall >= 0.95, recall


def test_many_routers_share_one_resource(gpu: device.FaissDevice) -> None:
    torch = pytest.importorskip("torch")
    torch.cuda.init()
    free_before, _ = torch.cuda.mem_get_info()
    placed = gpu.placed
    routers = [OutcomeIndex(32, ARMS, k=20) for _ in range(64)]  # the process's device
    vectors = _fixed_set(100, 5)
    for index in routers:
        for vec in vectors:
            index.add(vec.astype(np.float64), "m0", 1.0)
        index.features(vectors[0].astype(np.float64))  # scratch memory in use
    assert all(index.device is gpu for index in routers) and gpu.placed == placed + 64
    # One resource with a 256 MiB cap: 64 resources of their own would reserve up to 1.5 GiB
    # each (96 GiB), more than the card.
    used = free_before - torch.cuda.mem_get_info()[0]
    assert used < 2 * 1024**3, f"{used / 1024**3:.1f} GiB for 64 routers"


def test_encoding_on_cuda_matches_the_cpu() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.fail(f"faiss sees a GPU but torch {torch.__version__} does not (a CPU build?)")
    from banditd.context.batching import MicroBatcher
    from banditd.context.encoders import MiniLMEncoder, get_encoder

    assert get_encoder("minilm", 384).device == "cuda"  # type: ignore[attr-defined]
    texts = [
        f"Question {i}: how do I route prompt number {i} to a cheaper model?" for i in range(64)
    ]
    texts += ["short", "A much longer prompt " * 60]
    cuda, cpu = MiniLMEncoder("cuda"), MiniLMEncoder("cpu")
    want = cpu.encode_batch(texts)
    np.testing.assert_allclose(cuda.encode_batch(texts), want, atol=2e-4)
    np.testing.assert_allclose(cuda.encode_batch(texts, 16), cpu.encode_batch(texts, 16), atol=2e-4)

    async def batched() -> tuple[np.ndarray, int]:
        batcher = MicroBatcher(cuda, max_wait_s=0.5, max_batch=256)
        try:
            vecs = await asyncio.gather(*(batcher.encode(t) for t in texts))
            return np.stack(vecs), batcher.calls
        finally:
            batcher.close()

    vecs, calls = asyncio.run(batched())
    np.testing.assert_allclose(vecs, want, atol=2e-4)
    assert calls == 1  # the whole micro-batch went to the GPU in one call (one forward pass)


async def test_server_on_the_gpu_serves_a_knn_router(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await start_server(sqlite_url, device="gpu")
    assert REGISTRY.get_sample_value("banditd_faiss_device", {"device": "gpu"}) == 1.0
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(knn_k=5)))
    reply = await server.router.Select(
        pb.SelectRequest(
            tenant="acme", router="chat", embedding=pb.Embedding(values=[0.1, 0.2, 0.3, 0.4])
        )
    )
    assert reply.arm in {"cheap", "mid", "strong"}
    await server.stop()
