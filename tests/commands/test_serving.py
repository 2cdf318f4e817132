"""Safe serving, as a user meets it: a port that is already served is refused with one line that
names it, `banditd --version`, and the SQLite file a server uses, by its absolute path."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from banditd.commands.bench.local import free_port
from banditd.edge import ports
from tests.helpers import wait_until

BANDITD = [sys.executable, "-m", "banditd.commands.cli"]
# Never contacted: the refusals come before any database work.
UNUSED_POSTGRES = "postgresql+asyncpg://nobody@127.0.0.1:9/none"


@dataclass
class Served:
    """A `banditd serve` process started from ``cwd`` on a relative SQLite URL."""

    port: int
    metrics_port: int
    cwd: Path
    events: list[dict[str, Any]]
    banner: str


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    cwd = tmp_path_factory.mktemp("served")
    port, metrics_port = free_port(), free_port()
    out, err = cwd / "stdout.log", cwd / "stderr.log"
    env = {**os.environ, "BANDITD_DATABASE_URL": "sqlite+aiosqlite:///relative.db"}
    command = [
        *(*BANDITD, "serve", "--example-router"),
        *("--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics_port}"),
    ]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(command, cwd=cwd, stdout=stdout, stderr=stderr, env=env)
    try:

        def banner() -> bool:  # printed once SERVING
            assert proc.poll() is None, err.read_text()[-3000:]
            return "banditd is serving" in err.read_text()

        asyncio.run(wait_until(banner, "the banner", 90))
        yield Served(port, metrics_port, cwd, _json_lines(out), err.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _refused(argv: list[str], cwd: Path) -> str:
    """Run a `banditd` command that must be refused at once; its whole stderr."""
    env = {**os.environ, "BANDITD_METRICS_LISTEN": ""}
    done = subprocess.run(
        [*BANDITD, *argv], cwd=cwd, capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert '"event": "serving"' not in done.stdout
    return done.stderr


# (command line with {port} / {metrics}: the served process's ports, what the line must say)
CLASHES = [
    (["serve", "--listen", "127.0.0.1:{port}"], "gRPC port {port}", "--listen"),
    (["serve", "--listen", "localhost:{port}"], "gRPC port {port}", "--listen"),
    (
        [
            "serve",
            "--workers",
            "2",
            "--listen",
            "127.0.0.1:{port}",
            "--database-url",
            UNUSED_POSTGRES,
        ],
        "gRPC port {port}",
        "--listen",
    ),
    (
        ["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:{metrics}"],
        "metrics port {metrics}",
        "BANDITD_METRICS_LISTEN",
    ),
    (
        [
            *("serve", "--workers", "2", "--listen", "127.0.0.1:0"),
            *("--metrics-listen", "127.0.0.1:{metrics}", "--database-url", UNUSED_POSTGRES),
        ],
        "metrics port {metrics}",
        "BANDITD_METRICS_LISTEN",
    ),
]


@pytest.mark.parametrize(("argv", "names", "setting"), CLASHES)
def test_a_port_already_served_is_refused_in_one_line(
    served: Served, tmp_path: Path, argv: list[str], names: str, setting: str
) -> None:
    fill = {"port": served.port, "metrics": served.metrics_port}
    stderr = _refused([a.format(**fill) for a in argv], tmp_path)
    assert stderr.count("\n") == 1, stderr  # one line, no traceback, no gRPC log
    assert names.format(**fill) in stderr
    assert setting in stderr


def test_a_workers_group_holds_its_port_against_others(tmp_path: Path) -> None:
    """What `serve --workers` holds (ports.reserved) refuses a lone server and another group,
    and lets the group's own SO_REUSEPORT listeners bind and listen."""
    listen = f"127.0.0.1:{free_port()}"
    port = int(listen.rpartition(":")[2])
    with ports.reserved(listen, *ports.GRPC):
        assert "gRPC port" in _refused(["serve", "--listen", listen], tmp_path)
        workers = ["serve", "--workers", "2", "--listen", listen, "--database-url", UNUSED_POSTGRES]
        assert "gRPC port" in _refused(workers, tmp_path)
        with socket.socket() as worker:
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
            worker.listen()
    ports.check_free(listen, *ports.GRPC)  # let go with the group


def test_version() -> None:
    done = subprocess.run(
        [*BANDITD, "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout == f"banditd {importlib.metadata.version('banditd')}\n"


def test_serve_logs_and_prints_the_absolute_sqlite_path(served: Served) -> None:
    path = served.cwd / "relative.db"
    (logged,) = [e for e in served.events if e["event"] == "sqlite_database"]
    assert logged["path"] == str(path)
    assert logged["exists"] is False  # a new database: the log says so
    assert path.exists()
    assert f"(SQLite {path})" in served.banner
