"""The `banditd` command (banditd/__main__.py): a stop that reaches `serve` or `gateway` while
it still imports its modules (about a second, before banditd.edge.lifecycle has handlers) ends
the start-up as any later stop does: exit 0, ``stopped_while_starting``, no traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BANDITD = [sys.executable, "-m", "banditd"]
# Extension modules the command loads at points along its import, first to last: once one is
# mapped into the process, it is importing and no handler of banditd's is in place yet.
IMPORTING = ("grpc/_cython/cygrpc", "numpy/_core/_multiarray_umath", "pydantic_core/_pydantic_core")
COMMANDS = {
    "serve": ["serve", "--listen", "127.0.0.1:0", "--metrics-listen", ""],
    "gateway": ["gateway", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9"],
}


def _when_loaded(proc: subprocess.Popen[str], library: str) -> None:
    """Return once ``library`` is mapped into ``proc`` (or it has exited)."""
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 60  # a bound on failure only: a library never loaded
    while proc.poll() is None and library not in maps.read_text():
        assert time.monotonic() < deadline, f"{library} never loaded"
        time.sleep(0.001)


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_stop_while_it_imports_exits_cleanly(
    tmp_path: Path, command: str, signum: signal.Signals
) -> None:
    env = {**os.environ, "BANDITD_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/banditd.db"}
    for library in IMPORTING:
        proc = subprocess.Popen(
            [*BANDITD, *COMMANDS[command]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        try:
            _when_loaded(proc, library)
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, f"{library}: {proc.returncode} {err}"
        assert "Traceback" not in err, library
        assert "stopped_while_starting" in [json.loads(line)["event"] for line in out.splitlines()]
