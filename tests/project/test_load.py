"""load/run.py: a few seconds of the locust mix against a real local server, per database; and
load/locustfile.py's refusal of any target but this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

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


# Run apart from pytest: importing locust monkey-patches the process for gevent.
REFUSAL = textwrap.dedent(
    """
    import json, sys
    import grpc
    from locust.env import Environment
    from locust.exception import StopUser
    from load import locustfile

    env = Environment(user_classes=[locustfile.RouterUser], host="127.0.0.1:50051")
    env.events.init.fire(environment=env, runner=None, web_ui=None)  # the start-up check passes
    opened = []
    real_channel = grpc.insecure_channel
    grpc.insecure_channel = lambda target, *a, **k: opened.append(target) or real_channel(target)
    out = {}
    for host in sys.argv[1:]:
        env.host = locustfile.RouterUser.host = host  # as the web UI and the runner set it
        user = locustfile.RouterUser(env)
        try:
            user.on_start()
            out[host] = "started"
        except StopUser:
            user.on_stop()
            out[host] = "refused"
    print(json.dumps({"users": out, "opened": opened}))
    """
)


def test_a_host_changed_after_start_up_is_refused_where_it_is_used() -> None:
    """Locust's web UI changes the host after the init event checked it: each user checks the
    host it is about to open a channel to, and refuses (no channel) all but loopback."""
    hosts = ["127.0.0.1", "127.0.0.1:50051", "localhost:50051", "[::1]:50051", "10.0.0.1:50051"]
    hosts += ["192.168.1.20", "example.com:443", ""]
    done = subprocess.run(
        [sys.executable, "-c", REFUSAL, *hosts],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    loopback = hosts[:4]
    assert result["users"] == {h: "started" if h in loopback else "refused" for h in hosts}
    assert result["opened"] == loopback
