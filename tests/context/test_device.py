"""The GPU path without a GPU (issue 23): the choice of device, the one shared GPU resource, and
the GPU's approximate index (IVF-Flat) built with the real CPU faiss.

Where no GPU is, a GPU build of faiss is stood in for by ``GpuFaiss``: the real CPU faiss whose
get_num_gpus() says 1 and whose StandardGpuResources and device moves are recorded (the indexes
stay real CPU indexes, so everything they compute is real). That stand-in is used only for the
choice logic and the sharing; the GPU itself is tested in tests/context/test_gpu.py, on a GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections import Counter
from typing import Any

import numpy as np
import pytest
import structlog
from prometheus_client import REGISTRY

from banditd.commands import bench
from banditd.context import device
from banditd.context.device import FaissDevice, choose, ivf_flat, torch_device
from banditd.context.knn import OutcomeIndex
from banditd.errors import FailedPrecondition
from tests.helpers import StartServer

faiss = pytest.importorskip("faiss", reason="the context extra")  # in the lock: never skipped
# A few tests check what this machine does without a GPU (bench/gpu_check.sh also runs this
# module on a GPU machine, where tests/context/test_gpu.py checks the real thing instead).
without_gpu = pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="checks a machine with no GPU")


class Resources:
    def __init__(self) -> None:
        self.temp_memory: list[int] = []

    def setTempMemory(self, size: int) -> None:  # noqa: N802 - faiss's name
        self.temp_memory.append(size)


class GpuFaiss:
    """The real CPU faiss under a GPU build's names (see the module docstring)."""

    def __init__(self, *, ivf: bool = True) -> None:
        self.resources: list[Resources] = []
        self.moves: list[tuple[Resources, int, str]] = []
        if ivf:
            self.GpuIndexIVFFlat = object

    def __getattr__(self, name: str) -> Any:
        if name.startswith("Gpu"):  # only the GPU classes declared above (a GPU build has all)
            raise AttributeError(name)
        return getattr(faiss, name)

    def get_num_gpus(self) -> int:
        return 1

    def StandardGpuResources(self) -> Resources:  # noqa: N802 - faiss's name
        self.resources.append(Resources())
        return self.resources[-1]

    def index_cpu_to_gpu(self, resources: Resources, gpu: int, index: Any) -> Any:
        self.moves.append((resources, gpu, type(index).__name__))
        return index

    def index_gpu_to_cpu(self, index: Any) -> Any:
        return faiss.clone_index(index)


def _unit_rows(rng: np.random.Generator, n: int, dim: int, clusters: int = 0) -> np.ndarray:
    if clusters:
        centres = rng.normal(size=(clusters, dim))
        rows = centres[rng.integers(clusters, size=n)] + 0.3 * rng.normal(size=(n, dim))
    else:
        rows = rng.normal(size=(n, dim))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows.astype(np.float32)


# ---- the choice


def test_auto_takes_the_gpu_with_one_capped_resource() -> None:
    gpu = GpuFaiss()
    chosen = choose("auto", 64, gpu)
    assert chosen.kind == "gpu" and chosen.ivf
    (resources,) = gpu.resources
    assert chosen.resources is resources and resources.temp_memory == [64 * 1024 * 1024]


def test_cpu_setting_keeps_the_cpu() -> None:
    gpu = GpuFaiss()
    assert choose("cpu", 64, gpu).kind == "cpu"
    assert gpu.resources == []  # nothing reserved on a GPU it will not use


@without_gpu
def test_no_gpu_keeps_the_cpu() -> None:
    real = choose("auto", 64)  # the real faiss here: a CPU build, no GPU
    assert real.kind == "cpu" and real.resources is None and faiss.get_num_gpus() == 0
    index = real.flat(3)
    assert isinstance(index, faiss.IndexFlatIP)


@without_gpu
def test_gpu_setting_without_a_gpu_refuses() -> None:
    with pytest.raises(FailedPrecondition, match="BANDITD_DEVICE=gpu but faiss sees no GPU"):
        choose("gpu", 64)


def test_encoder_device_follows_the_setting() -> None:
    assert torch_device(True, "auto") == "cuda"
    assert torch_device(True, "gpu") == "cuda"
    assert torch_device(True, "cpu") == "cpu"
    assert torch_device(False, "auto") == "cpu"
    with structlog.testing.capture_logs() as logs:
        assert torch_device(False, "gpu") == "cpu"
    assert logs[0]["event"] == "encoder_device" and logs[0]["device"] == "cpu"


# ---- one resource for every router


def test_many_routers_share_one_resource() -> None:
    gpu = GpuFaiss()
    chosen = choose("auto", 256, gpu)
    rng = np.random.default_rng(1)
    indexes = [OutcomeIndex(8, ["a", "b"], k=5, approx_after=30, device=chosen) for _ in range(20)]
    for index in indexes:
        for vec in rng.normal(size=(40, 8)):  # past approx_after: the IVF index, placed too
            assert index.add(vec, "a", 1.0)
        assert index.approximate and index.features(rng.normal(size=8)).shape == (4,)
    assert len(gpu.resources) == 1
    assert Counter(kind for _, _, kind in gpu.moves) == {"IndexFlatIP": 20, "IndexIVFFlat": 20}
    assert {id(res) for res, _, _ in gpu.moves} == {id(gpu.resources[0])}
    assert {dev for _, dev, _ in gpu.moves} == {device.GPU_ID} and chosen.placed == 40


def test_the_process_chooses_once() -> None:
    first = device.faiss_device()
    assert device.configure(device._PROCESS.mode, device._PROCESS.temp_memory_mb) is first
    routers = [OutcomeIndex(4, ["a"], k=3) for _ in range(3)]
    assert all(index.device is first for index in routers)


def test_commands_without_a_server_choose_silently() -> None:
    """replay, warm-start and bench print JSON on stdout: no log line may go there."""
    saved = device._PROCESS.faiss
    device._PROCESS.faiss = None
    try:
        with structlog.testing.capture_logs() as logs:
            chosen = device.faiss_device()
        assert logs == [] and device.faiss_device() is chosen
    finally:
        device._PROCESS.faiss = saved


@without_gpu
async def test_server_logs_and_exports_its_device(
    sqlite_url: str, start_server: StartServer
) -> None:
    with structlog.testing.capture_logs() as logs:
        server = await start_server(sqlite_url, device="cpu")
    choice = [e for e in logs if e["event"] == "faiss_device"]
    assert choice and choice[-1]["device"] == "cpu" and choice[-1]["why"] == "BANDITD_DEVICE=cpu"
    value = REGISTRY.get_sample_value
    assert value("banditd_faiss_device", {"device": "cpu"}) == 1.0
    assert value("banditd_faiss_device", {"device": "gpu"}) == 0.0
    await server.stop()
    with pytest.raises(FailedPrecondition, match="faiss sees no GPU"):
        await start_server(sqlite_url, device="gpu")
    device.configure("auto")  # later tests: the default choice


# ---- the GPU's approximate index, on the CPU


def test_ivf_flat_finds_the_exact_neighbours_of_clustered_data() -> None:
    rng = np.random.default_rng(7)
    vectors = _unit_rows(rng, 4000, 32, clusters=40)
    queries = _unit_rows(rng, 50, 32, clusters=40)
    exact = faiss.IndexFlatIP(32)
    exact.add(vectors)
    ivf = ivf_flat(faiss, vectors)
    assert ivf.nlist == 63 and ivf.nprobe == device.IVF_NPROBE and ivf.ntotal == 4000
    _, want = exact.search(queries, 20)
    _, got = ivf.search(queries, 20)
    recall = np.mean([len(set(w) & set(g)) / 20 for w, g in zip(want, got, strict=True)])
    assert recall >= 0.95, recall


def test_gpu_build_without_ivf_keeps_hnsw_on_the_cpu_and_says_so() -> None:
    gpu = GpuFaiss(ivf=False)
    chosen = choose("auto", 64, gpu)
    with structlog.testing.capture_logs() as logs:
        index = chosen.approximate(_unit_rows(np.random.default_rng(2), 50, 8))
    assert isinstance(index, faiss.IndexHNSWFlat) and index.ntotal == 50
    assert [e["event"] for e in logs] == ["faiss_gpu_no_ivf"]
    twin = chosen.copy(index)  # a CPU index of a GPU device: copied on the CPU
    assert isinstance(twin, faiss.IndexHNSWFlat) and twin is not index and twin.ntotal == 50
    assert gpu.moves == []


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_a_copied_index_is_independent(kind: str) -> None:
    gpu = GpuFaiss()
    chosen: FaissDevice = choose("auto" if kind == "gpu" else "cpu", 64, gpu)
    rng = np.random.default_rng(3)
    index = OutcomeIndex(6, ["a", "b"], k=4, approx_after=25, device=chosen)
    for i, vec in enumerate(rng.normal(size=(30, 6))):
        index.add(vec, "ab"[i % 2], float(i % 3))
    twin = copy.deepcopy(index)
    query = rng.normal(size=6)
    np.testing.assert_array_equal(twin.features(query), index.features(query))
    twin.add(query, "b", 5.0)
    assert (twin.size, index.size) == (31, 30)
    assert twin.index is not index.index and twin.device is chosen
    assert len(gpu.resources) == (1 if kind == "gpu" else 0)


@without_gpu
def test_bench_gpu_measures_the_cpu_and_says_why_not_the_gpu(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser(prog="banditd")
    bench.add_parser(parser.add_subparsers(dest="command", required=True))
    argv = ["bench", "gpu", "--sizes", "2000", "--prompts", "0", "--seconds", "0.05", "--json"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert "faiss sees no GPU" in report["gpu"] and report["encoding"] == {}
    (row,) = report["knn"].values()
    assert set(row) == {"cpu"} and set(row["cpu"]) == {"flat", "approximate"}
    for entry in row["cpu"].values():
        assert entry["one_query_per_s"] > 0 and entry["batch_queries_per_s"] > 0
    assert 0.5 < row["cpu"]["approximate"]["recall_at_20"] <= 1.0
