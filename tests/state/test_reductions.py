"""Live routers' PCA (banditd.state.reductions): fitted off the request path and used only once
stored, so x is built with the PCA every replica shares; a store that fails is retried at a later
tail round, while Select keeps answering with x pending."""

from __future__ import annotations

import sqlite3

import numpy as np
from structlog.testing import capture_logs

from banditd.context.pipeline import ContextPipeline, pca_fingerprint
from banditd.context.reduction import Reduction
from banditd.store import sqlite_file
from banditd.store.learnt_state import LearntState
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import Running, StartServer, router_config, wait_until


async def _stored(server: Running, pipeline: ContextPipeline) -> bytes | None:
    fingerprint = pca_fingerprint(pipeline.spec, pipeline.encoder)
    return await LearntState(server.app.db).context_model(1, fingerprint)


async def _pca_router(
    sqlite_url: str, start_server: StartServer
) -> tuple[Running, ContextPipeline]:
    """A server whose router fits a PCA of 3 on its first 12 embeddings of 8 values. No
    background tail and no decision flush: only the rounds a test runs touch the database."""
    server = await start_server(sqlite_url, tail_interval_s=3600.0, decision_flush_ms=60_000.0)
    config = router_config(embedding_dim=8, pca_dim=3, pca_fit_samples=12)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    pipeline = server.app.catalog._by_id[1].context
    assert pipeline is not None
    return server, pipeline


async def test_x_is_built_only_with_the_stored_pca_even_when_its_store_fails_or_loses(
    sqlite_url: str, start_server: StartServer
) -> None:
    server, pipeline = await _pca_router(sqlite_url, start_server)
    rng = np.random.default_rng(2)

    async def select() -> pb.SelectResponse:
        values = rng.normal(size=8).tolist()
        request = pb.SelectRequest(
            tenant="acme", router="chat", embedding=pb.Embedding(values=values)
        )
        response: pb.SelectResponse = await server.router.Select(request)
        return response

    for _ in range(11):
        assert "pending" in (await select()).context_version
    # Another process holds the database's write lock: the store of the PCA fails with
    # "database is locked" (Unavailable) once SQLite's busy timeout runs out.
    path = sqlite_file(sqlite_url)
    assert path is not None
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with capture_logs() as logs:
            await select()  # the 12th sample: the fit starts off the request path
            await server.app.catalog.reductions.settle()  # fitted; the store attempt failed
        [failed] = [entry for entry in logs if entry["event"] == "pca_not_stored"]
        assert "database is locked" in failed["error"]
        # The fit is not used before it is stored: x stays pending, and no second fit starts.
        assert pipeline.reduction is None
        assert "pending" in (await select()).context_version
        assert not server.app.catalog.reductions._fits
    finally:
        holder.close()  # rolls back: the lock is released
    assert await _stored(server, pipeline) is None
    # Meanwhile another replica stores a PCA of its own (fitted on other prompts) first.
    theirs = Reduction.fit(rng.normal(size=(12, 8)), 3).to_bytes()
    fingerprint = pca_fingerprint(pipeline.spec, pipeline.encoder)
    assert await LearntState(server.app.db).save_context_model(1, fingerprint, theirs) == theirs
    assert "pending" in (await select()).context_version
    with capture_logs() as logs:
        await server.tail_rounds(1)  # ours is offered to the store, which answers with theirs
    [fitted] = [entry for entry in logs if entry["event"] == "pca_fitted"]
    assert fitted["ours"] is False
    assert pipeline.reduction is not None and pipeline.reduction.to_bytes() == theirs
    assert await _stored(server, pipeline) == theirs
    after = await select()
    assert "pending" not in after.context_version
    assert after.context_version == pipeline.version


async def test_a_fitted_pca_is_stored_and_then_used(
    sqlite_url: str, start_server: StartServer
) -> None:
    server, pipeline = await _pca_router(sqlite_url, start_server)
    rng = np.random.default_rng(3)
    request = pb.SelectRequest(tenant="acme", router="chat")
    for _ in range(12):
        request.embedding.CopyFrom(pb.Embedding(values=rng.normal(size=8).tolist()))
        assert "pending" in (await server.router.Select(request)).context_version
    await wait_until(lambda: pipeline.reduction is not None, "the PCA to be fitted and stored")
    assert pipeline.reduction is not None
    assert await _stored(server, pipeline) == pipeline.reduction.to_bytes()
    assert "pending" not in (await server.router.Select(request)).context_version
