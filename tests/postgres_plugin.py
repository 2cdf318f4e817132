"""A throwaway Postgres for the tests: one server per session, one fresh database per test.

Built on pytest-postgresql's executor and janitor, started through ``pg_ctl_as_postgres`` so it
works as root (sessions and CI run as root; Postgres refuses to). Without Postgres binaries the
tests that need it skip locally and fail in CI (CI=true): CI never skips them silently.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import port_for
import pytest
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor

PG_CTL = Path(__file__).with_name("pg_ctl_as_postgres")
FAST_OPTIONS = "-c fsync=off -c full_page_writes=off"  # throwaway data: speed


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgreSQLExecutor]:
    if not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"):
        message = "no PostgreSQL binaries: apt-get install -y postgresql-15 (.ci/run does this)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with _throwaway_postgres(FAST_OPTIONS) as executor:
        yield executor


@contextmanager
def _throwaway_postgres(options: str) -> Iterator[PostgreSQLExecutor]:
    base = Path(tempfile.mkdtemp(prefix="banditd-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    executor = PostgreSQLExecutor(
        executable=str(PG_CTL),
        host="127.0.0.1",
        port=port_for.select_random(),
        datadir=str(base / "data"),
        unixsocketdir=str(base),
        logfile=str(base / "postgres.log"),
        startparams="-w",
        dbname="postgres",
        user="postgres",
        postgres_options=options,
    )
    try:
        with executor:
            yield executor
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgreSQLExecutor) -> Iterator[str]:
    """SQLAlchemy asyncpg URL of a fresh, empty database, dropped after the test."""
    dbname = f"banditd_{uuid.uuid4().hex[:12]}"
    with DatabaseJanitor(
        user=postgres_server.user,
        host=postgres_server.host,
        port=postgres_server.port,
        dbname=dbname,
    ):
        yield (
            f"postgresql+asyncpg://{postgres_server.user}@{postgres_server.host}:"
            f"{postgres_server.port}/{dbname}"
        )


@dataclass(frozen=True)
class OwnPostgres:
    """A Postgres server a test may stop and start, and the URL of a database on it."""

    executor: PostgreSQLExecutor
    url: str

    async def stop(self) -> None:
        """pg_ctl stop -m fast: clients are disconnected, committed rows are kept."""
        await self._pg_ctl("stop", "-D", self.executor.datadir, "-m", "fast", "-w")

    async def start(self) -> None:
        ex = self.executor
        options = f"-F -p {ex.port} -c unix_socket_directories={ex.unixsocketdir} {FAST_OPTIONS}"
        await self._pg_ctl("start", "-D", ex.datadir, "-o", options, "-l", ex.logfile, "-w")

    async def _pg_ctl(self, *args: str) -> None:
        # A child process spawned without preexec_fn: mirakuru's os.setsid in a forked child
        # can crash (SIGSEGV) while gRPC threads run in this process.
        proc = await asyncio.create_subprocess_exec(
            str(PG_CTL), *args, stdout=asyncio.subprocess.DEVNULL
        )
        assert await proc.wait() == 0, f"pg_ctl {args[0]} failed"


@pytest.fixture
def own_postgres(postgres_server: PostgreSQLExecutor) -> Iterator[OwnPostgres]:
    """A Postgres server of this test's own (a test may stop and start it) with an empty
    database. Needs ``postgres_server`` only for its skip/fail rule when there is none.
    A clean stop (pg_ctl -m fast) writes everything out even with fsync off."""
    with (
        _throwaway_postgres(FAST_OPTIONS) as executor,
        DatabaseJanitor(
            user=executor.user, host=executor.host, port=executor.port, dbname="banditd"
        ),
    ):
        yield OwnPostgres(
            executor,
            f"postgresql+asyncpg://{executor.user}@{executor.host}:{executor.port}/banditd",
        )
