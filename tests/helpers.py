"""Shared test helpers, imported as a module (`from tests.helpers import ...`); the fixtures
stay in conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import event, text
from sqlalchemy.util import await_only

from banditd.domain import FeedbackEvent
from banditd.edge.server import App
from banditd.flows.feedback_join import DecisionFinder, joined
from banditd.flows.tokens import TokenClaims, TokenSigner
from banditd.store.engine import Database
from banditd.store.events import EventLog
from banditd.store.pending import PendingStore
from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as rpc

REPO = Path(__file__).resolve().parent.parent
SIGNING_KEY = "test-signing-key-0123456789abcdef"
POLL_S = 0.02  # how often wait_until looks again
EMBEDDING = pb.Embedding(values=[1.0, 0.0, 0.0, 0.0])  # for router_config's embedding_dim


async def wait_until(check: Callable[[], Any], what: str, within: float = 30.0) -> Any:
    """Call `check` (a plain or an async function) until it returns something true, and return
    that; fail naming `what` after `within` seconds. The one way tests wait for something to
    happen (sync tests run it with asyncio.run)."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, f"gave up after {within:g} s waiting for {what}"
        await asyncio.sleep(POLL_S)


def require(module: str, why: str) -> Any:
    """Import an optional dependency: skip without it locally, fail without it in CI (CI=true),
    where `make test` installs every extra the tests use."""
    if os.environ.get("CI") == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=why)


@dataclass
class Running:
    app: App
    channel: grpc.aio.Channel
    router: rpc.RouterStub
    admin: rpc.AdminStub
    stopped: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.app.port}"

    async def claims(self, token: str, tenant: str = "acme") -> TokenClaims:
        """A token's claims completed from its decision (a compact token carries neither x
        nor the arm names: they stay on the server)."""
        claims = TokenSigner(SIGNING_KEY.encode()).verify(token, tenant)
        if claims.x is not None:
            return claims
        finder = DecisionFinder(PendingStore(self.app.db), self.app.decisions)
        found, _ = await finder.find([claims])
        return joined(claims, found[claims.decision_id])

    async def caught_up(self, event_id: int | None = None, name: str = "chat") -> bool:
        """Whether this server has applied its router's event log (GetStats): up to event_id, or
        all of it."""
        stats = await self.admin.GetStats(pb.GetStatsRequest(tenant="acme", name=name))
        if event_id is None:
            return stats.lag_events == 0
        return stats.applied_event_id >= event_id

    async def tail_rounds(self, rounds: int = 3) -> None:
        """Run rounds of the server's log tail now (join parked feedback, apply the log, give
        default rewards), as its background task does every tail_interval_s."""
        for _ in range(rounds):
            await self.app._tail_once()

    async def stop(self) -> None:
        self.stopped = True
        await self.channel.close()
        await self.app.stop(grace=1.0)


StartServer = Callable[..., Awaitable[Running]]


def all_finite(msg: Any) -> bool:
    """Every double and float in a response, recursively, is finite."""
    for _, value in msg.ListFields():
        values = value if isinstance(value, list) or hasattr(value, "extend") else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                return False
            if hasattr(v, "ListFields") and not all_finite(v):
                return False
    return True


async def finite_stats(
    server: Running, tenant: str = "acme", name: str = "chat"
) -> pb.GetStatsResponse:
    """A router's GetStats, asserted finite throughout."""
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant=tenant, name=name))
    assert all_finite(stats), stats
    return stats


class ReadCountingLog(EventLog):
    """The real event log, counting the events read back."""

    read = 0

    async def after(
        self, router_id: int, after_id: int, limit: int = 10_000
    ) -> list[FeedbackEvent]:
        events = await super().after(router_id, after_id, limit)
        self.read += len(events)
        return events


def router_config(
    tenant: str = "acme",
    name: str = "chat",
    *,
    arms: tuple[str, ...] = ("cheap", "mid", "strong"),
    embedding_dim: int = 4,
    **fields: Any,
) -> pb.RouterConfig:
    prices = {"cheap": (0.1, 0.4), "mid": (1.0, 4.0), "strong": (3.0, 15.0)}
    return pb.RouterConfig(
        tenant=tenant,
        name=name,
        arms=[
            pb.Arm(
                name=a,
                input_price_per_mtok=prices.get(a, (1.0, 1.0))[0],
                output_price_per_mtok=prices.get(a, (1.0, 1.0))[1],
            )
            for a in arms
        ],
        embedding_dim=embedding_dim,
        **fields,
    )


async def dear_dollars(server: Running) -> None:
    """Tenant acme's budget prices dollars dear: a window budget of $100 just begun, $5 of it
    spent by router acme/spender (created here), 2.5 % of the limit ahead of its clock (which
    allows slack / 2, 2.5 %, from the start): the price is U, the top; and the pacer's price
    refreshed. Start the server with a long ``budget_refresh_s``."""
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config("acme", "spender")))
    budget = pb.Budget(
        tenant="acme",
        limit_usd=100.0,
        period=pb.BUDGET_PERIOD_WINDOW,
        window_seconds=10**7,
        window_start_unix=int(time.time()),
    )
    await server.admin.SetBudget(pb.SetBudgetRequest(budget=budget))
    spent = await server.router.Select(
        pb.SelectRequest(tenant="acme", router="spender", prompt="hi")
    )
    await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=spent.decision_id, reward=1, cost_usd=5.0)
    )
    await server.app.budgets.housekeeping()  # the pacer sees the $5 spent


@contextlib.asynccontextmanager
async def table_away(db: Database, table: str) -> AsyncIterator[None]:
    """Within the block, ``table`` is renamed away (statements on it fail as an outage would);
    then put back."""
    async with db.transaction() as conn:
        await conn.execute(text(f"ALTER TABLE {table} RENAME TO {table}_away"))
    try:
        yield
    finally:
        async with db.transaction() as conn:
            await conn.execute(text(f"ALTER TABLE {table}_away RENAME TO {table}"))


async def meanwhile(
    db: Database,
    prefix: str,
    other: Callable[[], Awaitable[Any]],
    first: Awaitable[Any],
    moment: float = 1.0,
) -> tuple[Any, Any]:
    """Run ``first``; when it is about to run a statement starting with ``prefix`` (its reads
    done), start ``other`` and give it a moment (it waits where ``first`` holds a lock, as it
    should; one that needs no lock is given up to ``moment`` seconds to finish): a race of two
    transactions made to happen. Returns both results."""
    task: asyncio.Task[Any] | None = None

    def start_other(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        nonlocal task
        if task is None and statement.startswith(prefix):
            task = asyncio.ensure_future(other())
            await_only(asyncio.wait([task], timeout=moment))

    event.listen(db.engine.sync_engine, "before_cursor_execute", start_other)
    try:
        result = await first
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", start_other)
    assert task is not None, f"no statement began with {prefix!r}"
    return result, await task


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


@contextlib.asynccontextmanager
async def listening(
    port: int, target_port: int, *, drop_first: bool = False
) -> AsyncIterator[None]:
    """A listener on ``port`` passing connections to ``target_port``: a server that is back, at
    once (a real restart takes longer than the retries' window). With ``drop_first`` it closes
    its first connection unanswered: the client's first try fails as against a server not up
    yet, and the next is passed on, with no wait in the test for the moment in between."""
    pipes: list[asyncio.Task[None]] = []
    writers: list[asyncio.StreamWriter] = []
    accepted = 0

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writers.append(writer)
        if drop_first and accepted == 1:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        writers.append(up_writer)
        pipes.append(asyncio.ensure_future(_pipe(reader, up_writer)))
        pipes.append(asyncio.ensure_future(_pipe(up_reader, writer)))

    server = await asyncio.start_server(forward, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await server.wait_closed()


class AnswerLost(grpc.RpcError):
    """What a client sees when the connection drops after the server answered."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "Socket closed"


class LoseFirstAnswer(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):  # type: ignore[misc]  # untyped bases
    """The network at a blocking client's edge (an interceptor of unary and stream-unary calls):
    the first call reaches the server and is answered, and the answer never arrives."""

    lost = 0

    def _pass(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        outcome = continuation(details, request)
        outcome.result()  # the server did the work
        if not self.lost:
            self.lost += 1
            raise AnswerLost()
        return outcome

    intercept_unary_unary = intercept_stream_unary = _pass
