"""Retry safety of the client's calls (banditd.client._calls) against a real server on port 0:
an answer lost on the way back, and the retry that follows. Each feedback event carries an
idempotency key, the same on every attempt, so a retry never counts an event twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select

from banditd import client as bc
from banditd.store.models import feedback_events
from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as rpc
from tests.helpers import AnswerLost, LoseFirstAnswer, Running, StartServer, router_config

FAST_RETRY = bc.RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.01, jitter_s=0.0)


class LoseFirstAnswerAio:
    """The same at an asyncio client's edge: grpc.aio takes an interceptor for one kind of call
    only, so ``interceptors`` gives one for each of the two kinds, sharing what is lost."""

    lost = 0

    async def _pass(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        call = await continuation(details, request)
        await call  # the server did the work
        if not self.lost:
            self.lost += 1
            raise AnswerLost()
        return call

    def interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        return [_UnaryAio(self), _StreamAio(self)]


class _UnaryAio(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]  # untyped base
    def __init__(self, network: LoseFirstAnswerAio) -> None:
        self.network = network

    async def intercept_unary_unary(self, *args: Any) -> Any:
        return await self.network._pass(*args)


class _StreamAio(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]  # untyped base
    def __init__(self, network: LoseFirstAnswerAio) -> None:
        self.network = network

    async def intercept_stream_unary(self, *args: Any) -> Any:
        return await self.network._pass(*args)


class LossyClient(bc.Client):
    def _open(self) -> None:
        super()._open()
        self.network = LoseFirstAnswer()
        self._stub = rpc.RouterStub(grpc.intercept_channel(self._channel, self.network))


class LossyAsyncClient(bc.AsyncClient):
    network = LoseFirstAnswerAio()

    def _router(self) -> Any:
        if self._stub is None:
            self.network = LoseFirstAnswerAio()
            self._channel = grpc.aio.insecure_channel(
                self.target, interceptors=self.network.interceptors()
            )
            self._stub = rpc.RouterStub(self._channel)
        return self._stub


Lossy = LossyClient | LossyAsyncClient


async def call(client: Lossy, method: str, *args: Any, **kwargs: Any) -> Any:
    """Run a client method: the sync client in a thread (the server shares this event loop)."""
    if isinstance(client, bc.AsyncClient):
        return await getattr(client, method)(*args, **kwargs)
    return await asyncio.to_thread(getattr(client, method), *args, **kwargs)


@pytest.fixture(params=["sync", "async"])
async def lossy(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[str], Lossy]]:
    made: list[Lossy] = []

    def make(target: str) -> Lossy:
        kind = LossyClient if request.param == "sync" else LossyAsyncClient
        made.append(kind(target, tenant="acme", retry=FAST_RETRY))
        return made[-1]

    yield make
    for c in made:
        if isinstance(c, bc.AsyncClient):
            await c.close()
        else:
            c.close()


async def averaging(start_server: StartServer, url: str) -> Running:
    server = await start_server(url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(combine="mean")))
    return server


async def decide(server: Running) -> str:
    d = await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt="hi"))
    return d.decision_id


async def events(server: Running) -> int:
    async with server.app.db.transaction() as conn:
        return int(await conn.scalar(select(func.count()).select_from(feedback_events)) or 0)


async def test_a_feedback_retried_after_its_answer_was_lost_counts_once(
    database_url: str, start_server: StartServer, lossy: Callable[[str], Lossy]
) -> None:
    server = await averaging(start_server, database_url)
    decision_id = await decide(server)
    client = lossy(server.address)
    result = await call(client, "feedback", decision_id=decision_id, reward=1.0, cost_usd=0.01)
    assert client.network.lost == 1  # the first attempt's answer
    assert (result.event_id, result.reward, result.cost_usd) == (1, 1.0, 0.01)
    assert not result.already_recorded  # answered as the event recorded, not as a refusal
    assert await events(server) == 1


async def test_each_feedback_call_is_its_own_event_unless_it_names_a_key(
    sqlite_url: str, start_server: StartServer, lossy: Callable[[str], Lossy]
) -> None:
    server = await averaging(start_server, sqlite_url)
    decision_id = await decide(server)
    client = lossy(server.address)
    client.network.lost = 1  # nothing lost
    one = await call(client, "feedback", decision_id=decision_id, reward=1.0)
    two = await call(client, "feedback", decision_id=decision_id, reward=1.0)
    assert (one.event_id, two.event_id) == (1, 2)  # two ratings: two signals
    mine = await call(client, "feedback", decision_id=decision_id, reward=0.0, idempotency_key="x")
    again = await call(client, "feedback", decision_id=decision_id, reward=0.0, idempotency_key="x")
    assert mine == again and mine.event_id == 3
    assert await events(server) == 3


async def test_an_upload_chunk_retried_after_its_answer_was_lost_counts_once(
    database_url: str, start_server: StartServer, lossy: Callable[[str], Lossy]
) -> None:
    server = await averaging(start_server, database_url)
    made = [await decide(server) for _ in range(3)]
    client = lossy(server.address)
    ratings = [{"decision_id": d, "thumb": "up"} for d in made]
    summary = await call(client, "upload_feedback", ratings, chunk_size=10)
    assert client.network.lost == 1
    # The first attempt committed the chunk: its resend is three duplicates, not three more.
    assert (summary.accepted, summary.duplicate, summary.resent) == (0, 3, 3)
    assert await events(server) == 3
