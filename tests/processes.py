"""Real `banditd serve` processes for tests: started on port 0, logs to a file, killed at will."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import SIGNING_KEY

BANDITD = [sys.executable, "-m", "banditd.cli"]


@dataclass
class ServerProcess:
    """One server process; its JSON log lines land in ``log_path``."""

    database_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServerProcess:
        env = {
            **os.environ,
            "BANDITD_DATABASE_URL": self.database_url,
            "BANDITD_LISTEN": "127.0.0.1:0",
            "BANDITD_SIGNING_KEY": SIGNING_KEY,
            "BANDITD_METRICS_LISTEN": "",
            **self.env,
        }
        seen = len(self.logs()) if self.log_path.exists() else 0
        with self.log_path.open("ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [*BANDITD, "serve"], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        serving = self.wait_for("serving", timeout=timeout, after=seen)
        self.port = int(serving["port"])
        return self

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def wait_for(self, event: str, timeout: float = 60.0, after: int = 0) -> dict[str, Any]:
        """The first log line (past the first ``after`` lines) whose event is ``event``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.logs()[after:] if line.get("event") == event]
            if found:
                return found[0]
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}) before {event!r}")
            time.sleep(0.05)
        raise AssertionError(f"no {event!r} log line within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: no drain, no final snapshot."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM and wait; the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def migrate(database_url: str) -> None:
    subprocess.run(
        [*BANDITD, "migrate", "--database-url", database_url],
        check=True,
        capture_output=True,
        timeout=120,
    )
