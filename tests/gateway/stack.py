"""The gateway's test stack on loopback: a real banditd server, two fake upstreams (alpha and
beta, tests.gateway.fakes) and the gateway under uvicorn; the `launch` fixture (conftest.py)
starts one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from banditd.edge import keys
from banditd.gateway.chat import Gateway
from banditd.store.api_keys import KeyStore
from banditd.v1 import banditd_pb2 as pb
from tests.gateway.fakes import FakeUpstream, Served
from tests.helpers import Running, require

MODEL = "banditd/acme/chat"
PROMPT = "Summarise the plot of Hamlet in one line"
# alpha is priced higher, so its prior quality is higher: LinUCB picks it first.
ALPHA_PRICES = (3.0, 15.0)
BETA_PRICES = (0.1, 0.4)


@dataclass
class Stack:
    banditd: Running
    alpha: FakeUpstream
    beta: FakeUpstream
    port: int
    gateway: Gateway
    uvicorn: Served  # the gateway's server
    clients: list[Any]
    admin_key: tuple[tuple[str, str], ...] = ()  # with auth on: an operator key

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def openai(self, api_key: str = "caller-key") -> Any:
        openai = require("openai", "the official OpenAI client (a dev dependency)")
        client = openai.AsyncOpenAI(base_url=self.base_url + "/v1", api_key=api_key, max_retries=0)
        self.clients.append(client)
        return client

    async def stats(self) -> pb.GetStatsResponse:
        return await self.banditd.admin.GetStats(
            pb.GetStatsRequest(tenant="acme", name="chat"), metadata=self.admin_key
        )

    async def arm_stats(self, arm: str) -> pb.ArmStats:
        return next(a for a in (await self.stats()).arms if a.arm == arm)

    async def reported(self, arm: str) -> pb.ArmStats:
        """The arm's stats once the gateway's reports (sent after answering) are in."""
        await self.gateway.drain()
        return await self.arm_stats(arm)


Launch = Callable[..., Awaitable[Stack]]


async def new_key(server: Running, tenant: str, *roles: str) -> str:
    secret, _ = await keys.create_key(KeyStore(server.app.db), tenant, roles)
    return secret
