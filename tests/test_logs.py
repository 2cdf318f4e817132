"""The log line: one JSON object, the event's keys in order, standard JSON only."""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import structlog

from banditd import logs


class _Custom:
    def __structlog__(self) -> str:
        return "custom"


@pytest.mark.parametrize(
    "event",
    [
        {"event": "decision", "arm": "a", "p": 0.1, "ok": False, "m": {}, "c": None, "n": 7},
        {"event": "e", "m": {"tier": "gold", "é": "ü\n"}, "v": [1, 2.5, "x"], "t": (1, 2)},
        {"event": "e", "when": datetime.date(2026, 12, 7), "obj": _Custom(), "f": np.float64(3)},
        {"event": "e", "cost": math.inf, "nested": {"v": [math.nan, 1e300]}},
    ],
)
def test_lines_are_what_structlogs_json_renderer_writes(event: dict[str, object]) -> None:
    """The renderer against structlog's JSONRenderer over json.dumps(allow_nan=False)."""
    standard = logs._standard_numbers(None, "info", dict(event))
    reference = structlog.processors.JSONRenderer(functools.partial(json.dumps, allow_nan=False))
    assert logs._render(None, "info", dict(standard)) == reference(None, "info", dict(standard))


def test_a_decision_line_keeps_its_keys_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure_logging("info")
    try:
        structlog.get_logger("t").info(
            "decision", tenant="t", arm="a", challenger=None, propensity=1.0, metadata={"k": "v"}
        )
        line = capsys.readouterr().out
    finally:
        structlog.reset_defaults()
    parsed = json.loads(line)
    assert list(parsed) == [
        "tenant", "arm", "challenger", "propensity", "metadata", "event", "level", "timestamp"
    ]  # fmt: skip
    assert line == json.dumps(parsed) + "\n"
    assert parsed["timestamp"].endswith("Z") and parsed["level"] == "info"
    with pytest.raises(ValueError):  # a non-finite float that escaped _standard_numbers
        logs._render(None, "info", {"event": "e", "v": math.nan})


LINES_EACH = 3000
_LOGGING_PROCESS = f"""
import structlog
from banditd.logs import configure_logging
configure_logging("info", cache=True)
log = structlog.get_logger("worker")
for i in range({LINES_EACH}):
    log.info("decision", worker=__import__("sys").argv[1], i=i, metadata={{"task": "x" * 40}})
"""


def test_processes_sharing_stdout_never_split_a_line(tmp_path: Path) -> None:
    """As the workers of ``serve --workers 2`` do, unbuffered (the image sets PYTHONUNBUFFERED):
    every line is whole, and none is lost."""
    log = tmp_path / "shared.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        procs = [
            subprocess.Popen([sys.executable, "-c", _LOGGING_PROCESS, name], stdout=out, env=env)
            for name in ("a", "b")
        ]
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
    lines = log.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # a split line does not parse
    for name in ("a", "b"):
        assert [e["i"] for e in events if e["worker"] == name] == list(range(LINES_EACH))
