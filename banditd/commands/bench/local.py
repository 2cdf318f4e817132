"""Local processes for the benchmarks and the load test: a throwaway Postgres and `banditd serve`.

Everything listens on 127.0.0.1 only and is stopped (its files removed) when the context exits.
Postgres refuses to run as root, so as root its commands run as the `postgres` user (runuser),
like tests/pg_ctl_as_postgres.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Required, TypedDict, Unpack

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from banditd.edge.tls import ClientSecurity

START_TIMEOUT_S = 120.0  # a first start compiles the Numba kernels
STOP_TIMEOUT_S = 20.0


def is_loopback(host: str) -> bool:
    """True when HOST (or HOST:PORT, [V6]:PORT) resolves only to loopback addresses."""
    name = host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def require_loopback(host: str, what: str) -> None:
    """Load is only ever sent to this machine: refuse any other target."""
    if not is_loopback(host):
        raise SystemExit(f"banditd bench: {what} {host!r} is not on this machine (loopback only)")


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    if not found:
        raise RuntimeError(
            "no PostgreSQL binaries: apt-get install -y postgresql-15, or pass --database-url"
        )
    return Path(found[0]).parent


def _run_as_postgres(cmd: list[str], check: bool = True) -> None:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    # cwd /: the postgres user may not be able to enter the caller's directory.
    done = subprocess.run(cmd, cwd="/", capture_output=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{Path(cmd[-1]).name} failed: {done.stderr.decode(errors='replace')}")


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Start an empty Postgres on a free 127.0.0.1 port; yields its SQLAlchemy asyncpg URL."""
    bin_dir = _postgres_bin()
    base = Path(tempfile.mkdtemp(prefix="banditd-bench-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    data, port = base / "data", free_port()
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        _run_as_postgres(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        )
        options = f"-h 127.0.0.1 -p {port} -k {base} -c max_connections=200"
        _run_as_postgres([*pg_ctl, "-l", str(base / "postgres.log"), "-o", options, "-w", "start"])
        try:
            yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
        finally:
            _run_as_postgres([*pg_ctl, "-m", "fast", "-w", "stop"], check=False)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class ServerProcess:
    """One `banditd serve` child process."""

    proc: subprocess.Popen[bytes]
    target: str  # 127.0.0.1:PORT
    metrics: str | None  # 127.0.0.1:PORT of /metrics, None when off
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_serving(self, timeout: float = START_TIMEOUT_S) -> None:
        """Block until the health service says SERVING; RuntimeError if the process dies."""
        deadline = time.monotonic() + timeout
        # Its reconnect backoff (not gRPC's, up to 120 s) lets the polls reach it once it is up.
        with ClientSecurity().channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"banditd serve exited with {self.proc.returncode}:\n{self.log_tail()}"
                    )
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"banditd serve not SERVING after {timeout:.0f} s")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ServeOptions(TypedDict, total=False):
    """How a `banditd serve` here runs: its signing key, a /metrics port or none (``metrics``,
    default True), its log level (default info), extra environment, its worker processes
    (default 1)."""

    signing_key: Required[str]
    metrics: bool
    log_level: str
    env: Mapping[str, str] | None
    workers: int


LOG_LEVELS = ("debug", "info", "warning", "error")


def add_log_level_argument(p: argparse.ArgumentParser, help_text: str) -> None:
    """``--server-log-level`` of a benchmark that starts its own server (default info)."""
    p.add_argument("--server-log-level", default="info", choices=LOG_LEVELS, help=help_text)


def spawn_server(
    database_url: str, log_dir: Path, **options: Unpack[ServeOptions]
) -> ServerProcess:
    """Start `banditd serve` (--workers N) on a free 127.0.0.1 port (not yet waited for)."""
    port = free_port()
    metrics_listen = f"127.0.0.1:{free_port()}" if options.get("metrics", True) else ""
    log_path = log_dir / f"banditd-{port}.log"
    workers = options.get("workers", 1)
    child_env = {
        **os.environ,
        "BANDITD_SIGNING_KEY": options["signing_key"],
        "BANDITD_METRICS_LISTEN": metrics_listen,
        **(options.get("env") or {}),
    }
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "banditd.commands.cli", "serve"),
                *("--listen", f"127.0.0.1:{port}", "--database-url", database_url),
                *("--log-level", options.get("log_level", "info")),
                *(("--workers", str(workers)) if workers > 1 else ()),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env,
        )
    return ServerProcess(proc, f"127.0.0.1:{port}", metrics_listen or None, log_path)


@contextlib.contextmanager
def servers(
    database_url: str, n: int, **options: Unpack[ServeOptions]
) -> Iterator[list[ServerProcess]]:
    """n `banditd serve` replicas (of ``workers`` processes each) on one database (migrated
    first), all SERVING; stopped on exit."""
    log_dir = Path(tempfile.mkdtemp(prefix="banditd-bench-logs-"))
    started: list[ServerProcess] = []
    try:
        # The first one migrates; the others start once the schema is there.
        first_env = {**(options.get("env") or {}), "BANDITD_MIGRATE_ON_START": "true"}
        started.append(spawn_server(database_url, log_dir, **(options | {"env": first_env})))
        started[0].wait_serving()
        for _ in range(n - 1):
            started.append(spawn_server(database_url, log_dir, **options))
        for server in started[1:]:
            server.wait_serving()
        yield started
    finally:
        for server in started:
            server.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
