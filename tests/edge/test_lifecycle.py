"""`banditd serve` stopped while it starts: a real process, signalled at its first log line
(before any port is bound), exits 0 with one log line, no traceback and a whole schema."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from banditd.config import Settings
from banditd.store.engine import alembic_config

BANDITD = [sys.executable, "-m", "banditd.commands.cli", "serve", "--listen", "127.0.0.1:0"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_stop_while_starting_exits_cleanly(tmp_path: Path, signum: signal.Signals) -> None:
    database = tmp_path / "banditd.db"
    env = {
        **os.environ,
        "BANDITD_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "BANDITD_METRICS_LISTEN": "",
        "BANDITD_MIGRATE_ON_START": "true",
    }
    proc = subprocess.Popen(
        BANDITD, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # faiss_device: before the migrations, routers and warm-up
    assert first.startswith("{"), first + proc.communicate(timeout=60)[1]
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    events = [json.loads(line)["event"] for line in [first, *out.splitlines()]]
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "stopped_while_starting" in events
    assert "serving" not in events
    # The migration under way when the signal came ran to its end: the schema is whole.
    with sqlite3.connect(database) as db:
        (head,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    config = alembic_config(env["BANDITD_DATABASE_URL"], Settings().migrations_dir)
    assert head == ScriptDirectory.from_config(config).get_current_head()
