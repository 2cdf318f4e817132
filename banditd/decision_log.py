"""The decision log: decisions are written in groups off the request path (group commit).

A decision is answerable (for a repeated request_id) from memory until its group is committed,
and from the database after. A group that fails to commit stays pending and is retried.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from banditd.domain import Decision
from banditd.errors import Unavailable
from banditd.store import Repository

log = structlog.get_logger(__name__)
MAX_PENDING = 100_000


class DecisionLog:
    def __init__(self, repo: Repository, flush_seconds: float) -> None:
        self._repo = repo
        self._flush_seconds = flush_seconds
        self._pending: dict[str, Decision] = {}
        self._by_request: dict[tuple[int, str], Decision] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._flush_lock = asyncio.Lock()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="decision-log")

    def add(self, decision: Decision) -> None:
        if len(self._pending) >= MAX_PENDING:
            raise Unavailable("decision log backlog is full (database too slow or down)")
        self._pending[decision.decision_id] = decision
        if decision.request_id:
            self._by_request[(decision.router_id, decision.request_id)] = decision
        self._wake.set()

    @property
    def pending(self) -> int:
        """Decisions made but not yet committed."""
        return len(self._pending)

    def lookup(self, router_id: int, request_id: str) -> Decision | None:
        """A pending decision for this request id (memory only, no await)."""
        return self._by_request.get((router_id, request_id))

    async def find(self, router_id: int, request_id: str) -> Decision | None:
        """The decision made for this request id, pending or committed."""
        return self.lookup(router_id, request_id) or await self._repo.find_decision(
            router_id, request_id
        )

    async def _run(self) -> None:
        # Never cancelled mid-write (a cancelled transaction can hold SQLite's write lock while
        # it unwinds): close() asks the loop to stop and waits for it.
        while not self._closing.is_set():
            await self._wake.wait()
            await self._pause(self._flush_seconds)
            try:
                await self.flush()
            except Unavailable as exc:
                log.warning("decision_log_flush_failed", error=str(exc), pending=len(self._pending))
                await self._pause(1.0)
            except Exception:  # the log must outlive any one bad group
                log.exception("decision_log_flush_error", pending=len(self._pending))
                await self._pause(1.0)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the log is closing."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    async def flush(self) -> None:
        """Commit every pending decision (one transaction per group)."""
        async with self._flush_lock:
            self._wake.clear()
            batch = list(self._pending.values())
            if not batch:
                return
            for d in await self._repo.insert_decisions(batch):
                log.warning("decision_not_logged", decision_id=d.decision_id, router_id=d.router_id)
            for d in batch:
                self._pending.pop(d.decision_id, None)
                if d.request_id:
                    self._by_request.pop((d.router_id, d.request_id), None)

    async def close(self) -> None:
        self._closing.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush()
