"""`banditd serve --workers N`: N server processes sharing one port, one core each.

One Python process tops out near the grpc.aio transport's floor, so a machine's cores are used
the way replicas are (DESIGN): each worker is a full `banditd serve` on the same database, and
the workers bind with SO_REUSEPORT (BANDITD_REUSE_PORT), so the kernel spreads connections over
them. This parent refuses a port another process serves and holds it for the group while it runs
(banditd.edge.ports: why a probe and a held socket), migrates once (when configured to), starts the
workers with the same settings (the listen port made concrete, a metrics port each), forwards
SIGTERM/SIGINT to them so each drains, and exits with the worst of their exit codes. A worker
that dies ends the group: a supervisor above this one (Kubernetes, systemd) restarts it whole.

A worker drains on one signal and a second one cuts its drain short, so each must get exactly
one per stop. The workers run in sessions of their own: Ctrl-C, which a terminal sends to its
whole foreground process group, reaches only this parent, which forwards it once (a worker that
ignored a repeated signal instead could not tell the group's copy from an operator's second
Ctrl-C). The handlers are in place before the first worker starts, so no signal is missed, and
a parent that dies anyway (SIGKILL, a crash) leaves no workers serving: each holds the read end
of a pipe whose only write end is here (`serve --parent-fd`), and drains at its EOF.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import structlog

from banditd.config import Settings
from banditd.edge import ports
from banditd.edge.lifecycle import SIGNALS
from banditd.errors import FailedPrecondition
from banditd.store import migrate

log = structlog.get_logger(__name__)

POLL_S = 0.2


def _concrete(listen: str) -> str:
    """HOST:PORT with port 0 replaced by a port free now (every worker must bind the same one)."""
    host, _, port = listen.rpartition(":")
    if int(port) != 0:
        return listen
    with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as sock:
        sock.bind((host.strip("[]"), 0))
        return f"{host}:{sock.getsockname()[1]}"


def _metrics_of(listen: str, index: int) -> str:
    """Worker index's metrics address: the configured port + index (empty or port 0: as is)."""
    if not listen:
        return ""
    host, _, port = listen.rpartition(":")
    return listen if int(port) == 0 else f"{host}:{int(port) + index}"


def run_workers(settings: Settings, workers: int, example_router: bool) -> int:
    if settings.is_sqlite:
        raise FailedPrecondition(
            "--workers needs Postgres: workers are replicas of one database, and SQLite is one "
            "process's embedded store"
        )
    listen = _concrete(settings.listen)
    with (
        ports.reserved(listen, *ports.GRPC),
        ports.reserved(settings.health_listen, *ports.HEALTH),
    ):
        # Each worker's own port: refused here, before any starts, and while the group's shared
        # ports are held, so that neither of those passes for free.
        for index in range(workers):
            ports.check_free(_metrics_of(settings.metrics_listen, index), *ports.METRICS)
        signalled: list[int] = []  # recorded here, forwarded by _supervise: none lost or doubled
        for signum in SIGNALS:  # before migrating: a stop then ends the group once it is done
            signal.signal(signum, lambda received, _frame: signalled.append(received))
        # The `banditd` command blocks them while it imports (banditd/__main__.py): one held
        # since then is recorded now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        if settings.should_migrate:
            asyncio.run(migrate(settings.database_url, settings.migrations_dir))
        if signalled:
            log.info("stopped_while_starting")
            return 0
        return _run(settings, listen, workers, example_router, signalled)


def _run(
    settings: Settings, listen: str, workers: int, example_router: bool, signalled: list[int]
) -> int:
    lifeline, held = os.pipe()  # a worker reads EOF from `lifeline` once this process is gone
    try:
        children: list[subprocess.Popen[bytes]] = []
        for index in range(workers):
            if signalled:  # stopped while starting them: start no more
                break
            children.append(_start(settings, listen, index, example_router, lifeline))
        os.close(lifeline)
        log.info("workers_started", listen=listen, pids=[c.pid for c in children])
        codes = _supervise(children, signalled)
    finally:
        os.close(held)
    log.info("workers_stopped", exit_codes=codes)
    worst = max(codes, key=abs, default=0)
    return worst if worst >= 0 else 128 - worst  # killed by signal N: 128 + N, as a shell says


def _start(
    settings: Settings, listen: str, index: int, example_router: bool, lifeline: int
) -> subprocess.Popen[bytes]:
    """Worker ``index``: a `banditd serve` in a session of its own (a terminal's signals reach
    the parent alone, which forwards each once) that drains when ``lifeline`` reads EOF."""
    env = {
        **os.environ,
        "BANDITD_LISTEN": listen,
        "BANDITD_REUSE_PORT": "true",
        "BANDITD_DATABASE_URL": settings.database_url,
        "BANDITD_LOG_LEVEL": settings.log_level,
        "BANDITD_METRICS_LISTEN": _metrics_of(settings.metrics_listen, index),
        "BANDITD_MIGRATE_ON_START": "false",
    }
    command = [sys.executable, "-m", "banditd.commands.cli", "serve", "--parent-fd", str(lifeline)]
    if example_router and index == 0:
        command.append("--example-router")
    # Blocked, the signals this process forwards wait in the worker (the mask is inherited)
    # until its handlers are in place and it unblocks them (banditd.edge.lifecycle), rather than
    # kill it while it imports; meanwhile they wait here too, for this process's handlers.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        return subprocess.Popen(command, env=env, pass_fds=(lifeline,), start_new_session=True)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def _supervise(children: list[subprocess.Popen[bytes]], signalled: list[int]) -> list[int]:
    """Forward each signal this process gets once to every worker still running, until all
    have exited; their exit codes. A worker that exits unasked stops the others (one SIGTERM
    each: a second signal would cut their drain short). Forwarding from this loop rather than
    the signal handler also reaches a worker whose start the signal interrupted."""
    forwarded = 0
    while running := [child for child in children if child.poll() is None]:  # polls each one
        if not signalled and len(running) < len(children):
            signalled.append(signal.SIGTERM)
        for signum in signalled[forwarded:]:
            for child in running:
                if child.poll() is None:
                    child.send_signal(signum)
            forwarded += 1
        time.sleep(POLL_S)
    return [child.wait() for child in children]
