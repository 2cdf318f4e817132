"""Shared fixtures: real servers on port 0 over real SQLite and a throwaway Postgres."""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from banditd.config import Settings
from banditd.edge.server import App, build_app
from banditd.flows.feedback_join import DecisionFinder, joined
from banditd.flows.tokens import TokenClaims, TokenSigner
from banditd.store.pending import PendingStore
from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as rpc

pytest_plugins = ["tests.postgres_plugin"]

SIGNING_KEY = "test-signing-key-0123456789abcdef"


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

    async def stop(self) -> None:
        self.stopped = True
        await self.channel.close()
        await self.app.stop(grace=1.0)


StartServer = Callable[..., Awaitable[Running]]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'banditd.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'banditd.db'}"


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Factory: start a server on 127.0.0.1:0 against a database URL; all are stopped at the end.

    Request the URL fixture before this one, so servers stop before their database is dropped.
    """
    running: list[Running] = []

    async def start(url: str, **overrides: Any) -> Running:
        settings = Settings(
            listen="127.0.0.1:0",
            database_url=url,
            migrate_on_start=True,
            signing_key=SIGNING_KEY,
            **{"metrics_listen": "", **overrides},
        )
        app = await build_app(settings)
        await app.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        item = Running(app, channel, rpc.RouterStub(channel), rpc.AdminStub(channel))
        running.append(item)
        return item

    yield start
    for item in running:
        if not item.stopped:
            await item.stop()


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
