"""Shared fixtures: real servers on port 0 over real SQLite and a throwaway Postgres.

Helpers (Running, router_config, SIGNING_KEY...) live in tests/helpers.py; this file holds only
fixtures, and applies to every folder under tests/."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from banditd.config import Settings
from banditd.edge.server import build_app
from banditd.v1 import banditd_pb2_grpc as rpc
from tests.helpers import SIGNING_KEY, Running, StartServer

pytest_plugins = ["tests.postgres_plugin"]


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
