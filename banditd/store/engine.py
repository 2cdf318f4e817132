"""Async engine and transactions; database errors are translated here, once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from banditd.errors import Unavailable

EVENTS_CHANNEL = "banditd_events"  # NOTIFY channel: feedback events were committed


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the writer; FULL sync so an acknowledged commit survives
    # power loss, not only a process crash.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(
            url, pool_pre_ping=not url.startswith("sqlite")
        )
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One atomic unit of work: committed on success, rolled back on any error."""
        try:
            async with self.engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise  # callers decide what a constraint violation means
        except (OperationalError, DBAPIError, OSError, ConnectionError) as exc:
            raise Unavailable(f"database unavailable: {type(exc).__name__}") from exc

    async def listen_for_events(self, wake: Callable[[], None]) -> Callable[[], Awaitable[None]]:
        """Call ``wake`` whenever any process commits feedback events (Postgres LISTEN/NOTIFY;
        elsewhere a no-op: one SQLite process sees its own writes). Returns the closer."""
        if self.engine.dialect.name != "postgresql":
            return _nothing
        conn = await self.engine.connect()
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None

        def on_notify(*_: object) -> None:
            wake()

        await driver.add_listener(EVENTS_CHANNEL, on_notify)

        async def close() -> None:
            with contextlib.suppress(Exception):  # the connection may already be gone
                await driver.remove_listener(EVENTS_CHANNEL, on_notify)
            await conn.close()

        return close

    async def close(self) -> None:
        await self.engine.dispose()


async def _nothing() -> None:
    return None


def alembic_config(url: str, migrations_dir: Path) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    # Passed as an attribute, not an ini option: URLs may hold '%' that ini interpolation eats.
    cfg.attributes["url"] = url
    return cfg


async def migrate(url: str, migrations_dir: Path, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (Alembic runs its own loop, so in a worker thread)."""
    if not (migrations_dir / "env.py").exists():
        raise FileNotFoundError(f"no Alembic migrations in {migrations_dir}")
    await asyncio.to_thread(command.upgrade, alembic_config(url, migrations_dir), revision)
