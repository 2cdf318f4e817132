"""Progress bars on long CLI work: drawn on a terminal's stderr only, never with --quiet or into
a pipe, and never on stdout (the --json object is the same either way). Real processes, their
stderr on a pseudo-terminal (pty) or a pipe."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from banditd.commands.cli import main
from banditd.v1 import banditd_pb2 as pb
from tests.evaluation.test_replay import synthetic, write_outcomes
from tests.evaluation.test_warm_start import write_outcomes as write_topic_outcomes
from tests.helpers import StartServer, router_config

BANDITD = [sys.executable, "-m", "banditd.commands.cli"]
BAR = "\u2501"  # the heavy horizontal line rich draws bars with
# A known terminal whatever runs the tests; pipes stay pipes even with colour forced.
ENV = {**os.environ, "TERM": "xterm-256color", "FORCE_COLOR": "1"}


def run(argv: list[str], out: Path, *, terminal: bool) -> tuple[str, str]:
    """Run `banditd ARGV` with stdout to a file and stderr to a pty (terminal) or a pipe;
    (stdout, stderr). Any exit status but 0 fails."""
    if not terminal:
        with out.open("w") as stdout:
            done = subprocess.run(
                [*BANDITD, *argv], stdout=stdout, stderr=subprocess.PIPE, timeout=180, env=ENV
            )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return out.read_text(), done.stderr.decode(errors="replace")
    parent, child = pty.openpty()
    with out.open("w") as stdout:
        proc = subprocess.Popen(
            [*BANDITD, *argv], stdout=stdout, stderr=child, stdin=subprocess.DEVNULL, env=ENV
        )
    os.close(child)
    drawn = bytearray()
    try:
        while chunk := os.read(parent, 65536):
            drawn += chunk
    except OSError:  # EIO: every process holding the terminal has closed it
        pass
    finally:
        os.close(parent)
    assert proc.wait(timeout=180) == 0, drawn.decode(errors="replace")
    return out.read_text(), drawn.decode(errors="replace")


def _report(stdout: str) -> dict[str, Any]:
    """The one JSON object on stdout, less what measures time."""
    assert stdout.count("\n") == 1, stdout
    report: dict[str, Any] = json.loads(stdout)
    report.pop("wall_s")
    report["context"].pop("encode_s")
    return report


def test_replay_draws_on_a_terminal_only(tmp_path: Path) -> None:
    data = write_outcomes(tmp_path / "outcomes.jsonl", synthetic(300))
    argv = ["replay", "--data", str(data), "--repeats", "2", "--sweep", "0,1", "--json"]
    reports, drawn = [], {}
    for mode, extra, terminal in [
        ("terminal", [], True),
        ("pipe", [], False),
        ("terminal, --quiet", ["--quiet"], True),
    ]:
        stdout, drawn[mode] = run([*argv, *extra], tmp_path / "out.json", terminal=terminal)
        reports.append(_report(stdout))
    assert BAR in drawn["terminal"]
    assert "replay runs" in drawn["terminal"] and "4/4" in drawn["terminal"]
    assert "linucb cost weight 1 seed 1" in drawn["terminal"]
    assert drawn["pipe"] == drawn["terminal, --quiet"] == ""
    assert reports[0] == reports[1] == reports[2]


def test_evaluate_replay_proof_draws_on_a_terminal(tmp_path: Path) -> None:
    data = write_outcomes(tmp_path / "outcomes.jsonl", synthetic(200))
    argv = ["evaluate", "--replay-proof", str(data), "--seeds", "2", "--bootstrap", "20", "--json"]
    stdout, drawn = run(argv, tmp_path / "out.json", terminal=True)
    assert BAR in drawn and "OPE proof: candidates x logs" in drawn
    assert json.loads(stdout)["seeds"] == [0, 1]


async def test_warm_start_and_ingest_draw_on_a_terminal(
    sqlite_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(embedding_dim=32)))
    outcomes = tmp_path / "outcomes.jsonl.gz"
    write_topic_outcomes(outcomes, 300)
    warm = ["warm-start", "--tenant", "acme", "--router", "chat", "--data", str(outcomes)]
    stdout, drawn = await asyncio.to_thread(
        run, [*warm, "--database-url", sqlite_url, "--json"], tmp_path / "w.json", terminal=True
    )
    # The bar counts the usable records (the file has one unusable record among 301).
    assert BAR in drawn and "warm-start records" in drawn and "300/300" in drawn
    assert json.loads(stdout)["records"] == 301

    feedback = tmp_path / "feedback.jsonl"
    lines = [{"tenant": "acme", "decision_id": f"unknown-{i}", "thumb": "up"} for i in range(50)]
    feedback.write_text("".join(json.dumps(line) + "\n" for line in lines))
    argv = ["ingest", str(feedback), "--target", server.address, "--chunk", "20", "--json"]
    stdout, drawn = await asyncio.to_thread(run, argv, tmp_path / "i.json", terminal=True)
    assert BAR in drawn and "ingest feedback.jsonl" in drawn and "50/50" in drawn
    assert json.loads(stdout)["lines"] == 50


@pytest.mark.parametrize("command", ["replay", "evaluate", "ingest", "warm-start"])
def test_every_long_command_takes_quiet(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--quiet" in capsys.readouterr().out
