"""How an upgrade replaces the server pods (values ``updateStrategy``): rolling by default,
stop-all (Recreate) for an upgrade that changes encoder weights (docs/how-it-works.md); and the
gateway's pods (``gateway.updateStrategy``), the same way. Rendered
with the same Helm and schemas as tests/project/test_deploy.py; missing tools skip here and fail
under CI=true, as there."""

from __future__ import annotations

import subprocess

import pytest

from tests.project.test_deploy import (
    CHART,
    KUBE_VERSIONS,
    VALUE_SETS,
    Doc,
    _find_helm,
    _missing,
    _module,
    _one,
)


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    helm = _find_helm()
    if helm is None:
        _missing("helm not found: run .ci/install-helm (or set BANDITD_HELM to a Helm 3 binary)")
    return subprocess.run(
        [helm, *args, "banditd", str(CHART), "--namespace", "bandit"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _strategy(*values: str, name: str = "banditd") -> Doc:
    yaml = _module("yaml", "PyYAML")
    done = _helm("template", *values)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    deployment = _one(docs, "Deployment", name)
    kubernetes_validate = _module("kubernetes_validate", "kubernetes-validate")
    for kube in KUBE_VERSIONS:
        kubernetes_validate.validate(deployment, kube, strict=True)
    strategy: Doc = deployment["spec"]["strategy"]
    return strategy


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_pods_roll_one_by_one_by_default(value_set: str) -> None:
    assert _strategy(*VALUE_SETS[value_set]) == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }


def test_recreate_stops_every_pod_before_any_new_one_starts() -> None:
    assert _strategy("--set", "updateStrategy=Recreate") == {"type": "Recreate"}


def test_an_unknown_strategy_is_refused() -> None:
    done = _helm("template", "--set", "updateStrategy=BlueGreen")
    assert done.returncode != 0 and "updateStrategy" in done.stderr


GATEWAY = ("--set", "gateway.enabled=true")


def test_gateway_pods_roll_one_by_one_by_default() -> None:
    assert _strategy(*GATEWAY, name="banditd-gateway") == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }


def test_gateway_recreate_is_its_own_setting() -> None:
    values = (*GATEWAY, "--set", "gateway.updateStrategy=Recreate")
    assert _strategy(*values, name="banditd-gateway") == {"type": "Recreate"}
    assert _strategy(*values)["type"] == "RollingUpdate"  # the servers' is unchanged


def test_an_unknown_gateway_strategy_is_refused() -> None:
    done = _helm("template", *GATEWAY, "--set", "gateway.updateStrategy=BlueGreen")
    assert done.returncode != 0 and "updateStrategy" in done.stderr
