"""`banditd gateway` as a process (banditd.gateway.app.serve, through banditd.edge.lifecycle as
`banditd serve`): a stop while it starts, or once it serves, exits 0 with its log line and no
traceback (uvicorn's own signal handling left it to die of the SIGTERM: 143)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

GATEWAY = [sys.executable, "-m", "banditd.commands.cli", "gateway"]


def _start(listen: str) -> subprocess.Popen[str]:
    env = {**os.environ, "BANDITD_GATEWAY_TARGET": "127.0.0.1:9"}  # never called here
    return subprocess.Popen(
        [*GATEWAY, "--listen", listen],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )


def _events(proc: subprocess.Popen[str], first: str = "") -> tuple[list[str], str]:
    out, err = proc.communicate(timeout=60)
    return [json.loads(line)["event"] for line in [first, *out.splitlines()] if line], err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_stop_while_starting_exits_cleanly(signum: signal.Signals) -> None:
    proc = _start("127.0.0.1:0")
    assert proc.stdout is not None
    first = proc.stdout.readline()  # gateway_start: before its server is built and bound
    assert first.startswith("{"), first + proc.communicate(timeout=60)[1]
    proc.send_signal(signum)
    events, err = _events(proc, first)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert events == ["gateway_start", "stopped_while_starting"]


def test_a_stop_once_serving_drains_and_exits_0() -> None:
    with socket.socket() as probe:  # a free port, to ask /healthz on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = _start(f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        events, err = _events(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert events == ["gateway_start", "gateway_serving", "stopping"]


def test_it_logs_the_address_it_serves_on() -> None:
    proc = _start("127.0.0.1:0")
    stdout = proc.stdout
    assert stdout is not None

    def serving_line() -> dict[str, Any]:
        for line in iter(stdout.readline, ""):
            if (event := json.loads(line))["event"] == "gateway_serving":
                return event
        raise AssertionError("no gateway_serving line: " + proc.communicate()[1])

    try:
        with ThreadPoolExecutor(1) as pool:
            reading = pool.submit(serving_line)
            try:
                serving = reading.result(timeout=60)
            except TimeoutError:
                proc.kill()  # ends the read
                raise
        host, _, port = serving["listen"].rpartition(":")
        assert (host, serving["port"]) == ("127.0.0.1", int(port))
        assert int(port) > 0  # the port bound, not the 0 asked for
        assert httpx.get(f"http://{serving['listen']}/healthz").json() == {"status": "ok"}
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
