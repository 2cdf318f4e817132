"""A throwaway PostgreSQL for the tests: one server per session, one fresh database per test.

Register it from ``tests/conftest.py`` (the rootdir is the repository root and ``tests/`` is a
package)::

    pytest_plugins = ["tests.postgres_plugin"]

or, when ``tests/`` itself is on ``sys.path`` instead, as ``pytest_plugins = ["postgres_plugin"]``.
Use exactly one of the two names: loading the module under both registers its fixtures twice.

Fixtures:

``postgres_server`` (session)
    The running server, a ``pytest_postgresql.executors.PostgreSQLExecutor`` (``.host``,
    ``.port``, ``.user``, ``.password``), started once per session (per xdist worker) by
    pytest-postgresql's ``factories.postgresql_proc`` on a random free port, listening on
    127.0.0.1 only (no Unix socket), with its data directory in a fresh directory under pytest's
    private basetemp (``.../pytest-N/pytest-postgresql-_postgres_proc0/data-<port>``), removed
    and stopped at the end of the session.  ``fsync``/``full_page_writes``/``synchronous_commit``
    are off: the data is throwaway.

``postgres_url`` (function)
    A SQLAlchemy URL, ``postgresql+asyncpg://USER[:PASSWORD]@127.0.0.1:PORT/DBNAME``, of a new,
    empty database with a unique name, created for the test and dropped after it (leftover
    connections to it are terminated first).  Dispose the engines you create on it
    (``await engine.dispose()``) before the test ends: the drop kills pooled connections, and
    SQLAlchemy warns when it garbage-collects connections that were never checked in, which
    ``filterwarnings = error`` turns into failures.

The server is started through ``tests/pg_ctl_as_postgres``, a pg_ctl wrapper that runs the real
pg_ctl as the ``postgres`` OS user when the tests run as root (PostgreSQL refuses to run as root).
Without usable PostgreSQL server binaries the tests that use these fixtures are skipped with a
hint to ``apt-get install -y postgresql-15``; when ``CI`` is ``true`` they fail instead, so CI
never skips them silently.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from pytest_postgresql import factories
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy.engine import URL

__all__ = ["PG_CTL", "postgres_server", "postgres_url"]

PG_CTL = Path(__file__).resolve().with_name("pg_ctl_as_postgres")
HOST = "127.0.0.1"

INSTALL_HINT = (
    "install the PostgreSQL server with `apt-get update && apt-get install -y postgresql-15` "
    "(or point $REAL_PG_CTL at a pg_ctl)"
)

_postgres_proc = factories.postgresql_proc(
    executable=str(PG_CTL),
    host=HOST,
    port=None,  # any free port
    user="postgres",
    dbname="banditd",  # the factory creates an empty template "banditd_tmpl"; tests clone it
    startparams="-w",
    postgres_options=(
        # TCP on 127.0.0.1 only; this later -c overrides the factory's unix_socket_directories.
        "-c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
        "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
    ),
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


@cache
def _postgres_unavailable() -> str | None:
    """Why no server can be started here (None when it can): runs the wrapper's --version."""
    try:
        result = subprocess.run(
            [str(PG_CTL), "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError as error:
        return f"cannot run {PG_CTL}: {error}"
    except subprocess.TimeoutExpired:
        return f"{PG_CTL} --version timed out"
    if result.returncode != 0:
        return (result.stderr or result.stdout).strip() or f"{PG_CTL} --version failed"
    return None


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> PostgreSQLExecutor:
    """The session's PostgreSQL server (started on first use, stopped at session end)."""
    reason = _postgres_unavailable()
    if reason is not None:
        message = f"no usable PostgreSQL server ({reason}); {INSTALL_HINT}"
        if _in_ci():
            pytest.fail(f"CI=true and no PostgreSQL server can be started: {message}")
        pytest.skip(message)
    executor = request.getfixturevalue("_postgres_proc")
    assert isinstance(executor, PostgreSQLExecutor)
    return executor


@pytest.fixture
def postgres_url(postgres_server: PostgreSQLExecutor) -> Iterator[str]:
    """SQLAlchemy asyncpg URL of a fresh, empty database, dropped after the test."""
    dbname = f"test_{uuid.uuid4().hex}"
    janitor = DatabaseJanitor(
        user=postgres_server.user,
        password=postgres_server.password,
        host=postgres_server.host,
        port=postgres_server.port,
        dbname=dbname,
        template_dbname=postgres_server.template_dbname,
        maintenance_dbname=postgres_server.maintenance_dbname,
    )
    with janitor:  # CREATE DATABASE ... TEMPLATE; on exit: forbid connections, kill them, DROP
        yield URL.create(
            "postgresql+asyncpg",
            username=postgres_server.user,
            password=postgres_server.password or None,
            host=postgres_server.host,
            port=postgres_server.port,
            database=dbname,
        ).render_as_string(hide_password=False)
