"""Async engine and transactions; database errors are translated here, once."""

from __future__ import annotations

import asyncio
import functools
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Insert, Table, event, make_url, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError, StatementError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from banditd.errors import BadData, FailedPrecondition, Unavailable
from banditd.store.listener import EventListener

EVENTS_CHANNEL = "banditd_events"  # NOTIFY channel: feedback events were committed
CONNECT_TIMEOUT_S = 5.0
# Postgres: how long a statement (the pool's pre-ping too) waits for an answer before it fails
# as Unavailable. Without it, a database that keeps the socket open but never answers (frozen,
# a network partition, a failover that left the connections dead) held the call, the decision
# log and shutdown forever. asyncpg's command_timeout; a URL's ?command_timeout=S overrides it.
STATEMENT_TIMEOUT_S = 30.0
# What a lost or refused database connection raises: SQLAlchemy's wrappers of the driver's
# errors (asyncpg's and aiosqlite's, e.g. InterfaceError "connection is closed",
# CannotConnectNowError, "database is locked"), the pool's timeout, and the socket's own errors.
UNAVAILABLE_ERRORS = (DBAPIError, SQLAlchemyTimeoutError, OSError)  # OSError: TimeoutError too
# SQLSTATE classes of a row the database refuses as data: 22 data exception (value out of range,
# invalid JSON or text), 23 integrity constraint, 54 program limit (a row too large to index).
# asyncpg's are not DataError to SQLAlchemy (it maps them to plain DBAPIError): the code tells.
BAD_DATA_SQLSTATE_CLASSES = ("22", "23", "54")
LOCK_NOT_AVAILABLE = "55P03"  # Postgres: lock_timeout passed (a migration's, migrations/env.py)
QUERY_CANCELED = "57014"  # Postgres: pg_cancel_backend, or the server's statement_timeout
# Python's own refusals while a driver encodes a value (asyncpg's client-side DataError is a
# ValueError, sqlite3 raises OverflowError for an int past 64 bits, json.dumps ValueError for NaN).
_ENCODING_ERRORS = (ValueError, TypeError, OverflowError)


def is_bad_data(exc: BaseException) -> bool:
    """Whether a database error is about the rows sent (retrying them cannot help) rather
    than the database (connection lost, locked, shutting down: retry later)."""
    if isinstance(exc, (DataError, IntegrityError)):
        return True
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate[:2] in BAD_DATA_SQLSTATE_CLASSES
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return False
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        return True  # raised while binding parameters, before the database saw anything
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, _ENCODING_ERRORS) and not isinstance(cause, OSError):
            return True
        # Explicit causes only (SQLAlchemy and the asyncpg adapter raise from the original): an
        # outage raised while handling some ValueError is still an outage.
        cause = cause.__cause__ or getattr(cause, "orig", None)
    return False


def _detail(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


def unavailable(exc: BaseException) -> Unavailable:
    """The Unavailable error (gRPC UNAVAILABLE at the edge) for a database error."""
    return Unavailable(f"database unavailable ({_detail(exc)})")


def bad_data(exc: BaseException) -> BadData:
    """The BadData error for a row the database refused."""
    return BadData(f"the database refused the data ({_detail(exc)})")


def insert_ignoring_duplicates(conn: AsyncConnection, table: Table) -> Insert:
    """INSERT that skips a row whose key is taken (ON CONFLICT DO NOTHING), on either database."""
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    stmt: Insert = dialect.insert(table).on_conflict_do_nothing()
    return stmt


async def write_first(conn: AsyncConnection, column: Any, *where: Any) -> None:
    """SQLite: a write to the rows about to be read (``column`` set to itself), so that the
    transaction holds the write lock before it reads them: SELECT ... FOR UPDATE or SHARE locks
    nothing there, and pysqlite begins a transaction only at its first write, so what was read
    could change before the writes that follow. Postgres locks the rows it reads instead."""
    if conn.dialect.name == "sqlite":
        await conn.execute(update(column.table).where(*where).values({column.name: column}))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the writer; FULL sync so an acknowledged commit survives
    # power loss, not only a process crash.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def sqlite_file(url: str) -> Path | None:
    """The absolute path of an SQLite URL's database file; None for other databases and an
    in-memory one. A relative path is taken from the working directory, as SQLite does."""
    parsed = make_url(url)
    name = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or name in ("", ":memory:"):
        return None
    if parsed.query.get("uri") == "true":  # sqlite+aiosqlite:///file:NAME?mode=...&uri=true
        if parsed.query.get("mode") == "memory":
            return None
        name = name.removeprefix("file:")
    return Path(os.path.abspath(name))


def describe_database(url: str) -> str:
    """The database as an operator looks for it: an SQLite file's absolute path, else the URL
    without its password."""
    parsed, path = make_url(url), sqlite_file(url)
    if parsed.get_backend_name() == "sqlite":
        return "SQLite in memory" if path is None else f"SQLite {path}"
    return parsed.render_as_string(hide_password=True)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        postgres = not url.startswith("sqlite")
        timeouts: dict[str, float] = {"timeout": CONNECT_TIMEOUT_S}
        if "command_timeout" not in make_url(url).query:  # else the URL's, passed on by SQLAlchemy
            timeouts["command_timeout"] = STATEMENT_TIMEOUT_S
        self.engine: AsyncEngine = create_async_engine(
            url,
            # Standard JSON only: NaN or infinity in a JSON column is a bad row, found here on
            # every database (Postgres would refuse it, SQLite store it).
            json_serializer=functools.partial(json.dumps, allow_nan=False),
            # An error's text never carries the statement's values (a key's hash, a token).
            hide_parameters=True,
            pool_pre_ping=postgres,
            # A database that does not answer must fail a call soon, not hang it (asyncpg).
            **({"connect_args": timeouts} if postgres else {}),
        )
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One atomic unit of work: committed on success, rolled back on any error.

        Errors: IntegrityError as is (callers decide what a constraint violation means);
        BadData for other data the database refused (never worth retrying as it is);
        Unavailable for the rest (connection, locks, shutdown: worth retrying)."""
        try:
            async with self.engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except (*UNAVAILABLE_ERRORS, StatementError, *_ENCODING_ERRORS) as exc:
            if is_bad_data(exc):
                raise bad_data(exc) from exc
            raise unavailable(exc) from exc

    async def listen_for_events(
        self, wake: Callable[[], None], ping_s: float
    ) -> Callable[[], Awaitable[None]]:
        """Call ``wake`` whenever any process commits feedback events (Postgres LISTEN/NOTIFY;
        elsewhere a no-op: one SQLite process sees its own writes). The connection is pinged
        every ``ping_s`` (banditd.store.listener). Returns the closer."""
        if self.engine.dialect.name != "postgresql":
            return _nothing
        listener = EventListener(self.engine, EVENTS_CHANNEL, wake, ping_s)
        await listener.start()  # reconnects by itself: after a restart, or a dead connection
        return listener.close

    async def close(self) -> None:
        await self.engine.dispose()


async def _nothing() -> None:
    return None


def alembic_config(url: str, migrations_dir: Path, lock_timeout_s: float | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    # Passed as an attribute, not an ini option: URLs may hold '%' that ini interpolation eats.
    cfg.attributes["url"] = url
    cfg.attributes["lock_timeout_s"] = lock_timeout_s  # None: migrations/env.py reads Settings
    return cfg


async def migrate(
    url: str, migrations_dir: Path, revision: str = "head", *, lock_timeout_s: float | None = None
) -> None:
    """Upgrade the schema to ``revision`` (Alembic runs its own loop, so in a worker thread).

    FailedPrecondition, the database unchanged, for a revision no migration has (or a database at
    one: a newer banditd migrated it), and for one the database is already past: this only
    upgrades, where Alembic did nothing and said nothing. Unavailable, the database unchanged,
    where it cannot be reached or stays locked (retry later): on Postgres, a table lock not
    obtained within ``lock_timeout_s`` (None: the setting BANDITD_MIGRATE_LOCK_TIMEOUT_S), and
    a migration cancelled on the database (pg_cancel_backend); there the message names the
    revision the database kept (0023 commits its columns before its index build)."""
    if not (migrations_dir / "env.py").exists():
        raise FileNotFoundError(f"no Alembic migrations in {migrations_dir}")
    await asyncio.to_thread(_upgrade, alembic_config(url, migrations_dir, lock_timeout_s), revision)


def _upgrade(config: Config, revision: str) -> None:
    try:
        command.upgrade(config, revision)
        wanted = ScriptDirectory.from_config(config).get_revision(revision)
    except CommandError as exc:
        raise FailedPrecondition(f"cannot migrate the database to {revision}: {exc}") from exc
    except DBAPIError as exc:
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate == LOCK_NOT_AVAILABLE:
            raise Unavailable(
                "the migration could not lock a table within "
                f"{config.attributes['lock_timeout_s']:g} s: another transaction holds it "
                f"(BANDITD_MIGRATE_LOCK_TIMEOUT_S); {_kept(config)}, retry when it ends"
            ) from exc
        if sqlstate == QUERY_CANCELED:
            raise Unavailable(
                f"the migration was cancelled on the database ({str(exc.orig).strip()}); "
                f"{_kept(config)}, rerun it"
            ) from exc
        if isinstance(exc, OperationalError):  # locked, unreachable
            raise unavailable(exc) from exc
        raise
    except (SQLAlchemyTimeoutError, OSError) as exc:  # unreachable
        raise unavailable(exc) from exc
    at = config.attributes["revision"]  # where migrations/env.py left the database
    if at != (wanted.revision if wanted else None):
        raise FailedPrecondition(
            f"the database is at revision {at}, past {revision}: migrate only upgrades"
        )


def _kept(config: Config) -> str:
    """What a failed migration kept: the revision migrations/env.py found the database at."""
    if "revision" not in config.attributes:  # the connection was lost too
        return "nothing after the database's current version was applied"
    return f"nothing after version {config.attributes['revision'] or 'base'} was applied"
