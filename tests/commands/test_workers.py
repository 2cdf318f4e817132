"""`banditd serve --workers N`: N processes serve one port as replicas of one Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from banditd.config import Settings
from banditd.store.engine import alembic_config
from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as rpc
from tests.helpers import SIGNING_KEY, router_config, wait_until

BANDITD = [sys.executable, "-m", "banditd.commands.cli", "serve"]
LOCK = 0x62616E64  # the migrations' advisory lock (MIGRATION_LOCK in migrations/env.py)


def _events(log: Path, event: str) -> list[dict[str, Any]]:
    lines = log.read_text(errors="replace").splitlines()
    return [
        e
        for e in (json.loads(line) for line in lines if line.startswith("{"))
        if e.get("event") == event
    ]


def _wait(log: Path, event: str, count: int, proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]] | None:
        assert proc.poll() is None, log.read_text()[-3000:]
        events = _events(log, event)
        return events if len(events) >= count else None

    return asyncio.run(wait_until(found, f"{count} {event!r} lines", 90))


def _env(**settings: str) -> dict[str, str]:
    return {
        **os.environ,
        "BANDITD_SIGNING_KEY": SIGNING_KEY,
        "BANDITD_METRICS_LISTEN": "",
        "BANDITD_MIGRATE_ON_START": "true",
        **settings,
    }


def _gone(pid: int) -> bool:
    """The process has exited (a zombie counts: once its parent dies, its reaper may be slow)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except (ProcessLookupError, FileNotFoundError):
        return True
    except OSError:  # no /proc (not Linux): alive, as os.kill said
        return False


@contextlib.contextmanager
def _two_workers(
    postgres_url: str, log: Path, env: dict[str, str], listen: str = "127.0.0.1:0"
) -> Iterator[subprocess.Popen[bytes]]:
    """`banditd serve --workers 2`, its output in ``log``, in a process group of its own as a
    terminal's job is (os.killpg(proc.pid, ...) is Ctrl-C); it and its workers die at the end."""
    command = [*BANDITD, "--workers", "2", "--listen", listen, "--database-url", postgres_url]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield proc
    finally:
        workers = [pid for started in _events(log, "workers_started") for pid in started["pids"]]
        for pid in (proc.pid, *workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.postgres
def test_two_workers_serve_one_port_and_stop_together(postgres_url: str, tmp_path: Path) -> None:
    log, env = tmp_path / "workers.log", _env()
    with _two_workers(postgres_url, log, env) as proc:
        (started,) = _wait(log, "workers_started", 1, proc)
        serving = _wait(log, "serving", 2, proc)
        port = int(started["listen"].rpartition(":")[2])
        assert {s["port"] for s in serving} == {port}  # both bound the one port
        with grpc.insecure_channel(started["listen"]) as channel:
            rpc.AdminStub(channel).PutRouter(pb.PutRouterRequest(router=router_config()))
        for i in range(10):  # a connection each: the kernel spreads them over the workers
            with grpc.insecure_channel(started["listen"]) as channel:
                d = rpc.RouterStub(channel).Select(
                    pb.SelectRequest(tenant="acme", router="chat", prompt=f"q {i}"), timeout=30
                )
                assert d.arm
        for second in (["--workers", "2"], []):  # another group, a lone server: refused
            done = subprocess.run(
                [*BANDITD, *second, "--listen", started["listen"], "--database-url", postgres_url],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )
            assert done.returncode == 1, done.stderr
            assert f"gRPC port {port} " in done.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        for pid in started["pids"]:  # the workers drained and exited with it
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def test_workers_need_postgres(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"
    done = subprocess.run(
        [*BANDITD, "--workers", "2", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "--workers needs Postgres" in done.stderr


@pytest.mark.postgres
@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(lambda proc: proc.send_signal(signal.SIGTERM), id="sigterm-to-parent"),
        # Ctrl-C in a terminal: SIGINT to the whole foreground process group at once.
        pytest.param(lambda proc: os.killpg(proc.pid, signal.SIGINT), id="ctrl-c-to-group"),
    ],
)
def test_a_worker_still_draining_is_not_cut_short(
    postgres_url: str, tmp_path: Path, stop: Callable[[subprocess.Popen[bytes]], None]
) -> None:
    """One stop lets every worker finish its in-flight calls (docs/operations.md): a worker gets
    one signal, whether the parent or its whole process group was signalled, and the first worker
    to exit does not make the parent signal the others again (a second signal cuts a drain short,
    banditd.edge.lifecycle.serve)."""
    log = tmp_path / "workers.log"
    with _two_workers(postgres_url, log, _env(BANDITD_GRACE_SECONDS="120")) as proc:
        (started,) = _wait(log, "workers_started", 1, proc)
        _wait(log, "serving", 2, proc)
        with grpc.insecure_channel(started["listen"]) as channel:
            router = rpc.RouterStub(channel)
            rpc.AdminStub(channel).PutRouter(pb.PutRouterRequest(router=router_config()))
            select = pb.SelectRequest(tenant="acme", router="chat", prompt="q")
            decisions = [router.Select(select, timeout=30) for _ in range(2)]
            sent: queue.Queue[pb.FeedbackRequest | None] = queue.Queue()
            sent.put(
                pb.FeedbackRequest(tenant="acme", decision_id=decisions[0].decision_id, reward=1)
            )
            # One call in flight, on one worker; the other worker has none and stops at once.
            stream = router.StreamFeedback.future(iter(sent.get, None), timeout=120)
            router.Select(select, timeout=30)  # answered after the stream's start, same socket
            # Ctrl-C reaches the parent alone, which forwards it once: a worker that got the
            # group's copy as well could take the parent's for a second Ctrl-C.
            assert all(os.getpgid(pid) != proc.pid for pid in started["pids"])
            stop(proc)
            asyncio.run(
                wait_until(lambda: any(map(_gone, started["pids"])), "a worker to exit", 60)
            )
            time.sleep(1)  # room for a second signal to reach the worker still draining
            sent.put(
                pb.FeedbackRequest(tenant="acme", decision_id=decisions[1].decision_id, reward=1)
            )
            sent.put(None)
            reply = stream.result(timeout=60)
        assert (reply.accepted, list(reply.errors)) == (2, [])
        assert proc.wait(timeout=60) == 0


@pytest.mark.postgres
def test_workers_drain_and_exit_when_their_parent_is_killed(
    postgres_url: str, tmp_path: Path
) -> None:
    """A parent that dies without forwarding a stop (SIGKILL here; a crash, or a SIGTERM before
    its handlers were in place, alike) leaves no worker serving: each drains and exits."""
    log = tmp_path / "workers.log"
    with _two_workers(postgres_url, log, _env()) as proc:
        (started,) = _wait(log, "workers_started", 1, proc)
        _wait(log, "serving", 2, proc)
        proc.kill()
        proc.wait()
        asyncio.run(wait_until(lambda: all(map(_gone, started["pids"])), "the workers to exit", 60))
    assert len(_events(log, "stopped")) == 2  # drained: decisions flushed, snapshots written


def _free_after_another() -> int:
    """A loopback port P free now, with P - 1 free as well."""
    for _ in range(100):
        with socket.socket() as sock, socket.socket() as before:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            try:
                before.bind(("127.0.0.1", port - 1))
            except OSError:
                continue
            return port
    raise AssertionError("no two free ports in a row")


@pytest.mark.postgres
@pytest.mark.parametrize("shared", ["gRPC", "health"])
def test_a_workers_metrics_port_cannot_be_a_port_of_the_group(
    postgres_url: str, tmp_path: Path, shared: str
) -> None:
    """Worker 1 serves metrics on the metrics port + 1: when that is the group's gRPC or health
    port, the group is refused before any worker starts."""
    port, log = _free_after_another(), tmp_path / "workers.log"
    env = _env(BANDITD_METRICS_LISTEN=f"127.0.0.1:{port - 1}")
    if shared == "health":
        env["BANDITD_HEALTH_LISTEN"] = f"127.0.0.1:{port}"
    listen = f"127.0.0.1:{port}" if shared == "gRPC" else "127.0.0.1:0"
    with _two_workers(postgres_url, log, env, listen) as proc:
        assert proc.wait(timeout=60) == 1
    output = log.read_text()
    assert f"metrics port {port} (127.0.0.1:{port})" in output
    assert "workers_started" not in output


@pytest.mark.postgres
@pytest.mark.parametrize("dies", [0, 1])
def test_any_worker_that_dies_stops_the_group(postgres_url: str, tmp_path: Path, dies: int) -> None:
    """A worker that dies ends the group, whichever it is (docs/operations.md): the others drain,
    and the parent exits with the dead worker's status (killed by SIGKILL: 128 + 9)."""
    log = tmp_path / "workers.log"
    with _two_workers(postgres_url, log, _env()) as proc:
        (started,) = _wait(log, "workers_started", 1, proc)
        _wait(log, "serving", 2, proc)
        os.kill(started["pids"][dies], signal.SIGKILL)
        assert proc.wait(timeout=60) == 128 + signal.SIGKILL
    assert len(_events(log, "stopped")) == 1  # the other drained


@pytest.mark.postgres
def test_a_stop_while_the_workers_start_exits_cleanly(postgres_url: str, tmp_path: Path) -> None:
    """SIGTERM as soon as the workers are started (each still importing, none bound): the
    parent forwards it, each worker stops where it is (a signal that came before its handlers
    waits for them), and the group exits 0 as after a drain (docs/operations.md)."""
    log = tmp_path / "workers.log"
    with _two_workers(postgres_url, log, _env()) as proc:
        (started,) = _wait(log, "workers_started", 1, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
        asyncio.run(wait_until(lambda: all(map(_gone, started["pids"])), "the workers to exit", 60))
    assert "Traceback" not in log.read_text()
    assert len(_events(log, "stopped_while_starting")) == 2
    assert _events(log, "serving") == []


@pytest.mark.postgres
def test_a_stop_while_the_group_migrates_ends_it_once_migrated(
    postgres_url: str, tmp_path: Path
) -> None:
    """SIGTERM while the parent migrates (held here on the migrations' advisory lock): the
    migration runs to its end, no worker starts, and the parent exits 0."""
    log = tmp_path / "workers.log"

    async def stop_while_migrating(proc: subprocess.Popen[bytes]) -> str:
        engine = create_async_engine(postgres_url)
        try:
            async with engine.connect() as holder, engine.connect() as watcher:
                await holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK})
                waiting = text(  # it asks for its turn (migrations/env.py), and is refused
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name = 'banditd migrate: waiting for its turn'"
                )

                async def migrating() -> bool:
                    assert proc.poll() is None, log.read_text()[-3000:]
                    count = (await watcher.execute(waiting)).scalar_one()
                    await watcher.rollback()  # pg_stat_activity: read afresh in each transaction
                    return bool(count)

                await wait_until(migrating, "the parent to wait for the lock", 90)
                proc.send_signal(signal.SIGTERM)
                await holder.rollback()  # let the migration go on
            assert await asyncio.to_thread(proc.wait, 120) == 0, log.read_text()[-3000:]
            async with engine.connect() as conn:
                version = text("SELECT version_num FROM alembic_version")
                return str((await conn.execute(version)).scalar_one())
        finally:
            await engine.dispose()

    with _two_workers(postgres_url, log, _env()) as proc:
        version = asyncio.run(stop_while_migrating(proc))
    config = alembic_config(postgres_url, Settings().migrations_dir)
    assert version == ScriptDirectory.from_config(config).get_current_head()
    assert len(_events(log, "stopped_while_starting")) == 1
    assert _events(log, "workers_started") == []
    assert "Traceback" not in log.read_text()
