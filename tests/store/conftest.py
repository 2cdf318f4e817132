"""Fixtures of the store's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from banditd.config import DEFAULT_MIGRATIONS_DIR
from banditd.store import Database, migrate


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A migrated database (SQLite, and Postgres where it runs), closed afterwards."""
    await migrate(database_url, DEFAULT_MIGRATIONS_DIR)
    db = Database(database_url)
    yield db
    await db.close()
