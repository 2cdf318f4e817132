"""The decision log: decisions are written in groups off the request path (group commit).

A decision is answerable (for a repeated request_id) from memory until its group is committed,
and from the database after. A group that fails to commit stays pending and is retried with
exponential backoff (tenacity) for as long as the database is down; Select never waits for it.
A group the database refuses as data (not an outage) is split until the bad decisions are found;
they are set aside as dead letters (banditd.store.dead_letters) and the rest commits, so one bad
row, of whatever tenant, never holds back the log.

The buffer is bounded (``max_pending``). When it is full, the oldest waiting decision is dropped
to make room (warning log, ``banditd_decisions_unlogged_total``), never the request: Select keeps
answering through an outage of any length. The group being written is not in the buffer (so it
may hold another ``max_pending``): a decision in it commits or, when the write fails, goes back to
the front of the buffer, where it may be dropped then. So only a decision never written is
counted, and each exactly once. A dropped decision is missing from the decision log
(stats, default rewards, request_id idempotency), and its feedback, which needs the decision's x
(compact tokens carry none), is parked and never joined (``banditd_feedback_unjoined_total``).

Feedback finds a decision here while it is pending (``decision``): on the replica that made it, a
compact token's feedback never waits for the group commit.

Request ids: ``claim`` is the one place that tells a repeated request_id. It answers the earlier
decision (pending, committed, or being made by a concurrent twin of the request, which it waits
for); else the request holds the claim until ``add`` logs its decision (its twins then get that
one) or ``release`` gives it up (a failed Select: a waiting twin then decides for itself).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from banditd import metrics
from banditd.domain import Decision
from banditd.errors import BadData, Unavailable
from banditd.store.dead_letters import DeadLetter, DeadLetters, commit_isolating
from banditd.store.decisions import Decisions
from banditd.store.probe import RequestIdProbe

log = structlog.get_logger(__name__)
MAX_PENDING = 100_000
RETRY_INITIAL_S = 0.05  # first wait after a failed group commit; doubles up to RETRY_MAX_S
RETRY_MAX_S = 2.0
CLOSE_RETRY_S = 5.0  # how long shutdown keeps trying to commit pending decisions


@dataclass(frozen=True)
class Claim:
    """A request id's place in the log: the earlier decision, or this request's to make."""

    earlier: Decision | None = None
    key: tuple[int, str] | None = None
    held: asyncio.Future[Decision | None] | None = None  # what waiting twins get


NO_CLAIM = Claim()  # a request without a request_id: nothing to repeat


class DecisionLog:
    def __init__(
        self, table: Decisions, flush_seconds: float, max_pending: int = MAX_PENDING
    ) -> None:
        self._table = table
        self._dead = DeadLetters(table.db)
        self._probe = RequestIdProbe(table.db.url)
        self._flush_seconds = flush_seconds
        self._max_pending = max_pending
        self.dropped = 0
        self._pending: dict[str, Decision] = {}  # waiting for the next group, oldest first
        self._writing: dict[str, Decision] = {}  # the group being written
        self._by_request: dict[tuple[int, str], Decision] = {}
        self._claims: dict[tuple[int, str], asyncio.Future[Decision | None]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._flush_lock = asyncio.Lock()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="decision-log")

    def add(self, decision: Decision) -> None:
        """Queue a decision for the next group commit; never blocks, never fails."""
        while len(self._pending) >= self._max_pending:
            self._drop_oldest()
        self._pending[decision.decision_id] = decision
        if decision.request_id:
            key = (decision.router_id, decision.request_id)
            self._by_request[key] = decision
            self._settle(key, decision)
        metrics.DECISIONS_PENDING.set(self.pending)
        self._wake.set()

    def _drop_oldest(self) -> None:
        oldest = next(iter(self._pending.values()))  # dicts keep insertion order
        self._forget([oldest])
        self.dropped += 1
        metrics.DECISIONS_DROPPED.inc()
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning(
                "decision_log_full",
                dropped=self.dropped,
                max_pending=self._max_pending,
                decision_id=oldest.decision_id,
            )

    @property
    def pending(self) -> int:
        """Decisions made but not yet committed."""
        return len(self._pending) + len(self._writing)

    def decision(self, decision_id: str) -> Decision | None:
        """A pending decision by id (memory only, no await)."""
        return self._pending.get(decision_id) or self._writing.get(decision_id)

    async def claim(self, router_id: int, request_id: str) -> Claim:
        """The earlier decision for this request id (pending, committed, or the one a concurrent
        twin is making), else the claim to make it, held until ``add`` or ``release``. With the
        database down only this replica's decisions are found: Select then decides afresh
        rather than fail.

        On SQLite a request id never logged (the usual case) is told apart without an await
        (banditd.store.probe): no thread hop."""
        if not request_id:
            return NO_CLAIM
        key = (router_id, request_id)
        while (twin := self._claims.get(key)) is not None:
            earlier = await asyncio.shield(twin)  # a cancelled wait leaves the twin's claim be
            if earlier is not None:
                return Claim(earlier)
        found = self._by_request.get(key)
        if found is not None:
            return Claim(found)
        if self._probe.has_decision(router_id, request_id) is False:
            return self._hold(key)
        claim = self._hold(key)
        try:
            found = await self._table.find(router_id, request_id)
        except Unavailable as exc:
            log.warning("decision_lookup_skipped", request_id=request_id, error=str(exc))
            return claim
        except BaseException:
            self.release(claim)
            raise
        if found is not None:
            self._settle(key, found)
            return Claim(found)
        return claim

    def _hold(self, key: tuple[int, str]) -> Claim:
        held: asyncio.Future[Decision | None] = asyncio.get_running_loop().create_future()
        self._claims[key] = held
        return Claim(key=key, held=held)

    def _settle(self, key: tuple[int, str], answer: Decision | None) -> None:
        held = self._claims.pop(key, None)
        if held is not None and not held.done():
            held.set_result(answer)

    def release(self, claim: Claim) -> None:
        """Give up a claim whose request logged no decision (it failed): waiting twins decide
        for themselves. A no-op once ``add`` has logged the decision."""
        if claim.key is not None and self._claims.get(claim.key) is claim.held:
            self._settle(claim.key, None)

    async def _run(self) -> None:
        # Never cancelled mid-write (a cancelled transaction can hold SQLite's write lock while
        # it unwinds): close() asks the loop to stop and waits for it.
        while not self._closing.is_set():
            await self._wake.wait()
            await self._pause(self._flush_seconds)
            try:
                await self._flush_with_retries()
            except Exception:  # the log must outlive any one bad group
                log.exception("decision_log_flush_error", pending=len(self._pending))
                await self._pause(RETRY_MAX_S)

    async def _flush_with_retries(self) -> None:
        """Flush; while the database is unavailable, retry with exponential backoff until it
        returns or the log closes (close() then tries once more)."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Unavailable),
            wait=wait_exponential_jitter(
                multiplier=RETRY_INITIAL_S, max=RETRY_MAX_S, jitter=RETRY_INITIAL_S
            ),
            stop=lambda _: self._closing.is_set(),
            sleep=self._pause,
            before_sleep=self._log_retry,
            reraise=True,
        )
        with contextlib.suppress(Unavailable):  # only when closing: close() flushes once more
            async for attempt in retrying:
                with attempt:
                    await self.flush()

    def _log_retry(self, retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        log.warning(
            "decision_log_flush_failed",
            error=str(outcome.exception()) if outcome is not None else "",
            attempt=retry_state.attempt_number,
            pending=len(self._pending),
        )

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the log is closing."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    async def flush(self) -> None:
        """Commit every pending decision (one transaction per group). A group the database
        refuses as data is split until the bad decisions are found: they are set aside as dead
        letters, never retried, and the rest commits (banditd.store.dead_letters)."""
        async with self._flush_lock:
            self._wake.clear()
            self._writing, self._pending = self._pending, {}
            try:
                rejected = await commit_isolating(
                    list(self._writing.values()),
                    self._table.insert,
                    lambda done, _: self._forget(done),
                )
                letters = [
                    DeadLetter("decision", d.decision_id, d.router_id, d.tenant, exc.message, d)
                    for d, exc in rejected
                ]
                try:
                    await self._dead.add(letters)
                except BadData as exc:  # cannot even be set aside: logged, not retried
                    log.error("dead_letter_not_stored", decisions=len(letters), error=exc.message)
                self._forget([d for d, _ in rejected])
            finally:  # what did not commit waits again, before what came meanwhile
                self._pending, self._writing = {**self._writing, **self._pending}, {}
                while len(self._pending) > self._max_pending:
                    self._drop_oldest()

    def _forget(self, done: Sequence[Decision]) -> None:
        for d in done:
            self._pending.pop(d.decision_id, None)
            self._writing.pop(d.decision_id, None)
            if d.request_id:
                self._by_request.pop((d.router_id, d.request_id), None)
        metrics.DECISIONS_PENDING.set(self.pending)

    async def close(self) -> None:
        """Stop the loop and commit what is pending, retrying for at most CLOSE_RETRY_S; with
        the database still down, the pending decisions are given up (logged, not raised)."""
        self._closing.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Unavailable),
            wait=wait_exponential_jitter(
                multiplier=RETRY_INITIAL_S, max=RETRY_MAX_S, jitter=RETRY_INITIAL_S
            ),
            stop=stop_after_delay(CLOSE_RETRY_S),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self.flush()
        except Unavailable as exc:
            log.error("decision_log_not_flushed", pending=len(self._pending), error=str(exc))
        finally:
            self._probe.close()
