"""A blocking existence check on SQLite: has a decision been logged for this request id?

Select checks every request_id it has not seen against the decision log. Through SQLAlchemy and
aiosqlite that is a hop to the driver's thread and back (two thread wake-ups, the statement's
cache key, a pooled connection): about as much as the rest of Select. On SQLite the same check is
a lookup in the unique index (router_id, request_id) that takes microseconds in C, so it runs on
the event loop, on a read-only connection of its own. In WAL mode (banditd.store.engine) a
reader never waits for the writer and sees what is committed, as the async query would.

The answer is True, False, or None when the probe cannot tell (not SQLite, an in-memory
database, any SQLite error): then ask the database the usual way.
"""

from __future__ import annotations

import sqlite3
import time
import urllib.parse

from banditd.store.engine import sqlite_file

_QUERY = "SELECT 1 FROM decisions WHERE router_id = ? AND request_id = ? LIMIT 1"
RETRY_AFTER_S = 1.0  # after an error, the usual way only for this long (no reconnect per call)


class RequestIdProbe:
    def __init__(self, url: str, retry_after_s: float = RETRY_AFTER_S) -> None:
        path = sqlite_file(url)
        self._uri = None if path is None else f"file:{urllib.parse.quote(str(path))}?mode=ro"
        self._conn: sqlite3.Connection | None = None
        self._retry_at = 0.0
        self._retry_after_s = retry_after_s

    def has_decision(self, router_id: int, request_id: str) -> bool | None:
        """Whether a committed decision carries this request id; None: cannot tell."""
        if self._uri is None or (self._conn is None and time.monotonic() < self._retry_at):
            return None
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(
                    self._uri, uri=True, isolation_level=None, check_same_thread=False
                )
                self._conn.execute("PRAGMA busy_timeout=0")  # never block the event loop
            # fetchall: the statement runs to its end, so no read transaction stays open (one
            # would hold back the WAL checkpoint).
            rows = self._conn.execute(_QUERY, (router_id, request_id)).fetchall()
        except sqlite3.Error:
            self.close()
            self._retry_at = time.monotonic() + self._retry_after_s
            return None
        return bool(rows)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
