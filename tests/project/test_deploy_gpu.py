"""The GPU variant of the deployment (issue 23): the chart's ``gpu`` values and the image's
``VARIANT=gpu`` build argument. Rendered with the same Helm and schemas as
tests/project/test_deploy.py; missing tools skip here and fail under CI=true, as there."""

from __future__ import annotations

import subprocess
import tomllib
from typing import Any

import pytest

from banditd.config import Settings
from tests.project.test_deploy import (
    CHART,
    KUBE_VERSIONS,
    REPO,
    VALUE_SETS,
    Doc,
    _env,
    _find_helm,
    _instructions,
    _missing,
    _one,
)

GPU = ["--set", "gpu.enabled=true"]


def _render(*args: str) -> list[Doc]:
    helm = _find_helm()
    if helm is None:
        _missing("helm not found: run .ci/install-helm (or set BANDITD_HELM to a Helm 3 binary)")
    yaml = pytest.importorskip("yaml")
    done = subprocess.run(
        [helm, "template", "banditd", str(CHART), "--namespace", "bandit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _server(docs: list[Doc]) -> tuple[Doc, Doc]:
    pod = _one(docs, "Deployment", "banditd")["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    return pod, server


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_gpu_values_request_a_gpu_on_gpu_nodes(value_set: str) -> None:
    docs = _render(*VALUE_SETS[value_set], *GPU)
    pod, server = _server(docs)
    for part in ("requests", "limits"):
        assert server["resources"][part]["nvidia.com/gpu"] == 1, part
    assert server["resources"]["requests"]["cpu"]  # the CPU and memory requests stay
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    # No GPU on the node: the server refuses to start instead of serving from the CPU.
    assert _env(server)["BANDITD_DEVICE"]["value"] == "gpu"
    assert Settings(device=_env(server)["BANDITD_DEVICE"]["value"]).device == "gpu"
    # The GPU image for the server and its init container (same image: same Numba cache).
    images = {c["image"] for c in [server, *pod["initContainers"]]}
    assert len(images) == 1 and images.pop().endswith("banditd:0.1.0-gpu")
    # The Jobs stay on the CPU image and nodes.
    for job in (d for d in docs if d["kind"] == "Job"):
        job_pod = job["spec"]["template"]["spec"]
        assert "nodeSelector" not in job_pod and "tolerations" not in job_pod
        assert all(not c["image"].endswith("-gpu") for c in job_pod["containers"])
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for kube in KUBE_VERSIONS:
        kubernetes_validate.validate(_one(docs, "Deployment", "banditd"), kube, strict=True)


def test_gpu_values_merge_with_the_pod_placement() -> None:
    docs = _render(
        *GPU,
        *("--set", "gpu.count=2", "--set", "gpu.imageTag=cuda-build"),
        *("--set", "nodeSelector.zone=a", "--set", "tolerations[0].key=spot"),
        *("--set", "tolerations[0].operator=Exists"),
    )
    pod, server = _server(docs)
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true", "zone": "a"}
    assert [t["key"] for t in pod["tolerations"]] == ["spot", "nvidia.com/gpu"]
    assert server["image"] == "banditd:cuda-build"


def test_gpu_off_by_default() -> None:
    for value_set in VALUE_SETS.values():
        docs = _render(*value_set)
        pod, server = _server(docs)
        assert "nvidia" not in str(docs)
        assert "BANDITD_DEVICE" not in _env(server)
        assert "nodeSelector" not in pod and "tolerations" not in pod


def test_gpu_values_are_checked_by_the_schema() -> None:
    helm = _find_helm()
    if helm is None:
        _missing("helm not found: run .ci/install-helm (or set BANDITD_HELM to a Helm 3 binary)")
    for value_set in VALUE_SETS.values():
        for kube in KUBE_VERSIONS:
            lint = [helm, "lint", "--strict", "--kube-version", kube, str(CHART), *value_set, *GPU]
            ok = subprocess.run(lint, capture_output=True, text=True, timeout=60, check=False)
            assert ok.returncode == 0, ok.stdout + ok.stderr
    done = subprocess.run(
        [helm, "lint", "--strict", str(CHART), *GPU, "--set", "gpu.count=0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "gpu.count" in done.stdout + done.stderr


def test_dockerfile_gpu_variant_installs_the_gpu_extra() -> None:
    steps = _instructions()
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    assert args["VARIANT"] == "cpu"
    (install,) = [a for k, a in steps if k == "RUN" and "pip install" in a and "VARIANT" in a]
    gpu_branch, cpu_branch = install.split(" else ", 1)
    assert '"${VARIANT}" = gpu' in gpu_branch and '".[gpu]"' in gpu_branch
    # The lock pins the CPU builds (torch +cpu, faiss-cpu): the GPU build drops those two pins.
    assert "grep -vE '^(torch|faiss-cpu)==' requirements.lock" in gpu_branch
    assert "TORCH_INDEX" not in gpu_branch and "TORCH_INDEX" in cpu_branch
    extras: dict[str, list[str]] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {_name(req) for req in extras["gpu"]}
    assert "faiss-gpu-cu12" in names and "faiss-cpu" not in names
    # The gpu extra is the context extra with FAISS's GPU build: same torch pin, same packages.
    assert names - {"faiss-gpu-cu12"} == {_name(r) for r in extras["context"]} - {"faiss-cpu"}
    assert [r for r in extras["gpu"] if r.startswith("torch")] == ["torch==2.13.0"]


def _name(requirement: Any) -> str:
    for stop in "[<>=!~; ":
        requirement = requirement.split(stop, 1)[0]
    return str(requirement)
