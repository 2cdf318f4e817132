"""Micro-batching of a slow text encoder: concurrent Selects share one encoder call.

A prompt waits at most ``max_wait_s`` (2 ms by default) for company, or less when ``max_batch``
prompts are waiting; then one call encodes them all in a worker thread, so the event loop never
blocks on the model. While a call runs, new prompts queue and go together in the next call as
soon as it ends: under load the batches grow by themselves and throughput scales with them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from banditd.context.encoders import TextEncoder
from banditd.domain import FloatArray

DEFAULT_MAX_WAIT_S = 0.002
DEFAULT_MAX_BATCH = 64

_Item = tuple[str, int, "asyncio.Future[FloatArray]"]


class MicroBatcher:
    def __init__(
        self,
        encoder: TextEncoder,
        *,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self.encoder = encoder
        self.max_wait_s = max_wait_s
        self.max_batch = max_batch
        self.calls = 0  # encoder calls made (for tests and metrics)
        self.encoded = 0  # prompts encoded
        self._pending: list[_Item] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"encoder-{encoder.name}")

    async def encode(self, text: str, window_tokens: int = 0) -> FloatArray:
        """The text's vector, shape (encoder.dim,)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[FloatArray] = loop.create_future()
        self._pending.append((text, window_tokens, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None and self._running is None:
            self._timer = loop.call_later(self.max_wait_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._running is not None or not self._pending:
            return  # the running call flushes again when it ends
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        self._running = asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: Sequence[_Item]) -> None:
        loop = asyncio.get_running_loop()
        try:
            for window in sorted({w for _, w, _ in batch}):
                group = [(t, f) for t, w, f in batch if w == window]
                try:
                    vecs = await loop.run_in_executor(
                        self._executor, self.encoder.encode_batch, [t for t, _ in group], window
                    )
                except Exception as exc:  # every waiter of this call gets the error
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                finally:
                    self.calls += 1
                self.encoded += len(group)
                for (_, future), vec in zip(group, vecs, strict=True):
                    if not future.done():
                        future.set_result(vec)
        finally:
            self._running = None
            if self._pending:
                self._flush()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
