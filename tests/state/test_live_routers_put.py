"""A router changed so that it builds x as before (a price, breaker or exploration change) keeps
its context pipeline, in the replica that took the PutRouter and in those that tail it: the PCA's
samples collected so far stay, and the kNN index is not read again from the log. A change of x
starts a new pipeline."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest

from banditd.config import DEFAULT_MIGRATIONS_DIR
from banditd.context.pipeline import ContextPipeline
from banditd.domain import FeedbackEvent
from banditd.edge import codec
from banditd.state.fold import RouterState
from banditd.state.live_routers import Catalog
from banditd.store import Store
from banditd.store.engine import Database, migrate
from tests.helpers import ReadCountingLog, router_config

EVENTS = 10


@pytest.fixture
async def store(sqlite_url: str) -> AsyncIterator[Store]:
    await migrate(sqlite_url, DEFAULT_MIGRATIONS_DIR)
    db = Database(sqlite_url)
    yield dataclasses.replace(Store.over(db), events=ReadCountingLog(db))
    await db.close()


def _events(state: RouterState, rng: np.random.Generator) -> list[FeedbackEvent]:
    assert state.context is not None
    return [
        FeedbackEvent(
            event_id=0,
            router_id=state.router_id,
            decision_id=str(uuid.uuid4()),
            arm=("cheap", "mid", "strong")[k % 3],
            x=np.concatenate([[1.0], rng.normal(size=state.spec.dim - 1)])
            .astype(np.float32)
            .astype(np.float64),
            reward=float(rng.uniform()),
            cost_usd=0.001,
            input_tokens=None,
            output_tokens=None,
            latency_ms=None,
            error=False,
            created_at=1_700_000_000.0 + k,
            cost_reported=False,
            decision_version=state.spec.version,
            context_version=state.context.version,
        )
        for k in range(EVENTS)
    ]


def _context(state: RouterState) -> ContextPipeline:
    assert state.context is not None
    return state.context


async def test_a_change_that_keeps_x_keeps_the_pca_samples_and_the_knn_index(store: Store) -> None:
    log = store.events
    assert isinstance(log, ReadCountingLog)
    # snapshot_every = EVENTS: the events below end in a snapshot, which a restore under the
    # same prior resumes from (the posterior reads none of them back).
    catalog, replica = Catalog(store, EVENTS), Catalog(store, EVENTS)
    config = router_config(embedding_dim=8, pca_dim=3, pca_fit_samples=50, knn_k=2)
    spec, _ = await catalog.put(codec.spec_from_proto(config))
    state = await catalog.get(spec.tenant, spec.name)
    pipeline = _context(state)
    rng = np.random.default_rng(5)
    for _ in range(7):  # PCA samples, not enough to fit
        await pipeline.build(prompt=None, embedding=rng.normal(size=8).tolist(), metadata={})
    async with catalog.locked(state.router_id) as locked:
        assert len((await catalog.record(locked, _events(state, rng), [])).positions) == EVENTS
    assert pipeline.knn is not None and pipeline.knn.size == EVENTS
    version = pipeline.version
    theirs = _context(await replica.get(spec.tenant, spec.name))

    steady = router_config(embedding_dim=8, pca_dim=3, pca_fit_samples=50, knn_k=2)
    steady.exploration, steady.breaker_min_events = 0.5, 7
    log.read = 0
    await catalog.put(codec.spec_from_proto(steady))
    assert log.read == 0  # the posterior resumes from its snapshot; the kNN index stays
    steady.arms[2].input_price_per_mtok = 2.5  # a price only
    await catalog.put(codec.spec_from_proto(steady))
    # The posterior replays the log (a price is in its price-tier prior); the kNN index does not.
    assert log.read == EVENTS
    now = await catalog.get(spec.tenant, spec.name)
    assert now.spec.version == 3 and now.spec.arms[2].input_price_per_mtok == 2.5
    assert now.context is pipeline and pipeline.spec is now.spec
    assert len(pipeline.samples) == 7 and pipeline.knn.size == EVENTS
    assert pipeline.version == version
    await replica.tail()  # another replica: the same
    assert _context(await replica.get(spec.tenant, spec.name)) is theirs

    # Another x (a window on the prompt's tokens): a new pipeline, from the log and no samples.
    windowed = router_config(embedding_dim=8, pca_dim=3, pca_fit_samples=50, knn_k=2)
    windowed.text_window_tokens = 16
    await catalog.put(codec.spec_from_proto(windowed))
    again = _context(await catalog.get(spec.tenant, spec.name))
    assert again is not pipeline and len(again.samples) == 0
    await replica.tail()
    assert _context(await replica.get(spec.tenant, spec.name)) is not theirs
