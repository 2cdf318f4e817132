"""load/run.py: a few seconds of the locust mix against a real local server, per database."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


def run_load(*args: str) -> dict[str, object]:
    env = {
        **os.environ,
        # Short delays and think times, so a few seconds hold every call type.
        "BANDITD_LOAD_FEEDBACK_DELAY": "0.05,0.3",
        "BANDITD_LOAD_FEEDBACK_SHARE": "0.5",
        "BANDITD_LOAD_WAIT": "0.01,0.05",
    }
    done = subprocess.run(
        [sys.executable, "-m", "load.run", "--duration", "3", "--users", "4", "--json", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, object] = json.loads(done.stdout)
    return report


def check_figures(summary: dict[str, object]) -> None:
    calls = summary["calls"]
    assert isinstance(calls, dict)
    assert set(calls) == {"Select text", "Select embedding", "Feedback thumb", "all"}
    for name, figures in calls.items():
        assert figures["requests"] > 0, name
        assert figures["failures"] == 0, name
        assert figures["rps"] > 0, name
        assert 0 < figures["p50"] <= figures["p95"] <= figures["p99"], name
    total = sum(calls[n]["requests"] for n in calls if n != "all")
    assert calls["all"]["requests"] == total


def test_sqlite() -> None:
    report = run_load("--database", "sqlite")
    assert set(report) == {"sqlite"}
    check_figures(report["sqlite"])  # type: ignore[arg-type]


@pytest.mark.postgres
def test_postgres(postgres_url: str) -> None:
    report = run_load("--database", "postgres", "--postgres-url", postgres_url)
    assert set(report) == {"postgres"}
    check_figures(report["postgres"])  # type: ignore[arg-type]
