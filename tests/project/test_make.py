"""The README's quick start, `make run`: the real Makefile and .ci/install-helm, with the Python
installs stood in for (no network here; the stand-in pip records its arguments) and the
virtualenv in a temporary directory."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.helpers import REPO


def _script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _on_a_mac(tmp_path: Path) -> Path:
    """A PATH entry whose uname answers as a Mac does: .ci/install-helm's npm package holds helm
    for linux x86-64 only, so it gives up at once (no npm, no network)."""
    fake = tmp_path / "fake"
    fake.mkdir()
    _script(fake / "uname", 'case "$1" in -s) echo Darwin;; *) echo arm64;; esac')
    return fake


def _make_run(
    tmp_path: Path, fake: Path, *options: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`make run` on a machine without .venv; returns make's result and the log of pip calls."""
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    _script(tmp_path / "python", 'mkdir -p "$3"')  # `$(PYTHON) -m venv $(VENV)`
    pip_calls, banditd_calls = tmp_path / "pip-calls", tmp_path / "banditd-calls"
    _script(venv_bin / "pip", f'echo "$@" >> {pip_calls}')
    _script(venv_bin / "banditd", f'echo "$@" >> {banditd_calls}')
    done = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "run",
            f"PYTHON={tmp_path / 'python'}",
            f"VENV={tmp_path / 'venv'}",
            f"STAMP={tmp_path / 'venv' / '.installed'}",
            *options,
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
    assert banditd_calls.read_text().splitlines() == ["serve --example-router"]
    return done, pip_calls


def test_make_run_serves_where_helm_cannot_be_installed(tmp_path: Path) -> None:
    """Helm is for the chart's tests only: a machine where .ci/install-helm cannot get it (a Mac,
    an arm64 Linux, no npm) must still get `make run`, as the README promises with Python 3.11."""
    done, _ = _make_run(tmp_path, _on_a_mac(tmp_path))
    assert "Helm" in done.stderr  # says what is missing and what it costs


def test_make_installs_the_lock_from_the_index_it_is_told(tmp_path: Path) -> None:
    """The lock pins torch's CPU build (2.13.0+cpu): PyPI takes no local versions, only
    PyTorch's CPU index (deploy/Dockerfile's) or a mirror serves it. By default pip's own
    indexes (a mirror here); TORCH_INDEX adds the one the Dockerfile installs the lock with."""
    local_pins = re.findall(
        r"^([\w.-]+)==\S+\+cpu$", (REPO / "requirements.lock").read_text(), re.M
    )
    assert local_pins == ["torch"]
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    torch_index = re.search(r"^ARG TORCH_INDEX=(\S+)$", dockerfile, re.M)
    assert torch_index is not None
    for options, wanted in (
        ((), []),
        ((f"TORCH_INDEX={torch_index.group(1)}",), [torch_index.group(1)]),
    ):
        run_dir = tmp_path / str(len(options))
        run_dir.mkdir()
        _, pip_calls = _make_run(run_dir, _on_a_mac(run_dir), *options)
        calls = [c.split() for c in pip_calls.read_text().splitlines()]
        (lock_install,) = [c for c in calls if "-r" in c]
        assert lock_install[lock_install.index("-r") + 1] == "requirements.lock"
        indexes = [
            lock_install[i + 1] for i, a in enumerate(lock_install) if a == "--extra-index-url"
        ]
        assert indexes == wanted, lock_install
