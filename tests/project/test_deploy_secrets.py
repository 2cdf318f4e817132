"""The Secrets the Helm chart reads (it creates none) against the commands docs/deployment.md and
the chart's NOTES give for them: a Secret or key the pods read that those commands do not create
leaves a pod that never starts (CreateContainerConfigError, or a volume that cannot mount).
Rendered as tests/project/test_deploy.py renders the chart (its fixtures: Helm from .venv/tools)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from tests.helpers import REPO
from tests.project import test_deploy as deploy
from tests.project.test_deploy import Doc

DEPLOYMENT_MD = REPO / "docs" / "deployment.md"
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


# Beside the values sets of test_deploy.py: mutual TLS with the routers Job and the gateway, whose
# provider keys share a Secret. The admin key is made by `banditd keys create` once the servers run
# (docs/routers.md), so neither set of commands creates it.
EVERYTHING = [
    *deploy.VALUE_SETS["production"],
    *("--set", "security.tls.mutual=true", "--set", "gateway.clientCertSecretName=gw-client"),
    *("--set", "routersJob.clientCertSecretName=routers-client"),
    *("--set", "secrets.adminApiKey.name=banditd-admin"),
    *("--set", "routers[0].tenant=demo,routers[0].name=chat,routers[0].arms[0].name=a"),
    *("--set", "gateway.upstreamKeys[1].env=ANTHROPIC_API_KEY"),
    *("--set", "gateway.upstreamKeys[1].secretName=llm-keys"),
    *("--set", "gateway.upstreamKeys[1].key=anthropic"),
]
MADE_LATER = {"banditd-admin"}


def _render(*values: str, chart: Path = deploy.CHART) -> list[Doc]:
    helm = deploy._find_helm() or deploy._missing("helm not found: run .ci/install-helm")
    yaml = deploy._module("yaml", "PyYAML")
    out = subprocess.run(
        [helm, "template", "banditd", str(chart), "--namespace", "banditd", *values],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _read_secrets(docs: list[Doc]) -> set[tuple[str, str]]:
    """(Secret, key) for every key a pod of the rendered chart reads from an existing Secret."""
    config_maps = {
        d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"
    }
    wanted: set[tuple[str, str]] = set()
    for workload in [d for d in docs if d["kind"] in ("Deployment", "Job")]:
        pod = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
        for container in pod.get("initContainers", []) + pod["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    wanted.add((ref["name"], ref["key"]))
            # What the container names: its args, env, and the ConfigMaps it takes env from.
            said = [*_strings(container.get("args", [])), *_strings(container.get("env", []))]
            for source in container.get("envFrom", []):
                said += _strings(config_maps[source["configMapRef"]["name"]])
            for mount in container.get("volumeMounts", []):
                secret = volumes.get(mount["name"])
                if secret is None:
                    continue
                if "items" in secret:
                    wanted |= {(secret["secretName"], item["key"]) for item in secret["items"]}
                    continue
                prefix = re.escape(mount["mountPath"].rstrip("/") + "/")
                keys = {k for s in said for k in re.findall(prefix + r"([\w.-]+)", s)}
                assert keys, f"{workload['metadata']['name']}: nothing reads {mount['mountPath']}"
                wanted |= {(secret["secretName"], key) for key in keys}
    return wanted


def _created_secrets(commands: str) -> set[tuple[str, str]]:
    """(Secret, key) that the `kubectl create secret` commands of a shell snippet create."""
    created: set[tuple[str, str]] = set()
    for line in commands.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] != ["kubectl"] or "create" not in words:
            continue
        rest = words[words.index("create") + 1 :]
        if rest[:1] != ["secret"]:
            continue
        kind, name, options = rest[1], rest[2], rest[3:]
        if kind == "tls":
            created |= {(name, "tls.crt"), (name, "tls.key")}
        for option in options:
            flag, _, value = option.partition("=")
            if flag == "--from-literal":
                created.add((name, value.partition("=")[0]))
            elif flag == "--from-file":
                key, sep, _ = value.partition("=")
                created.add((name, key if sep else PurePosixPath(key).name))
    return created


def test_the_production_install_creates_every_secret_the_chart_reads() -> None:
    (install,) = [
        block
        for block in FENCE.findall(DEPLOYMENT_MD.read_text())
        if "helm upgrade --install" in block and "values-production.yaml" in block
    ]
    created = _created_secrets(install)
    read = _read_secrets(_render(*deploy.VALUE_SETS["production"]))
    assert {name for name, _ in read} >= {"banditd-postgres", "banditd-signing", "banditd-tls"}
    missing = sorted(read - created)
    assert not missing, f"docs/deployment.md's production install does not create {missing}"


def _notes(tmp_path: Path, *values: str) -> str:
    """NOTES.txt as `helm install` prints it (`helm template` renders no NOTES): a copy of the
    chart renders it into a ConfigMap."""
    chart = tmp_path / "chart"
    shutil.copytree(deploy.CHART, chart)
    (chart / "templates" / "NOTES.txt").rename(chart / "notes.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data: {notes: {{ tpl (.Files.Get "notes.txt") . | quote }}}\n'
    )
    (notes,) = [d for d in _render(*values, chart=chart) if d["metadata"]["name"] == "notes"]
    return str(notes["data"]["notes"])


@pytest.mark.parametrize("value_set", ["default", "production", "everything"])
def test_the_notes_create_every_secret_the_chart_reads(tmp_path: Path, value_set: str) -> None:
    values = EVERYTHING if value_set == "everything" else deploy.VALUE_SETS[value_set]
    created = _created_secrets(_notes(tmp_path, *values))
    read = {(name, key) for name, key in _read_secrets(_render(*values)) if name not in MADE_LATER}
    missing = sorted(read - created)
    assert not missing, f"NOTES.txt ({value_set} values) does not create {missing}"
