"""`banditd warm-start`'s command line: files it cannot read are one line on stderr."""

from __future__ import annotations

from pathlib import Path

import pytest

from banditd.commands import cli
from tests.evaluation.test_replay import synthetic, write_outcomes


def test_a_router_config_that_is_not_utf8_is_a_clear_error(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--router-config of a file that is not UTF-8 text was a traceback (UnicodeDecodeError)."""
    data = write_outcomes(tmp_path / "warm.jsonl", synthetic(3))
    config = tmp_path / "router.json"
    config.write_bytes(b"\xff\xfe{}")  # UTF-16, as some editors save JSON
    argv = ["warm-start", "--tenant", "acme", "--router", "chat", "--data", str(data)]
    argv += ["--router-config", str(config), "--database-url", sqlite_url, "--quiet"]
    assert cli.main(argv) == 1
    assert capsys.readouterr().err == (
        f"banditd: router_config: {config}: not UTF-8 text (a RouterConfig JSON file)\n"
    )
