"""The process's text encoders (each model loaded once) and their micro-batchers."""

from __future__ import annotations

import asyncio

import structlog

from banditd.context.batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_S, MicroBatcher
from banditd.context.encoders import TextEncoder, get_encoder
from banditd.domain import RouterSpec

log = structlog.get_logger(__name__)


class Encoders:
    def __init__(
        self, max_wait_s: float = DEFAULT_MAX_WAIT_S, max_batch: int = DEFAULT_MAX_BATCH
    ) -> None:
        self.max_wait_s, self.max_batch = max_wait_s, max_batch
        self.batchers: dict[str, MicroBatcher] = {}

    async def get(self, spec: RouterSpec) -> tuple[TextEncoder, MicroBatcher | None]:
        """A router's encoder (loaded in a thread: never on the event loop) and the batcher
        its slow calls go through (every call of a heavy encoder, long prompts of a light one)."""
        if spec.encoder == "hashing":
            return get_encoder("hashing", spec.embedding_dim), None
        encoder = await asyncio.to_thread(get_encoder, spec.encoder, spec.embedding_dim)
        batcher = self.batchers.get(encoder.name)
        if batcher is None:
            batcher = MicroBatcher(encoder, max_wait_s=self.max_wait_s, max_batch=self.max_batch)
            self.batchers[encoder.name] = batcher
            # Where it runs (minilm: CUDA when torch sees a GPU; banditd.context.device).
            log.info(
                "encoder_device", encoder=encoder.name, device=getattr(encoder, "device", "cpu")
            )
        return encoder, batcher

    def close(self) -> None:
        for batcher in self.batchers.values():
            batcher.close()
