"""The Helm chart's `config` values, which become the servers' BANDITD_* environment: banditd
ignores a BANDITD_* variable it does not read, so the values schema takes only the names banditd
reads, and a misspelt one fails the install instead of leaving the setting at its default. Rendered
as tests/project/test_deploy.py renders the chart (its fixtures: Helm from .venv/tools)."""

from __future__ import annotations

import json
import subprocess

from banditd.config import Settings
from tests.project import test_deploy as deploy

SCHEMA = deploy.CHART / "values.schema.json"
# Read from the environment outside Settings (banditd.context.encoders); the image sets it.
OTHER_VARIABLES = {"BANDITD_STATIC_ENCODER_DIR"}


def _template(*args: str) -> subprocess.CompletedProcess[str]:
    helm = deploy._find_helm() or deploy._missing("helm not found: run .ci/install-helm")
    return subprocess.run(
        [helm, "template", "x", str(deploy.CHART), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_misspelt_setting_is_refused() -> None:
    misspelt = _template("--set", "config.BANDITD_RATE_LIMIT_SELECT_PER_S=5")
    assert misspelt.returncode != 0
    assert "values don't meet the specifications of the schema" in misspelt.stderr
    assert "BANDITD_RATE_LIMIT_SELECT_PER_S" in misspelt.stderr
    # Any setting banditd reads (and no secret) is taken, those without a default here too.
    for setting in ("BANDITD_RATE_LIMIT_SELECTS_PER_S", "BANDITD_FEEDBACK_ATTEMPTS"):
        done = _template("--set", f"config.{setting}=5")
        assert done.returncode == 0, done.stderr
        assert f'{setting}: "5"' in done.stdout


def test_the_schema_names_every_variable_banditd_reads() -> None:
    names = json.loads(SCHEMA.read_text())["properties"]["config"]["propertyNames"]["enum"]
    settings = {f"BANDITD_{name.upper()}" for name in Settings.model_fields}
    assert set(names) == settings | OTHER_VARIABLES
