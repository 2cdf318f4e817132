"""Routers held in memory with their posteriors, restored from snapshot + event tail.

Every change to a router's posterior happens under that router's lock, so in one process events
are appended and applied in id order; multi-replica tailing of the log builds on the same restore.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import structlog

from banditd import metrics
from banditd.context.metadata import VocabularyStore
from banditd.context.pipeline import ContextPipeline
from banditd.context.registry import Encoders
from banditd.domain import FeedbackEvent, RouterSpec, signal_rule
from banditd.errors import BanditdError, NotFound, Unavailable
from banditd.state import breaker, posterior_snapshot
from banditd.state.breaker import ArmHealth
from banditd.state.fold import RouterState, fold
from banditd.state.reductions import Reductions
from banditd.store import Store
from banditd.store.dead_letters import DeadLetters, append_isolating
from banditd.store.events import AppendedBatch, EventLog
from banditd.store.learnt_state import LearntState
from banditd.store.routers import StoredRouter

log = structlog.get_logger(__name__)
DEFAULT_BATCH = 1000  # decisions given a default reward per router and tail round, at most
DEFAULT_RESCAN_S = 300.0  # a decision logged this much after it was made still gets its default


class _StoredVocabulary(VocabularyStore):
    """A router's metadata vocabulary in the database."""

    def __init__(self, learnt: LearntState, router_id: int) -> None:
        self._learnt, self._router_id = learnt, router_id

    async def assign(self, key: str, value: str, limit: int) -> int | None:
        return await self._learnt.assign_slot(self._router_id, key, value, limit)


async def index_log(log: EventLog, router_id: int, pipeline: ContextPipeline) -> None:
    """Put a router's whole feedback log into its pipeline's kNN index (none: nothing to do)."""
    if pipeline.knn is None:
        return
    after = 0
    while events := await log.after(router_id, after):
        for event in events:
            pipeline.observe(event)
        after = events[-1].event_id


class Catalog:
    def __init__(
        self,
        store: Store,
        snapshot_every: int,
        clock: Callable[[], float] = time.time,
        *,
        encoders: Encoders | None = None,
        max_prompt_chars: int = 200_000,
    ) -> None:
        self._store = store
        self._dead = DeadLetters(store.db)
        self.encoders = encoders or Encoders()
        self.reductions = Reductions(
            store.learnt
        )  # PCA: loaded, fitted off the request path, stored
        self._max_prompt_chars = max_prompt_chars
        self._clock = clock
        self._snapshot_every = snapshot_every
        self._by_id: dict[int, RouterState] = {}
        self._by_name: dict[tuple[str, str], int] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._created: dict[int, float] = {}  # by router id: StoredRouter.created_at of the state

    def _lock(self, router_id: int) -> asyncio.Lock:
        return self._locks.setdefault(router_id, asyncio.Lock())

    async def load_all(self) -> int:
        """Restore every stored router (at start, so the first Select pays no replay)."""
        stored = await self._store.routers.list()
        for item in stored:
            async with self._lock(item.router_id):
                await self._restore(item)
        return len(stored)

    async def _restore(self, stored: StoredRouter) -> RouterState:
        spec = stored.spec
        started = time.perf_counter()
        replaced = self._by_id.get(stored.router_id)
        current = None  # the pipeline of the version replaced (not of one deleted since)
        if replaced is not None and self._created.get(stored.router_id) == stored.created_at:
            current = replaced.context
        context = await self._context(stored, current)
        state = RouterState.fresh(
            spec, stored.router_id, context=context, context_since=stored.context_since
        )
        snapshot = await self._store.learnt.latest_snapshot(stored.router_id)
        if snapshot is not None:
            try:
                posterior = posterior_snapshot.load(snapshot[0])
            except ValueError as exc:  # an older format: rebuild from the log
                log.info("snapshot_not_used", router_id=stored.router_id, reason=str(exc))
            else:  # one under another prior, context or weights (Prior) is not used: rebuild
                if posterior.prior == state.posterior.prior:
                    state.resume(posterior, ArmHealth.from_json(snapshot[1], spec.breaker))
        from_id = state.posterior.last_event_id
        replayed = await self._catch_up(state)
        self._by_id[stored.router_id] = state
        if replaced is not None:  # arms the change removed: their gauges go
            removed = {a.name for a in replaced.spec.arms} - {a.name for a in spec.arms}
            metrics.forget_arms(spec.tenant, spec.name, removed)
        self._by_name[(spec.tenant, spec.name)] = stored.router_id
        self._created[stored.router_id] = stored.created_at
        log.info(
            "router_restored",
            tenant=spec.tenant,
            router=spec.name,
            snapshot_event_id=from_id,
            replayed_events=replayed,
            seconds=round(time.perf_counter() - started, 4),
        )
        return state

    async def _context(
        self, stored: StoredRouter, current: ContextPipeline | None = None
    ) -> ContextPipeline:
        """A router's context pipeline: its encoder, stored vocabulary and PCA, and its kNN
        index rebuilt from the whole feedback log; ``current``, the pipeline of the version it
        replaces, when that builds x exactly as this one (a change of prices, breaker or
        exploration): what it learnt stays, the PCA's samples and kNN index included."""
        spec, router_id = stored.spec, stored.router_id
        encoder, batcher = await self.encoders.get(spec)
        if current is not None and current.builds_x_as(spec, encoder, stored.context_since):
            current.spec = spec
            return current
        known = await self._store.learnt.vocabulary(router_id) if spec.metadata_keys else None
        pipeline = ContextPipeline(
            spec,
            encoder,
            _StoredVocabulary(self._store.learnt, router_id),
            known_vocabulary=known,
            batcher=batcher,
            max_prompt_chars=self._max_prompt_chars,
            context_since=stored.context_since,
        )
        self.reductions.serve(router_id, pipeline)
        await self.reductions.load(router_id, pipeline)
        # The kNN index is in no snapshot: it takes the log from the start (the posterior and
        # arm health hold the events up to their snapshot; _catch_up folds the rest into all
        # three).
        await index_log(self._store.events, router_id, pipeline)
        return pipeline

    async def get(self, tenant: str, name: str) -> RouterState:
        router_id = self._by_name.get((tenant, name))
        if router_id is not None and router_id in self._by_id:
            return self._by_id[router_id]
        stored = await self._store.routers.get(tenant, name)  # NotFound when absent
        async with self._lock(stored.router_id):
            return self._by_id.get(stored.router_id) or await self._restore(stored)

    def name_of(self, router_id: int) -> str:
        """A loaded router's name ("" for one this process has not loaded), for metrics."""
        state = self._by_id.get(router_id)
        return state.spec.name if state is not None else ""

    @asynccontextmanager
    async def locked(self, router_id: int) -> AsyncIterator[RouterState]:
        """The router's state, held exclusively (for appending and applying events)."""
        async with self._lock(router_id):
            state = self._by_id.get(router_id)
            if state is None:
                stored = await self._store.routers.by_id(router_id)
                if stored is None:
                    raise NotFound("the router of this decision no longer exists")
                state = await self._restore(stored)
            yield state

    async def put(
        self, spec: RouterSpec, *, action: str = "put", expected_version: int | None = None
    ) -> tuple[RouterSpec, bool]:
        await self.encoders.get(spec)  # one this replica cannot load is refused, not stored
        stored, created = await self._store.routers.put(
            spec, action=action, expected_version=expected_version
        )
        async with self._lock(stored.router_id):
            await self._restore(stored)
        return stored.spec, created

    async def delete(self, tenant: str, name: str) -> bool:
        router_id = await self._store.routers.delete(tenant, name)
        if router_id is None:
            return False
        async with self._lock(router_id):
            self._forget(router_id)
        return True

    def _forget(self, router_id: int) -> None:
        """Drop a deleted router's state and gauges. Caller holds its lock."""
        state = self._by_id.pop(router_id, None)
        self._created.pop(router_id, None)
        if state is not None:
            self._by_name.pop((state.spec.tenant, state.spec.name), None)
            metrics.forget_router(state.spec.tenant, state.spec.name)

    async def _default_missing(self, state: RouterState) -> int:
        """Give the router's default reward to decisions whose feedback did not come in time.

        Every replica may try; the unique decision id lets exactly one event in. Caller holds
        the router's lock. Returns the events applied.
        """
        spec = state.spec
        if spec.default_reward is None:
            return 0
        now = self._clock()
        cutoff = now - spec.reward_wait_seconds
        # Rescan a margin behind the watermark for decisions the group commit logged late.
        due = await self._store.decisions.awaiting_default(
            state.router_id,
            state.defaults_checked_until - DEFAULT_RESCAN_S,
            cutoff,
            DEFAULT_BATCH,
        )
        if len(due) < DEFAULT_BATCH:
            state.defaults_checked_until = cutoff
        events = [
            FeedbackEvent(
                event_id=0,
                router_id=state.router_id,
                decision_id=d.decision_id,
                arm=d.arm,
                x=d.x,
                reward=spec.default_reward,
                cost_usd=d.expected_cost_usd,
                input_tokens=None,
                output_tokens=None,
                latency_ms=None,
                error=False,
                created_at=now,
                cost_reported=False,
                defaulted=True,
                decision_version=d.router_version,
                context_version=d.context_version,
            )
            for d in due
            if d.x is not None
        ]
        if not events:
            return 0
        added = (await self._store.events.append(events)).positions
        log.info("default_rewards", tenant=spec.tenant, router=spec.name, added=len(added))
        return await self._catch_up(state)

    async def record(
        self,
        state: RouterState,
        events: Sequence[FeedbackEvent],
        refused: list[tuple[int, BanditdError]],
        joined_at: float | None = None,
    ) -> AppendedBatch:
        """Append events in one transaction, then fold in the log up to them (other replicas'
        events included); what was committed (positions into ``events``, the events as stored:
        their ids, a first signal's decision usage folded in). Each event not added goes into
        ``refused`` with its position: BadData (set aside as a dead letter, never retried) or
        AlreadyExists (its decision has feedback, its preference or its most signals). A single
        event is a batch of one. Caller holds ``locked(router_id)``. What fails after the
        append (a dead letter, the catch-up) is logged, not raised: the batch is committed.
        ``joined_at``: parked feedback joined now (``EventLog.append``)."""
        appended, bad = await append_isolating(
            self._store.events, events, signal_rule(state.spec.combine), joined_at
        )
        try:
            await self._dead.add_events(
                state.router_id, state.spec.tenant, [(events[i], exc) for i, exc in bad]
            )
        except Unavailable as exc:  # the batch is committed: raising would have it sent again
            log.error("dead_letter_not_stored", events=len(bad), error=exc.message)
        refused.extend(bad)
        refused.extend(sorted(appended.duplicates.items(), key=lambda item: item[0]))
        if appended.follows == state.posterior.last_event_id and all(
            e.context_version is not None for e in appended.events
        ):
            # Nothing of the router's log lies between what we applied and the batch: apply it
            # as committed instead of reading it back (the catch-up below finds nothing more).
            # An event without its featurisation (a v1 token's) reads its decision's from the
            # log, as every other replica does.
            fold(state, appended.events)
        try:
            await self._catch_up(state)
        except Unavailable as exc:  # committed: the next tail round applies them
            log.warning("catch_up_failed", router_id=state.router_id, error=str(exc))
        return appended

    async def _catch_up(self, state: RouterState) -> int:
        """Apply the router's events after the last applied one, in id order; snapshot when due.
        Caller holds the router's lock."""
        applied = 0
        while events := await self._store.events.after(
            state.router_id, state.posterior.last_event_id
        ):
            fold(state, events)
            applied += len(events)
        if state.skipped:
            await self._dead.add_events(
                state.router_id, state.spec.tenant, state.skipped, "skipped_event"
            )
            state.skipped = []
        metrics.APPLIED_EVENT.labels(state.spec.tenant, state.spec.name).set(
            state.posterior.last_event_id
        )
        breaker.export_states(state.health, state.spec, self._clock())
        if state.events_since_snapshot >= self._snapshot_every:
            await self._snapshot_due(state)
        return applied

    async def _snapshot_due(self, state: RouterState) -> None:
        """The periodic snapshot, unless another replica's is less than snapshot_every events
        behind this one: any replica's snapshot restores every replica alike (the posterior is
        a function of the log), so N replicas need not each write one per snapshot_every."""
        newest = await self._store.learnt.newest_snapshot_event_id(state.router_id)
        if newest is not None and state.posterior.last_event_id - newest < self._snapshot_every:
            state.events_since_snapshot = 0
            return
        await self._snapshot(state)

    async def tail(self) -> int:
        """Bring every loaded router up to the log (events written by other replicas); picks up
        routers other replicas created, changed or deleted. Returns the events applied."""
        stored = {s.router_id: s for s in await self._store.routers.list()}
        for router_id in list(self._by_id):
            if router_id not in stored:
                async with self._lock(router_id):
                    self._forget(router_id)
        applied = 0
        for router_id, item in stored.items():
            try:
                applied += await self._tail_one(router_id, item)
            except Unavailable:
                raise  # the database is out: the round ends here, the next one retries
            except Exception as exc:  # one router's failure (a bad row, an encoder this replica
                # cannot load) never stops the others; a call that needs it is told why
                log.error("tail_router_failed", router_id=router_id, error=repr(exc))
        return applied

    async def _tail_one(self, router_id: int, item: StoredRouter) -> int:
        async with self._lock(router_id):
            state = self._by_id.get(router_id)
            if (
                state is None
                or state.spec.version != item.spec.version
                or self._created.get(router_id) != item.created_at  # deleted, created again
            ):
                fresh = await self._store.routers.by_id(router_id)  # newer than the listing?
                if fresh is not None:
                    await self._restore(fresh)
                return 0
            lag = await self._store.events.count_after(router_id, state.posterior.last_event_id)
            metrics.LOG_LAG.labels(state.spec.tenant, state.spec.name).set(lag)
            applied = await self._catch_up(state) + await self._default_missing(state)
            if state.context is not None:
                await self.reductions.load(router_id, state.context)
            return applied

    async def _snapshot(self, state: RouterState) -> None:
        await self._store.learnt.write_snapshot(
            state.router_id,
            state.posterior.last_event_id,
            posterior_snapshot.dump(state.posterior),
            state.health.to_json(),
        )
        state.events_since_snapshot = 0

    async def snapshot_all(self) -> None:
        """Snapshot every router with events since its last snapshot (on shutdown); one that
        another replica deleted since this one's last tail is skipped."""
        for router_id, state in list(self._by_id.items()):
            if state.events_since_snapshot:
                async with self._lock(router_id):
                    try:
                        await self._snapshot(state)
                    except NotFound:
                        log.info("snapshot_skipped_router_deleted", router_id=router_id)
