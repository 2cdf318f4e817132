"""The README's quick start, `make run`: the real Makefile and .ci/install-helm, with the Python
installs stood in for (no network here) and the virtualenv in a temporary directory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.helpers import REPO


def _script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_make_run_serves_where_helm_cannot_be_installed(tmp_path: Path) -> None:
    """Helm is for the chart's tests only: a machine where .ci/install-helm cannot get it (a Mac,
    an arm64 Linux, no npm) must still get `make run`, as the README promises with Python 3.11."""
    venv_bin, fake = tmp_path / "venv" / "bin", tmp_path / "fake"
    venv_bin.mkdir(parents=True)
    fake.mkdir()
    _script(tmp_path / "python", 'mkdir -p "$3"')  # `$(PYTHON) -m venv $(VENV)`
    _script(venv_bin / "pip", "exit 0")
    calls = tmp_path / "banditd-calls"
    _script(venv_bin / "banditd", f'echo "$@" >> {calls}')
    # What a Mac answers: .ci/install-helm's npm package holds helm for linux x86-64 only.
    _script(fake / "uname", 'case "$1" in -s) echo Darwin;; *) echo arm64;; esac')
    done = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "run",
            f"PYTHON={tmp_path / 'python'}",
            f"VENV={tmp_path / 'venv'}",
            f"STAMP={tmp_path / 'venv' / '.installed'}",
        ],
        cwd=REPO,
        env={
            **os.environ,
            "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}",
            "BANDITD_TOOLS_DIR": str(tmp_path / "tools"),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert calls.read_text().splitlines() == ["serve --example-router"]
    assert "Helm" in done.stderr  # says what is missing and what it costs
