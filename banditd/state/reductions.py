"""Live routers' PCA (banditd.context.reduction): loaded from the store, fitted off the request
path, stored so that restarts and other replicas project x the same way.

A router's pipeline collects its first ``pca_fit_samples`` embeddings during Selects; the Select
that completes them only calls ``fit_due`` (no await) and is answered, like those before it, with
the embedding part of x at zeros. The fit then runs in a thread, in a task of its own: the PCA is
set on the pipeline once fitted (the following Selects use it) and stored. When another replica
stored one first, that one replaces ours; a store that fails is tried again at the next tail round
(``load``), and tail rounds also pick up another replica's PCA while ours is still pending.
"""

from __future__ import annotations

import asyncio

import numpy as np
import structlog

from banditd.context.pipeline import ContextPipeline, pca_fingerprint
from banditd.domain import FloatArray
from banditd.errors import Unavailable
from banditd.store.learnt_state import LearntState

log = structlog.get_logger(__name__)


class Reductions:
    def __init__(self, learnt: LearntState) -> None:
        self._learnt = learnt
        self._fits: dict[int, asyncio.Task[None]] = {}  # by router id

    def serve(self, router_id: int, pipeline: ContextPipeline) -> None:
        """Let a live pipeline's PCA be fitted here, off the request path."""
        pipeline.fit_due = lambda due: self._fit_soon(router_id, due)

    async def load(self, router_id: int, pipeline: ContextPipeline) -> None:
        """Load the stored PCA of a pipeline still without one; store ours if not yet stored."""
        if pipeline.unsaved_reduction:
            await self._save(router_id, pipeline)
        if not pipeline.needs_reduction:
            return
        data = await self._learnt.context_model(
            router_id, pca_fingerprint(pipeline.spec, pipeline.encoder)
        )
        if data is not None:
            from banditd.context.reduction import Reduction

            pipeline.set_reduction(Reduction.from_bytes(data))

    async def settle(self) -> None:
        """Wait for the fits in flight (on shutdown, before the database closes)."""
        await asyncio.gather(*self._fits.values(), return_exceptions=True)

    def _fit_soon(self, router_id: int, pipeline: ContextPipeline) -> None:
        if router_id in self._fits:
            return
        samples = np.stack(pipeline.samples)
        task = asyncio.create_task(self._fit(router_id, pipeline, samples), name="pca-fit")
        self._fits[router_id] = task
        task.add_done_callback(lambda _: self._fits.pop(router_id, None))

    async def _fit(self, router_id: int, pipeline: ContextPipeline, samples: FloatArray) -> None:
        from banditd.context.reduction import Reduction

        try:
            fitted = await asyncio.to_thread(Reduction.fit, samples, pipeline.spec.pca_dim)
            if pipeline.needs_reduction:  # else a tail round loaded another replica's
                pipeline.set_reduction(fitted)
                pipeline.unsaved_reduction = True
                await self._save(router_id, pipeline)
        except Exception:  # a task of its own: nobody else would hear of it
            log.exception("pca_fit_failed", router_id=router_id)

    async def _save(self, router_id: int, pipeline: ContextPipeline) -> None:
        """Store the PCA this process fitted; when another replica stored one first, use it."""
        if pipeline.reduction is None or not pipeline.unsaved_reduction:
            return
        from banditd.context.reduction import Reduction

        ours = pipeline.reduction.to_bytes()
        try:
            stored = await self._learnt.save_context_model(
                router_id, pca_fingerprint(pipeline.spec, pipeline.encoder), ours
            )
        except Unavailable as exc:  # the next tail round tries again
            log.warning("pca_not_stored", router_id=router_id, error=str(exc))
            return
        pipeline.unsaved_reduction = False
        if stored != ours:
            pipeline.set_reduction(Reduction.from_bytes(stored))
        spec = pipeline.spec
        log.info("pca_fitted", tenant=spec.tenant, router=spec.name, ours=stored == ours)
