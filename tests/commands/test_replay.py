"""`banditd replay`'s command line: flags that only mean something together."""

from __future__ import annotations

from pathlib import Path

import pytest

from banditd.commands import cli
from tests.evaluation.test_replay import synthetic, write_outcomes


@pytest.mark.parametrize("print_router", [False, True])
def test_keep_routers_without_a_server_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], print_router: bool
) -> None:
    """--keep-routers replays a server's routers: without --server it was ignored, and the
    in-process replay (from a cold router) was reported as if it were the server's."""
    data = write_outcomes(tmp_path / "d.jsonl", synthetic(10))
    argv = ["replay", "--data", str(data), "--keep-routers", "--quiet"]
    assert cli.main(argv + ["--print-router"] * print_router) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "banditd replay: keep_routers: --keep-routers needs --server (it replays the routers "
        "a server has)\n"
    )
