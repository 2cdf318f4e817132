"""Live routers' PCA (banditd.state.reductions): fitted off the request path, and stored at a
later tail round when the first store fails, while Select keeps answering."""

from __future__ import annotations

import sqlite3

import numpy as np
from structlog.testing import capture_logs

from banditd.context.pipeline import ContextPipeline, pca_fingerprint
from banditd.store import sqlite_file
from banditd.store.learnt_state import LearntState
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import Running, StartServer, router_config, wait_until


async def _stored(server: Running, pipeline: ContextPipeline) -> bytes | None:
    fingerprint = pca_fingerprint(pipeline.spec, pipeline.encoder)
    return await LearntState(server.app.db).context_model(1, fingerprint)


async def test_a_pca_the_store_could_not_take_is_stored_at_a_later_tail_round(
    sqlite_url: str, start_server: StartServer
) -> None:
    # No background tail and no decision flush: only the rounds run here touch the database.
    server = await start_server(sqlite_url, tail_interval_s=3600.0, decision_flush_ms=60_000.0)
    config = router_config(embedding_dim=8, pca_dim=3, pca_fit_samples=12)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    pipeline = server.app.catalog._by_id[1].context
    assert pipeline is not None
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
            await wait_until(lambda: pipeline.reduction is not None, "the PCA to be fitted")
            assert pipeline.unsaved_reduction
            # Answered with the fitted PCA while its store waits on the lock.
            during = await select()
            assert "pending" not in during.context_version
            await server.app.catalog.reductions.settle()  # the store attempt has failed
        [failed] = [entry for entry in logs if entry["event"] == "pca_not_stored"]
        assert "database is locked" in failed["error"]
        assert pipeline.unsaved_reduction
        assert await _stored(server, pipeline) is None
        assert (await select()).context_version == during.context_version
    finally:
        holder.close()  # rolls back: the lock is released
    assert pipeline.reduction is not None
    fitted = pipeline.reduction.to_bytes()
    await server.tail_rounds(1)
    assert await _stored(server, pipeline) == fitted
    assert not pipeline.unsaved_reduction
    assert (await select()).context_version == during.context_version
