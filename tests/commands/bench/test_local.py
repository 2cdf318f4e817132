"""The benchmarks' local processes: loopback-only targets, and the throwaway Postgres."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from banditd.commands.bench import local
from banditd.errors import Unavailable
from banditd.store import Database


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.9.10:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("127.0.0.1", True),
        ("10.0.0.1:50051", False),
        ("192.168.1.20:50051", False),
        ("8.8.8.8:53", False),
        ("[2001:db8::1]:50051", False),
    ],
)
def test_only_loopback_targets_are_accepted(host: str, loopback: bool) -> None:
    assert local.is_loopback(host) is loopback
    if loopback:
        local.require_loopback(host, "--target")
    else:
        with pytest.raises(SystemExit, match="loopback only"):
            local.require_loopback(host, "--target")


@pytest.mark.postgres
def test_throwaway_postgres_serves_and_is_removed(postgres_server: object) -> None:
    """The bench's own Postgres (used without --database-url) answers, and goes on exit."""

    async def select_one(url: str) -> int:
        db = Database(url)
        try:
            async with db.transaction() as conn:
                return int(await conn.scalar(text("select 1")) or 0)
        finally:
            await db.close()

    with local.throwaway_postgres() as url:
        assert asyncio.run(select_one(url)) == 1
    with pytest.raises(Unavailable):
        asyncio.run(select_one(url))
