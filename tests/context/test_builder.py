"""A caller's embedding, checked before x is built: by the context pipeline in process, and over
real gRPC on port 0, in both phases of a router's PCA (pending, fitted)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from banditd.context.encoders import HashingTextEncoder
from banditd.context.metadata import MemoryVocabularyStore
from banditd.context.pipeline import ContextPipeline
from banditd.domain import ArmSpec, RouterSpec
from banditd.errors import InvalidArgument
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import Running, StartServer, router_config

PAST_FLOAT32 = 1e39  # finite in float64, past float32's largest (about 3.4e38)
SAMPLES = 4  # the PCA's pca_fit_samples


@pytest.mark.parametrize("pca_dim", [0, 2], ids=["no-pca", "pca"])
@pytest.mark.parametrize("value", [PAST_FLOAT32, -PAST_FLOAT32, 2.0**128 - 2.0**103])
async def test_an_embedding_past_float32_is_refused_before_and_after_the_pca_is_fitted(
    pca_dim: int, value: float
) -> None:
    """x is kept as float32. A router with PCA took such an embedding while its PCA was pending
    (x's embedding part is zeros then) and refused it once the PCA was fitted; one without PCA
    refused it (with numpy's overflow warning on the way). Now one answer, up front, in every
    phase. (2**128 - 2**103 is the first value float32 rounds to inf.)"""
    spec = RouterSpec(
        tenant="t",
        name="r",
        arms=(ArmSpec("a", 0.0, 0.0), ArmSpec("b", 0.0, 0.0)),
        embedding_dim=4,
        pca_dim=pca_dim,
        pca_fit_samples=SAMPLES,
    )
    pipeline = ContextPipeline(spec, HashingTextEncoder(4), MemoryVocabularyStore())
    huge = [value, 1.0, 0.0, 0.0]
    with pytest.raises(InvalidArgument) as pending:
        await pipeline.build(prompt=None, embedding=huge, metadata={})
    assert str(pending.value) == "embedding.values: values overflow float32"
    rng = np.random.default_rng(3)
    for _ in range(SAMPLES):  # the PCA's samples: fitted at once, offline
        await pipeline.build(prompt=None, embedding=rng.normal(size=4).tolist(), metadata={})
    assert "pending" not in pipeline.version
    with pytest.raises(InvalidArgument) as fitted:
        await pipeline.build(prompt=None, embedding=huge, metadata={})
    assert str(fitted.value) == str(pending.value)
    largest = [float(np.finfo(np.float32).max), 1.0, 0.0, 0.0]  # in range: not refused here
    assert (await pipeline.build(prompt=None, embedding=largest, metadata={})).shape == (spec.dim,)


async def _select(server: Running, values: list[float]) -> pb.SelectResponse:
    request = pb.SelectRequest(tenant="acme", router="chat", embedding=pb.Embedding(values=values))
    response: pb.SelectResponse = await server.router.Select(request)
    return response


async def _refused(server: Running, values: list[float]) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _select(server, values)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return info.value.details() or ""


@pytest.mark.parametrize("pca_dim", [0, 2], ids=["no-pca", "pca"])
async def test_over_grpc_an_embedding_past_float32_is_refused_in_both_phases(
    sqlite_url: str, start_server: StartServer, pca_dim: int
) -> None:
    """Embedding.values are floats (float32) on the wire, so such a value arrives as inf and the
    edge's bounds refuse it, as any value past them, whatever the PCA's phase."""
    server = await start_server(sqlite_url)
    config = router_config(embedding_dim=4, pca_dim=pca_dim, pca_fit_samples=SAMPLES)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    huge = [PAST_FLOAT32, 0.0, 0.0, 0.0]
    pending = await _refused(server, huge)
    assert pending.startswith("embedding.values: must be a finite number in [-10000, 10000]")
    rng = np.random.default_rng(3)
    for _ in range(SAMPLES):  # the PCA's samples (a refused embedding is not one)
        await _select(server, rng.normal(size=4).tolist())
    await server.app.catalog.reductions.settle()
    assert "pending" not in (await _select(server, rng.normal(size=4).tolist())).context_version
    assert await _refused(server, huge) == pending
