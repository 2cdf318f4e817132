"""Where the context pipeline computes: the process's one choice of GPU or CPU.

Chosen once per process, at start (``banditd serve`` calls :func:`configure` with
``Settings.device`` and ``Settings.gpu_temp_memory_mb``, logs the choice and exports it as the
``banditd_faiss_device`` metric; other commands choose with the defaults on first use):

- ``auto`` (default): the GPU when the installed faiss is a GPU build that sees one
  (``faiss.get_num_gpus() > 0``, the ``gpu`` extra), else the CPU;
- ``cpu``: never the GPU;
- ``gpu``: the GPU, or refuse to start (a node meant for GPU work that has none).

FAISS on the GPU: every router's kNN index lives on GPU 0 and all of them share ONE
``StandardGpuResources`` (scratch memory, streams, cuBLAS handle), its scratch memory capped at
``gpu_temp_memory_mb``; left alone, each resource object reserves about 18% of the card, up to
1.5 GiB, so one per router ran many kNN routers out of memory. A kNN index starts exact (flat
inner product) on either device; past ``approx_after`` vectors it becomes approximate: HNSW on
the CPU, IVF-Flat (``GpuIndexIVFFlat``) on the GPU. HNSW has no GPU version, and CAGRA (where
faiss has it) builds its graph once and cannot take the one-at-a-time adds the index makes.
A GPU build without ``GpuIndexIVFFlat`` keeps HNSW on the CPU and says so in the log.

The MiniLM encoder runs on CUDA when torch sees a GPU (``torch.cuda.is_available()``) unless the
setting is ``cpu`` (:func:`torch_device`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import structlog

from banditd.errors import FailedPrecondition

log = structlog.get_logger(__name__)

Mode = Literal["auto", "cpu", "gpu"]
Kind = Literal["gpu", "cpu"]
GPU_ID = 0
DEFAULT_TEMP_MEMORY_MB = 256
# Approximate indexes: HNSW on the CPU, IVF-Flat on the GPU.
HNSW_M = 32
HNSW_EF_SEARCH = 64
IVF_NPROBE = 16  # of about sqrt(n) lists (n = vectors at the switch)
IVF_MIN_PER_LIST = 39  # fewer training points a list: faiss warns, k-means is poor


@dataclass
class FaissDevice:
    """Where a process's FAISS indexes live; ``faiss`` is the module (tests pass a stand-in)."""

    kind: Kind
    faiss: Any = field(repr=False)
    resources: Any = field(default=None, repr=False)  # the one StandardGpuResources (GPU only)
    why: str = ""
    placed: int = 0  # indexes moved to the GPU (all through ``resources``)

    @property
    def ivf(self) -> bool:
        """Whether approximate indexes are IVF-Flat on the GPU (else HNSW on the CPU)."""
        return self.kind == "gpu" and hasattr(self.faiss, "GpuIndexIVFFlat")

    def place(self, index: Any) -> Any:
        """The index on this device (moved to GPU 0, sharing the one resource object)."""
        if self.kind == "cpu":
            return index
        self.placed += 1
        return self.faiss.index_cpu_to_gpu(self.resources, GPU_ID, index)

    def flat(self, dim: int) -> Any:
        """An empty exact inner-product index."""
        return self.place(self.faiss.IndexFlatIP(dim))

    def approximate(self, vectors: np.ndarray[Any, np.dtype[np.float32]]) -> Any:
        """An approximate inner-product index holding ``vectors`` (shape (n, dim), float32)."""
        faiss = self.faiss
        if not self.ivf:
            if self.kind == "gpu":
                log.warning("faiss_gpu_no_ivf", detail="HNSW stays on the CPU")
            index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = HNSW_EF_SEARCH
            index.add(vectors)
            return index
        return ivf_flat(faiss, vectors, self.place)

    def copy(self, index: Any) -> Any:
        """An independent copy of an index on this device (a GPU index cannot be deep-copied)."""
        faiss = self.faiss
        # GPU classes (GpuIndexFlatIP, GpuIndexIVFFlat) come back down to the CPU and up again;
        # a CPU index (HNSW where a GPU build lacks IVF) is cloned where it is.
        if self.kind == "gpu" and type(index).__name__.startswith("Gpu"):
            return self.place(faiss.index_gpu_to_cpu(index))
        return faiss.clone_index(index)


def ivf_flat(
    faiss: Any,
    vectors: np.ndarray[Any, np.dtype[np.float32]],
    place: Callable[[Any], Any] = lambda index: index,
) -> Any:
    """An IVF-Flat inner-product index of ``vectors`` (sqrt(n) lists, IVF_NPROBE probed),
    trained and filled where ``place`` puts it (the GPU's approximate index; tests build the
    same on the CPU, where no GPU is, and check its neighbours)."""
    n, dim = vectors.shape
    nlist = max(1, min(round(math.sqrt(n)), n // IVF_MIN_PER_LIST))
    quantizer = faiss.IndexFlatIP(dim)
    index = place(faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT))
    index.train(vectors)
    index.add(vectors)
    index.nprobe = min(IVF_NPROBE, nlist)
    return index


def choose(mode: Mode, temp_memory_mb: int, faiss: Any | None = None) -> FaissDevice:
    """Choose the device for FAISS. ``faiss``: the module (None: import it; not installed:
    the CPU, where routers with PCA or kNN are refused anyway)."""
    if faiss is None:
        try:
            import faiss
        except ImportError:
            faiss = None
    gpus = int(faiss.get_num_gpus()) if faiss is not None else 0
    has_gpu = gpus > 0 and hasattr(faiss, "StandardGpuResources")
    if mode == "cpu" or not has_gpu:
        if mode == "gpu":
            raise FailedPrecondition(
                "BANDITD_DEVICE=gpu but faiss sees no GPU "
                f"({'not installed' if faiss is None else f'faiss.get_num_gpus() = {gpus}'}): "
                "install the gpu extra (pip install 'banditd[gpu]') on a machine with an "
                "NVIDIA GPU, or set BANDITD_DEVICE=auto"
            )
        why = "BANDITD_DEVICE=cpu" if mode == "cpu" else "faiss sees no GPU"
        return FaissDevice("cpu", faiss, why=why if faiss is not None else "faiss not installed")
    assert faiss is not None  # has_gpu
    resources = faiss.StandardGpuResources()
    resources.setTempMemory(temp_memory_mb * 1024 * 1024)
    return FaissDevice("gpu", faiss, resources, why=f"{gpus} GPU(s); BANDITD_DEVICE={mode}")


class _Process:
    """The process's choice (one per process: every router shares it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mode: Mode = "auto"
        self.temp_memory_mb = DEFAULT_TEMP_MEMORY_MB
        self.faiss: FaissDevice | None = None


_PROCESS = _Process()


def _chosen(mode: Mode, temp_memory_mb: int) -> FaissDevice:
    """The process's choice, made now if there is none or the settings differ."""
    with _PROCESS.lock:
        chosen = _PROCESS.faiss
        if chosen is None or (mode, temp_memory_mb) != (_PROCESS.mode, _PROCESS.temp_memory_mb):
            chosen = choose(mode, temp_memory_mb)
            _PROCESS.mode, _PROCESS.temp_memory_mb, _PROCESS.faiss = mode, temp_memory_mb, chosen
        return chosen


def configure(mode: Mode, temp_memory_mb: int = DEFAULT_TEMP_MEMORY_MB) -> FaissDevice:
    """At a server's start: choose (again only if the settings differ), log the choice and
    return it. Raises FailedPrecondition for ``gpu`` without one."""
    chosen = _chosen(mode, temp_memory_mb)
    log.info(
        "faiss_device",
        device=chosen.kind,
        why=chosen.why,
        temp_memory_mb=temp_memory_mb if chosen.kind == "gpu" else None,
        approximate="ivf-flat" if chosen.ivf else "hnsw",
    )
    return chosen


def faiss_device() -> FaissDevice:
    """The process's FAISS device; where no server configured it (replay, warm-start, bench),
    chosen with the defaults, silently (those commands print JSON on stdout)."""
    chosen = _PROCESS.faiss
    return chosen if chosen is not None else _chosen(_PROCESS.mode, _PROCESS.temp_memory_mb)


def torch_device(cuda_available: bool, mode: Mode | None = None) -> Literal["cuda", "cpu"]:
    """Where the MiniLM encoder runs: CUDA when torch sees a GPU and ``mode`` (default: the
    process's setting) is not ``cpu``."""
    mode = _PROCESS.mode if mode is None else mode
    if mode == "cpu" or not cuda_available:
        if mode == "gpu":
            log.warning("encoder_device", device="cpu", why="torch sees no CUDA device")
        return "cpu"
    return "cuda"
