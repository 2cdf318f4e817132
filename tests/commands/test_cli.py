"""The `banditd` command as a user runs it: a real process, real signals."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc

from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as rpc

BANDITD = [sys.executable, "-m", "banditd.commands.cli"]


def test_migrate_creates_schema(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    done = subprocess.run(
        [*BANDITD, "migrate", "--database-url", f"sqlite+aiosqlite:///{db}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "migrated to head" in done.stderr
    tables = {r[0] for r in sqlite3.connect(db).execute("select name from sqlite_master")}
    assert {"routers", "arms", "decisions", "feedback_events", "posterior_snapshots"} <= tables


def test_migrate_says_what_it_cannot_do_instead_of_claiming_it(tmp_path: Path) -> None:
    """A revision the database is past (it only upgrades), one no migration has, or a database a
    newer banditd migrated: exit 1 and a clear line, never "migrated to" with nothing done, nor
    a traceback."""
    db = tmp_path / "m.db"
    url = ["--database-url", f"sqlite+aiosqlite:///{db}"]
    subprocess.run([*BANDITD, "migrate", *url], capture_output=True, timeout=60, check=True)
    at = sqlite3.connect(db).execute("select version_num from alembic_version").fetchall()

    def refused(*args: str) -> str:
        done = subprocess.run([*BANDITD, "migrate", *url, *args], capture_output=True, text=True)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert "migrated to" not in done.stderr and done.stderr.startswith("banditd: ")
        return done.stderr

    assert f"at revision {at[0][0]}, past 0022" in refused("--revision", "0022")
    assert "Can't locate revision identified by 'nope'" in refused("--revision", "nope")
    with sqlite3.connect(db) as conn:
        conn.execute("update alembic_version set version_num = '9999'")  # a newer release's
    assert "Can't locate revision identified by '9999'" in refused()


def test_bad_listen_address_is_a_clear_error() -> None:
    done = subprocess.run(
        [*BANDITD, "serve", "--listen", "nonsense"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "listen must be HOST:PORT" in done.stderr


def test_a_reader_that_stops_early_ends_the_command_quietly() -> None:
    """`banditd ... | head`: the pipe closes before the output is written; no traceback."""
    with subprocess.Popen(
        [*BANDITD, "example-router"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        assert proc.wait(timeout=60) == 141
        assert proc.stderr.read() == ""


def test_serve_example_router_then_sigterm(tmp_path: Path) -> None:
    """The quick start: serve with the example router, call it, stop it cleanly."""
    env = {
        **os.environ,
        "BANDITD_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'q.db'}",
        "BANDITD_METRICS_LISTEN": "",  # the default port may be taken on a shared machine
    }
    with subprocess.Popen(
        [*BANDITD, "serve", "--listen", "127.0.0.1:0", "--example-router"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        _call_and_stop(proc)


def _call_and_stop(proc: subprocess.Popen[str]) -> None:
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        address = None
        while address is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            found = re.search(r"serving demo/chat on (127\.0\.0\.1:\d+)", line)
            address = found.group(1) if found else None
        assert address, "server did not print its address"
        with grpc.insecure_channel(address) as channel:
            router = rpc.RouterStub(channel)
            d = router.Select(pb.SelectRequest(tenant="demo", router="chat", prompt="hi there"))
            assert d.arm in {r.arm for r in d.ranking}
            router.Feedback(
                pb.FeedbackRequest(tenant="demo", decision_id=d.decision_id, thumb=pb.THUMB_UP)
            )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        out = proc.stdout.read() if proc.stdout else ""
        assert '"event": "decision"' in out and '"event": "stopped"' in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
