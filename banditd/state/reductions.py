"""Live routers' PCA (banditd.context.reduction): loaded from the store, fitted off the request
path, stored so that restarts and other replicas project x the same way.

A router's pipeline collects its first ``pca_fit_samples`` embeddings during Selects; the Select
that completes them only calls ``fit_due`` (no await) and is answered, like those before it, with
the embedding part of x at zeros. The fit then runs in a thread, in a task of its own, and is
stored; the pipeline then takes the stored PCA: ours, or another replica's when it stored one
first. So x's embedding part is only ever built with the PCA in the store, the one every replica
uses and every event's x folds under: no decision is made with a PCA that loses the race. A fit
the store could not take is kept and stored at the next tail round (``load``), x staying pending
meanwhile; tail rounds also pick up another replica's PCA while ours is still pending.
"""

from __future__ import annotations

import asyncio

import structlog

from banditd.context.pipeline import ContextPipeline, pca_fingerprint
from banditd.context.samples import Float32Array
from banditd.errors import Unavailable
from banditd.store.learnt_state import LearntState

log = structlog.get_logger(__name__)


class Reductions:
    def __init__(self, learnt: LearntState) -> None:
        self._learnt = learnt
        self._fits: dict[int, asyncio.Task[None]] = {}  # by router id
        self._unsaved: dict[int, tuple[str, bytes]] = {}  # by router id: fingerprint, PCA

    def serve(self, router_id: int, pipeline: ContextPipeline) -> None:
        """Let a live pipeline's PCA be fitted here, off the request path."""
        pipeline.fit_due = lambda due: self._fit_soon(router_id, due)

    async def load(self, router_id: int, pipeline: ContextPipeline) -> None:
        """Give a pipeline still without a PCA the stored one, storing ours first when a fit is
        waiting for the store."""
        if not pipeline.needs_reduction:
            return
        fingerprint = pca_fingerprint(pipeline.spec, pipeline.encoder)
        unsaved = self._unsaved.get(router_id)
        if unsaved is not None and unsaved[0] == fingerprint:
            await self._save(router_id, pipeline, unsaved[1])
            return
        self._unsaved.pop(router_id, None)  # fitted for another version of the router
        data = await self._learnt.context_model(router_id, fingerprint)
        if data is not None:
            self._adopt(pipeline, data)

    def _waiting(self, router_id: int) -> bool:
        """A fit of this router's is in flight or waiting for the store."""
        return router_id in self._fits or router_id in self._unsaved

    async def settle(self) -> None:
        """Wait for the fits in flight (on shutdown, before the database closes)."""
        await asyncio.gather(*self._fits.values(), return_exceptions=True)

    def _fit_soon(self, router_id: int, pipeline: ContextPipeline) -> None:
        if self._waiting(router_id):
            return
        samples = pipeline.samples.rows()  # full: no sample is added after this
        task = asyncio.create_task(self._fit(router_id, pipeline, samples), name="pca-fit")
        self._fits[router_id] = task
        task.add_done_callback(lambda _: self._fits.pop(router_id, None))

    async def _fit(self, router_id: int, pipeline: ContextPipeline, samples: Float32Array) -> None:
        from banditd.context.reduction import Reduction

        try:
            fitted = await asyncio.to_thread(Reduction.fit, samples, pipeline.spec.pca_dim)
            if pipeline.needs_reduction:  # else a tail round loaded another replica's
                await self._save(router_id, pipeline, fitted.to_bytes())
        except Exception:  # a task of its own: nobody else would hear of it
            log.exception("pca_fit_failed", router_id=router_id)

    async def _save(self, router_id: int, pipeline: ContextPipeline, ours: bytes) -> None:
        """Store the PCA this process fitted, then use the stored one (ours, or the one another
        replica stored first); when the store fails, keep ours for the next tail round."""
        fingerprint = pca_fingerprint(pipeline.spec, pipeline.encoder)
        try:
            stored = await self._learnt.save_context_model(router_id, fingerprint, ours)
        except Unavailable as exc:  # the next tail round tries again
            self._unsaved[router_id] = (fingerprint, ours)
            log.warning("pca_not_stored", router_id=router_id, error=str(exc))
            return
        self._unsaved.pop(router_id, None)
        self._adopt(pipeline, stored)
        spec = pipeline.spec
        log.info("pca_fitted", tenant=spec.tenant, router=spec.name, ours=stored == ours)

    @staticmethod
    def _adopt(pipeline: ContextPipeline, data: bytes) -> None:
        from banditd.context.reduction import Reduction

        pipeline.set_reduction(Reduction.from_bytes(data))
